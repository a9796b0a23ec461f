"""Output directories: a finished run replaces the previous one in one step, and nothing is left over."""

from __future__ import annotations

import sys

import pytest

from hf_adapt import outputs


def _run(path, text):
    path.mkdir()
    (path / outputs.RUN_FILE).write_text(text)
    return path


def test_commit_places_a_new_output_and_replaces_an_old_one(tmp_path):
    target = tmp_path / "out"
    outputs.commit(_run(tmp_path / ".out.partial-1", '{"v": 1}'), target)
    assert (target / outputs.RUN_FILE).read_text() == '{"v": 1}'
    outputs.commit(_run(tmp_path / ".out.partial-2", '{"v": 2}'), target)
    assert (target / outputs.RUN_FILE).read_text() == '{"v": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "staging or old copies left behind"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_the_swap_is_one_atomic_exchange_on_linux(tmp_path):
    """Where renameat2(RENAME_EXCHANGE) works the output path is never absent: the two folders trade places."""
    old, new = _run(tmp_path / "out", "old"), _run(tmp_path / ".out.partial-1", "new")
    if not outputs._exchange(new, old):
        pytest.skip("this file system cannot exchange directories; commit falls back to two renames")
    assert (old / outputs.RUN_FILE).read_text() == "new" and (new / outputs.RUN_FILE).read_text() == "old"


def test_leftovers_of_killed_runs_are_tidied_and_a_live_runs_are_not(tmp_path):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    target = tmp_path / "out"
    killed = _run(outputs.staging_path(target).with_name(f".out.partial-{outputs._host()}-{dead.pid}-0123abcd"), "x")
    live = _run(outputs.staging_path(target), "being written")  # this process's own, as a running job's
    other_host = _run(tmp_path / ".out.partial-elsewhere-1-0123abcd", "another machine's")
    assert str(os.getpid()) in live.name
    outputs.check_output_dir(target, overwrite=False)
    assert not killed.exists() and live.exists() and other_host.exists()


def test_a_previous_run_left_in_an_old_sibling_is_restored(tmp_path):
    """Where a crash fell between the two renames of the fallback commit."""
    _run(tmp_path / ".out.old-0123abcd", "previous")
    outputs.check_output_dir(tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / outputs.RUN_FILE).read_text() == "previous"
