"""What the server answered, kept so feedback can name an answer by id minutes or days later, on any worker.

Each answer is one JSON line appended (locked, fsynced) to a file in ``.answers/`` beside the feedback log, before
the response leaves: every worker process on the machine, and a restarted server, finds it. The folder is hidden,
so ``hf-adapt feedback`` reading the log's folder never takes answers for feedback. A store reads every file in the
folder (other replicas' files arrive there through the Hub sync) and indexes them as they grow, reading only the
bytes added since its last look, so a lookup is a dictionary hit after the first. A torn last line (a writer
killed mid-write) is skipped until it is completed.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_adapt.feedback.log import append_lines

ANSWERS_DIR = ".answers"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class AnswerStore:
    """Append answers to ``path``; find one by id in any file of its folder (``None`` when none has it).

    ``refresh``: called on a miss to bring in answers kept elsewhere (other replicas'; see :mod:`.sync`); it
    returns folders whose ``*.jsonl`` files are read too.
    """

    def __init__(self, path: str | Path, record_inputs: bool = True,
                 refresh: Callable[[], list[Path]] | None = None):
        self.path = Path(path)
        self.record_inputs = record_inputs
        self.refresh = refresh
        self._index: dict[str, dict[str, Any]] = {}
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()

    def add(self, answers: list[dict[str, Any]]) -> None:
        """Keep ``answers`` (each with ``id``, ``input``, ``output``, ``model``, ``model_revision``); the inputs are
        dropped first when ``record_inputs`` is off. Returns once they are on disk."""
        stamp = dt.datetime.now(dt.timezone.utc).isoformat()
        entries = []
        for answer in answers:
            entry = {"time": stamp, **answer}
            if not self.record_inputs:
                entry.pop("input", None)
            entries.append(entry)
        append_lines(self.path, entries, what="answer")
        with self._lock:
            self._index.update((e["id"], e) for e in entries)

    def get(self, answer_id: str) -> dict[str, Any] | None:
        with self._lock:
            if answer_id not in self._index:
                self._read_new([self.path.parent])
            if answer_id not in self._index and self.refresh is not None:
                self._read_new(self.refresh())
            return self._index.get(answer_id)

    def _read_new(self, folders: list[Path]) -> None:
        for path in sorted(p for folder in folders if folder.is_dir() for p in folder.glob("*.jsonl")):
            with path.open("rb") as handle:
                handle.seek(self._offsets.get(path, 0))
                data = handle.read()
            end = data.rfind(b"\n") + 1  # a line without its newline is still being written (or torn): not yet
            for line in data[:end].splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a torn line a killed writer left; the next writer started a new line after it
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    self._index.setdefault(entry["id"], entry)
            self._offsets[path] = self._offsets.get(path, 0) + end
