"""The feedback log: what users said about a served model's answers, one JSON record a line.

A record (all fields but ``prompt`` and ``feedback`` optional)::

    {"prompt": "..." | [{"role": "user", "content": "..."}, ...],
     "completion": "..." | [{"role": "assistant", "content": "..."}],
     "feedback": "up" | "down" | 0.8 | {"chosen": <completion>, "rejected": <completion>},
     "correction": <completion>,            # what the answer should have been
     "model": "org/name",                   # the served model (or its base) that answered
     "model_revision": "v3",                # its revision (tag, branch or commit)
     "timestamp": "2026-11-30T12:00:00+00:00",
     "user_id": "sha256:...",               # hashed by FeedbackLog.record; never stored in clear
     "metadata": {...}}

``up``/``down`` is a thumb, a number is a score, a ``chosen``/``rejected`` mapping is a
pair. A prompt or completion given as a list of messages is conversational and needs the
tokenizer's chat template. :class:`FeedbackLog` appends records from any number of
processes; :func:`read_feedback` reads JSONL, JSON or parquet files, folders of them, and
Hub dataset repos, and reports every line it cannot use by file and number.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hf_adapt.errors import ConfigError, DataError

logger = logging.getLogger("hf_adapt.feedback")

FIELDS = ("prompt", "completion", "feedback", "correction", "model", "model_revision", "timestamp", "user_id",
          "metadata")
THUMBS = {"up": True, "down": False}
USER_HASH = "sha256:"
LOG_SUFFIXES = (".jsonl", ".json", ".parquet")


def kind_of(feedback: Any) -> str:
    """``thumb``, ``score`` or ``pair``: what a record's ``feedback`` value is."""
    if isinstance(feedback, str) and feedback in THUMBS:
        return "thumb"
    if isinstance(feedback, (int, float)) and not isinstance(feedback, bool):
        return "score"
    if isinstance(feedback, dict):
        return "pair"
    raise ValueError(f"feedback must be 'up', 'down', a number or {{'chosen': ..., 'rejected': ...}}, got {feedback!r}")


def _check_text(value: Any, name: str, role: str | None) -> None:
    """A completion or prompt: a non-empty string, or a non-empty list of ``{role, content}`` messages."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{name} is empty")
        return
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
        if role and value[-1]["role"] != role:
            raise ValueError(f"{name} is a conversation whose last message is from {value[-1]['role']!r}, "
                             f"not {role!r}")
        return
    raise ValueError(f"{name} must be a string or a list of {{'role', 'content'}} messages, got {_short(value)}")


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def check_record(record: Any) -> dict[str, Any]:
    """``record`` as a validated dict, or ``ValueError`` naming the first field at fault."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; a record has {list(FIELDS)} (put anything else in metadata)")
    for name in ("prompt", "feedback"):
        if record.get(name) is None:
            raise ValueError(f"{name} is missing")
    _check_text(record["prompt"], "prompt", role=None)
    kind = kind_of(record["feedback"])
    if kind == "pair":
        pair = record["feedback"]
        if set(pair) != {"chosen", "rejected"}:
            raise ValueError(f"a pair feedback has exactly 'chosen' and 'rejected', got {sorted(pair)}")
        for side in ("chosen", "rejected"):
            _check_text(pair[side], f"feedback.{side}", role="assistant")
        if pair["chosen"] == pair["rejected"]:
            raise ValueError("feedback.chosen and feedback.rejected are the same completion")
    else:
        if record.get("completion") is None:
            raise ValueError(f"a {kind} feedback needs the completion it judges")
        _check_text(record["completion"], "completion", role="assistant")
        if kind == "score" and not math.isfinite(record["feedback"]):
            raise ValueError(f"feedback score is {record['feedback']}")
    if record.get("correction") is not None:
        _check_text(record["correction"], "correction", role="assistant")
    answers = [record.get("completion"), record.get("correction")] + (
        [record["feedback"]["chosen"], record["feedback"]["rejected"]] if kind == "pair" else [])
    conversational = isinstance(record["prompt"], list)
    if any(a is not None and isinstance(a, list) != conversational for a in answers):
        raise ValueError("the prompt is " + ("a conversation" if conversational else "text") + " but an answer is " +
                         ("text" if conversational else "a conversation") + "; log both the same way")
    if record.get("timestamp") is not None:
        parse_time(record["timestamp"], "timestamp")
    if record.get("metadata") is not None and not isinstance(record["metadata"], dict):
        raise ValueError("metadata must be an object")
    for name in ("model", "model_revision", "user_id"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise ValueError(f"{name} must be a string")
    return record


def parse_time(text: Any, name: str = "time") -> dt.datetime:
    """An ISO-8601 time; one without a zone is taken as UTC."""
    if isinstance(text, dt.datetime):
        value = text
    else:
        try:
            value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name} {text!r} is not an ISO-8601 time (e.g. 2026-11-30T12:00:00+00:00)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def hash_user(user_id: str, salt: str | None = None) -> str:
    """A user id as it may be stored: a SHA-256 hash, keyed with ``salt`` when given (already hashed ids are kept).

    Without a salt, anyone can hash a list of candidate ids (e-mail addresses, account numbers) and match them;
    a secret salt, kept out of the log, prevents that while the same user still hashes the same way.
    """
    if user_id.startswith(USER_HASH):
        return user_id
    if salt:
        import hmac

        return USER_HASH + hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()
    return USER_HASH + hashlib.sha256(user_id.encode()).hexdigest()


# ----------------------------------------------------------------------------- writing


@contextmanager
def _locked(handle) -> Iterator[None]:
    """An exclusive lock on an open file for the duration (POSIX ``flock``; where missing, appends alone)."""
    try:
        import fcntl
    except ImportError:  # Windows: O_APPEND writes of one line do not interleave in practice
        yield
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _unwritable(value: Any, name: str, within: tuple[int, ...] = ()) -> str | None:
    """Why ``value`` (the field ``name``) cannot be one line of strict UTF-8 JSON, or None.

    Names the innermost field at fault (``metadata.tags``, ``completion[0].content``): JSON holds
    text, numbers, booleans, null, lists and objects with text keys; NaN and infinity are not JSON,
    and a lone surrogate (half of a UTF-16 pair, e.g. from a badly decoded request) is not UTF-8.
    """
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{name} is {value}, which JSON cannot hold"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return (f"{name} holds a lone surrogate ({value[err.start]!r} at character {err.start}), "
                    "which is not UTF-8 text")
        return None
    if not isinstance(value, (list, tuple, dict)):
        return f"{name} is a {type(value).__name__}, which JSON cannot hold (use text, numbers, lists or objects)"
    if id(value) in within:
        return f"{name} contains itself"
    within = (*within, id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{name} has a key {key!r} ({type(key).__name__}); JSON keys are text"
            problem = _unwritable(key, f"{name} key", within) or _unwritable(item, f"{name}.{key}", within)
            if problem:
                return problem
        return None
    return next((p for i, v in enumerate(value) if (p := _unwritable(v, f"{name}[{i}]", within))), None)


def _lines(entries: Iterable[dict[str, Any]]) -> bytes:
    """Records as JSON lines in strict UTF-8, or ``DataError`` naming the field that cannot be written."""
    lines = []
    for entry in entries:
        try:
            problem = _unwritable(entry, "record")
            if problem is None:
                lines.append(json.dumps(entry, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n")
        except (TypeError, ValueError, RecursionError) as err:  # what the walk above did not foresee
            problem = f"not writable as JSON ({type(err).__name__}: {err})"
        if problem:
            raise DataError(problem.removeprefix("record."))
    return "".join(lines).encode("utf-8")


def _ends_a_line(handle) -> bool:
    """Whether the file ends in a newline (or is empty): called under the lock, so its end cannot move."""
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        return True
    handle.seek(size - 1)  # only reads move: O_APPEND writes still go to the end
    return handle.read(1) == b"\n"


class FeedbackLog:
    """An append-only JSONL feedback log, safe to write from many processes at once.

    Each :meth:`record` validates the record, takes an exclusive lock on the file, appends one
    line and ``fsync``s it before returning: a record whose call returned is on disk, whole,
    and never interleaved with another writer's. A record that cannot be written as strict JSON
    (an object or set in ``metadata``, NaN, a lone surrogate in the text) is refused by field
    before the file is touched. When a crash left the last line torn (no closing newline), the
    next record starts a new line: the torn line stays one bad line, which readers count and
    skip, and no record written after it is lost.

    Example::

        log = FeedbackLog("feedback/credit-bot.jsonl", user_salt=os.environ["FEEDBACK_SALT"])
        log.record(prompt, answer, "up", model="my-org/credit-bot", model_revision="v3", user_id=user)
    """

    def __init__(self, path: str | Path, user_salt: str | None = None):
        self.path = Path(path)
        self.user_salt = user_salt  # a secret key for user-id hashes; see hash_user
        if self.path.suffix != ".jsonl":
            raise ConfigError(f"FeedbackLog writes JSON lines: {self.path} should end in .jsonl")

    def record(self, prompt: Any, completion: Any = None, feedback: Any = None, *, correction: Any = None,
               model: str | None = None, model_revision: str | None = None, timestamp: str | dt.datetime | None = None,
               user_id: str | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate and append one record; returns it as written (time filled in, user id hashed)."""
        try:
            stamp = parse_time(timestamp, "timestamp") if timestamp is not None else dt.datetime.now(dt.timezone.utc)
        except ValueError as err:
            raise DataError(f"feedback record not written to {self.path}: {err}") from None
        values = {"prompt": prompt, "completion": completion, "feedback": feedback, "correction": correction,
                  "model": model, "model_revision": model_revision, "timestamp": stamp.isoformat(),
                  "user_id": hash_user(user_id, self.user_salt) if user_id else None, "metadata": metadata}
        entry = {k: v for k, v in values.items() if v is not None}
        try:
            check_record(entry)
        except ValueError as err:
            raise DataError(f"feedback record not written to {self.path}: {err}") from None
        self.write([entry])
        return entry

    def write(self, entries: Iterable[dict[str, Any]]) -> None:
        """Append already validated records in one locked, fsynced write.

        Every record is serialised before the file is opened, so one that cannot be written
        (``DataError`` naming its field) leaves the log untouched.
        """
        append_lines(self.path, entries, what="feedback record")



def append_lines(path: Path, entries: Iterable[dict[str, Any]], what: str = "record") -> None:
    """Append ``entries`` to the JSONL file ``path`` in one locked, fsynced write, safe from many processes.

    Every entry is serialised before the file is opened, so one that cannot be written (``DataError`` naming its
    field) leaves the file untouched; when it returns, the lines are on disk, whole and not interleaved.
    """
    try:
        data = _lines(entries)
    except DataError as err:
        raise DataError(f"{what} not written to {path}: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: to see how the file ends
    with os.fdopen(fd, "r+b", buffering=0) as handle, _locked(handle):
        if not _ends_a_line(handle):  # a writer died mid-line: keep its tail apart from ours
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a write may be partial (signals, pipes): finish it under the lock
            view = view[handle.write(view):]
        os.fsync(handle.fileno())

# ----------------------------------------------------------------------------- reading


@dataclass
class BadRecord:
    file: str
    line: int  # 1-based line of a JSONL file; row (1-based) of a parquet or JSON array
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class FeedbackSet:
    """Records read from a log, where each came from, and the lines that could not be used."""

    records: list[dict[str, Any]]
    where: list[str]  # "file:line" of each record
    bad: list[BadRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    sha256: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def select(self, keep: list[int]) -> FeedbackSet:
        return FeedbackSet([self.records[i] for i in keep], [self.where[i] for i in keep], self.bad, self.files,
                           self.sha256)


def log_files(source: str | Path, revision: str | None = None) -> list[Path]:
    """The files a feedback source names: a file, a folder of logs, or a Hub dataset repo (downloaded)."""
    from hf_adapt.sources import resolve_source

    path = Path(resolve_source(str(source), field="feedback")).expanduser()
    if path.is_file():
        return [path]
    if not path.exists():
        if str(source).startswith((".", "/", "~")) or path.suffix in LOG_SUFFIXES or str(source).count("/") != 1:
            raise DataError(f"feedback log {source} not found")
        path = _download_dataset(str(source), revision)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOG_SUFFIXES and not
                   any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"feedback source {source} holds no {'/'.join(LOG_SUFFIXES)} files")
    return files


def _download_dataset(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                      allow_patterns=[f"*{s}" for s in LOG_SUFFIXES]))
    except Exception as err:  # noqa: BLE001 - offline, no such repo, no access: one clear message
        raise DataError(f"feedback {repo_id!r} is neither a local file or folder nor a Hub dataset that could be "
                        f"downloaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line or row, parsed value or the exception that stopped it) for every entry of a log file."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as err:  # not parquet, or cut short
            yield 1, ValueError(f"not a readable parquet file ({type(err).__name__}: {err})")
            return
        for number, row in enumerate(rows, 1):
            yield number, {k: v for k, v in row.items() if v is not None}
        return
    raw = path.read_bytes()
    if path.suffix == ".json":
        try:
            values = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            yield 1, ValueError(f"not valid JSON ({err})")
            return
        yield from enumerate(values if isinstance(values, list) else [values], 1)
        return
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            yield number, ValueError(f"not a JSON object ({type(err).__name__}: {err})")


def read_feedback(source: str | Path, on_bad_record: Literal["error", "skip"] = "error",
                  revision: str | None = None) -> FeedbackSet:
    """Every record of a feedback source, in file and line order.

    A line that is not valid JSON, or not a valid record, stops the read with its file and line
    (``on_bad_record="error"``), or is skipped, counted and named in a warning (``"skip"``).
    """
    records, where, bad = [], [], []
    digest = hashlib.sha256()
    files = log_files(source, revision)
    for path in files:
        digest.update(path.read_bytes())
        for number, value in _rows(path):
            try:
                if isinstance(value, Exception):
                    raise value
                records.append(check_record(value))
                where.append(f"{path.name}:{number}")
            except ValueError as err:
                problem = BadRecord(str(path), number, str(err))
                if on_bad_record == "error":
                    raise DataError(f"feedback log {problem} (pass --on_bad_record skip to skip bad records; they "
                                    "are counted and reported)") from None
                bad.append(problem)
    if bad:
        shown = "; ".join(str(b) for b in bad[:3])
        logger.warning("skipped %d bad feedback record(s): %s%s", len(bad), shown, " ..." if len(bad) > 3 else "")
    return FeedbackSet(records, where, bad, [str(p) for p in files], digest.hexdigest())
