"""What the server answered, kept so feedback can name an answer by id minutes or days later, on any worker.

Each answer is one JSON line appended (locked, fsynced) to ``<feedback log>.answers.jsonl`` before the response
leaves, beside the feedback log it serves: every worker process on the machine, and a restarted server, finds
it. A worker indexes the file as it grows (it reads only the bytes added since its last look), so a lookup is a
dictionary hit after the first. A torn last line (a writer killed mid-write) is skipped until it is completed.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from pathlib import Path
from typing import Any

from hf_adapt.feedback.log import append_lines


def answers_path(feedback_log: str | Path) -> Path:
    path = Path(feedback_log)
    return path.with_name(path.name.removesuffix(".jsonl") + ".answers.jsonl")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class AnswerStore:
    """Append answers; find one by id (``None`` when no worker ever gave it)."""

    def __init__(self, path: str | Path, record_inputs: bool = True):
        self.path = Path(path)
        self.record_inputs = record_inputs
        self._index: dict[str, dict[str, Any]] = {}
        self._offset = 0
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
                self._read_new()
            return self._index.get(answer_id)

    def _read_new(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # a line without its newline is still being written (or torn): not yet
        for line in data[:end].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn line a killed writer left; the next writer started a new line after it
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                self._index[entry["id"]] = entry
        self._offset += end
