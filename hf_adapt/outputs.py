"""Output directories that are either complete or absent.

A run writes into a hidden sibling staging directory and renames it into place at the
end, so a crash never leaves a half-written artifact where a good one is expected.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_adapt.errors import OutputError

RUN_FILE = "hf_adapt.json"
logger = logging.getLogger("hf_adapt.outputs")


def check_output_dir(path: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, an output dir that already holds something. Tidy first what killed runs
    left beside it: their staging dirs, and a previous run a crash left in a hidden ``.old-`` sibling."""
    path = Path(path)
    _clean_up_after_killed_runs(path.absolute())
    if path.exists() and not path.is_dir():
        raise OutputError(f"output_dir {path} exists and is not a directory")
    if not path.is_dir() or not any(path.iterdir()):
        return
    is_run = (path / RUN_FILE).is_file()
    if overwrite and is_run:
        return
    if not is_run:  # never delete a folder hf-adapt did not write, flag or not
        raise OutputError(f"output_dir {path} holds files that are not an hf-adapt run; pick another directory")
    raise OutputError(f"output_dir {path} already holds a different hf-adapt run; pick another or pass --overwrite_output_dir")


def staging_path(path: str | Path) -> Path:
    """A fresh hidden sibling of ``path`` to write into before :func:`commit` (not yet created). Its name holds
    the writing process's host and pid, so a later run can tell a dead run's leftovers from a live run's."""
    path = Path(path).absolute()
    return path.parent / f".{path.name}.partial-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _host() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())


def _clean_up_after_killed_runs(path: Path) -> None:
    if not path.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.partial-{re.escape(_host())}-(\d+)-[0-9a-f]{{8}}$")
    for leftover in path.parent.iterdir():
        match = pattern.match(leftover.name)
        if match and not _alive(int(match.group(1))):
            logger.warning("removing %s, left by a run that was killed while writing its outputs", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    if not path.exists():
        kept = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if kept and (kept[-1] / RUN_FILE).is_file():
            logger.warning("restoring %s from %s: a run was killed while replacing it", path, kept[-1])
            try:
                os.replace(kept[-1], path)
            except FileNotFoundError:  # another rank of this launch restored it first
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def commit(staging: Path, path: str | Path) -> Path:
    """Move a finished staging dir into place, replacing any previous output.

    A previous output is swapped with the staging dir in one atomic step where Linux allows it,
    so ``path`` always holds one complete run. Elsewhere it takes two renames; a crash between
    them leaves ``path`` absent and the previous run intact in a hidden ``.old-`` sibling, which
    the next :func:`check_output_dir` puts back.
    """
    path = Path(path).absolute()
    if path.exists() and _exchange(staging, path):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous run
        return path
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def discard(staging: Path | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write, then rename over ``path``: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    partial.replace(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def on_main(accelerator, work: Callable[[], Any]) -> Any:
    """Run ``work()`` on the main process only and hand its result to every process. If it fails, every
    process raises (the others would otherwise wait at their next collective until it times out): the
    main process its own error, the others a ``RuntimeError`` that quotes it."""
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            outcome[0] = work()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
            error = err
            outcome[1] = f"{type(err).__name__}: {err}"
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[1] is not None:
        if accelerator.is_main_process:
            raise error
        raise RuntimeError(f"the main process failed: {outcome[1]}")
    return outcome[0]


def write_on_main(accelerator, staging: Path | None, path: str | Path, write: Callable[[Path], None]) -> None:
    """On the main process, ``write(staging)`` and :func:`commit` it to ``path``; see :func:`on_main`."""
    def work() -> None:
        write(staging)
        commit(staging, path)
        logger.info("wrote %s", path)

    on_main(accelerator, work)
