"""Output directories that are either complete or absent.

A run writes into a hidden sibling staging directory and renames it into place at the
end, so a crash never leaves a half-written artifact where a good one is expected.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def claimed(path: str | Path, overwrite: bool,
            check: Callable[[Path, bool], None] | None = None) -> Iterator[None]:
    """Hold ``output_dir`` for one run, from its checks to its push: one writer per output directory.

    The launch's main process takes an exclusive lock on a hidden ``.<name>.lock`` beside the
    directory, then runs :func:`check_output_dir`. A second run into the same directory, from any
    process on this machine (or another one, where the file system shares ``flock`` locks, as
    NFSv4 does), is refused at start, naming the run that holds it. The kernel drops the lock when
    its process dies, so a killed run never blocks the next. :func:`commit` checks again at the
    end, for writers that took no lock. ``check``: the recipe's own check, if not :func:`check_output_dir`.
    """
    path = Path(path).absolute()
    check = check or check_output_dir
    if int(os.environ.get("RANK", "0")) != 0:  # one claim per launch: the main process's
        check(path, overwrite)
        yield
        return
    lock = _lock(path)
    try:
        check(path, overwrite)
        yield
    finally:
        _unlock(lock)


def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _lock(path: Path) -> tuple[Path, int] | None:
    try:
        import fcntl
    except ImportError:  # not POSIX: only the check at commit guards the directory
        return None
    lock_file = _lock_file(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.read(fd, 4096))
            os.close(fd)
            raise OutputError(f"output_dir {path} is being written by another run ({holder}); wait for it to "
                              "finish or pick another output_dir") from None
        try:  # the file we locked may have been removed by the run that held it: then lock the new one
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": _host(), "pid": os.getpid(), "started": started}).encode())
    return lock_file, fd


def _unlock(lock: tuple[Path, int] | None) -> None:
    if lock is not None:
        lock_file, fd = lock
        with contextlib.suppress(FileNotFoundError):
            lock_file.unlink()  # while still held, so no other run locks a file that is about to vanish
        os.close(fd)


def _holder(record: bytes) -> str:
    try:
        holder = json.loads(record)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a run that has not yet said who it is"


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


def commit(staging: Path, path: str | Path, overwrite: bool = True) -> Path:
    """Move a finished staging dir into place, replacing any previous output.

    A previous output is swapped with the staging dir in one atomic step where Linux allows it,
    so ``path`` always holds one complete run. Elsewhere it takes two renames; a crash between
    them leaves ``path`` absent and the previous run intact in a hidden ``.old-`` sibling, which
    the next :func:`check_output_dir` puts back.

    ``overwrite=False``: ``path`` was free when the run started, so anything there now was written
    by another run meanwhile. It is kept, and this run's outputs go to a visible ``.unmerged-``
    sibling, named in the error.
    """
    path = Path(path).absolute()
    if not overwrite and path.exists() and (not path.is_dir() or any(path.iterdir())):
        kept = path.parent / f"{path.name}.unmerged-{_host()}-{os.getpid()}"
        os.replace(staging, kept)
        other = _describe_run(path)
        raise OutputError(f"output_dir {path} was written by another run while this one ran ({other}); nothing was "
                          f"overwritten: this run's outputs are in {kept}")
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


def _describe_run(path: Path) -> str:
    try:
        recipe = read_json(path / RUN_FILE).get("recipe", "an unknown recipe")
        written = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime((path / RUN_FILE).stat().st_mtime))
        return f"an hf-adapt {recipe} run, written {written}"
    except (OSError, ValueError, AttributeError):
        return "not an hf-adapt run"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(err: BaseException, path: Path) -> bool:
    """Whether writing under ``path`` failed for want of space, however the writer said so: an ``OSError``
    (ENOSPC, EDQUOT), safetensors' error quoting it, or ``torch.save``'s bare "unexpected pos" on a disk with
    nothing left."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in NO_SPACE
    text = str(err).lower()
    if "no space left on device" in text or "disk quota exceeded" in text:
        return True
    return isinstance(err, (OSError, RuntimeError)) and _free_bytes(path) < 1 << 20


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return 1 << 62
    return stats.f_bavail * stats.f_frsize


@contextlib.contextmanager
def space_checked(path: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing under ``path`` into an :class:`OutputError` that says so, after
    removing ``cleanup`` (the half-written folder)."""
    try:
        yield
    except Exception as err:
        if not is_out_of_space(err, path):
            raise
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise OutputError(f"no space left on device while writing {path} ({type(err).__name__}: {err}); "
                          "free space there and rerun (nothing half-written was kept)") from err


def discard(staging: Path | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write, then rename over ``path``: a reader sees the old file or the new one, never half of one."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text``, then rename over ``path``: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
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


def write_on_main(accelerator, staging: Path | None, path: str | Path, write: Callable[[Path], None],
                  overwrite: bool) -> None:
    """On the main process, ``write(staging)`` and :func:`commit` it to ``path``; see :func:`on_main`.
    ``overwrite``: the run's ``overwrite_output_dir``, checked again at the commit."""
    def work() -> None:
        with space_checked(Path(path), cleanup=staging):
            write(staging)
        commit(staging, path, overwrite)
        logger.info("wrote %s", path)

    on_main(accelerator, work)
