"""Hand-written feedback logs (the tiny chat Llama they train is in tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOOD = ["great taste, would buy again", "lovely flavour and fresh", "my dog loves it", "excellent value"]
BAD = ["stale and awful", "arrived broken", "tastes like cardboard", "too salty, returned it"]
def product_feedback(products: range, day: int = 10, revision: str = "v1", model: str | None = None,
                     conversational: bool = False) -> list[dict]:
    """For each product prompt: two answers voted up, two voted down, a correction and two scores."""
    records = []
    for i in products:
        prompt = f"How was product {i}?"
        if conversational:
            prompt = [{"role": "user", "content": prompt}]

        def answer(text):
            return [{"role": "assistant", "content": text}] if conversational else text

        stamp = f"2026-11-{day:02d}T{i % 24:02d}:00:00+00:00"
        common = {"model_revision": revision, "timestamp": stamp, **({"model": model} if model else {})}
        for j in range(2):
            records.append({"prompt": prompt, "completion": answer(GOOD[(i + j) % 4]), "feedback": "up",
                            "user_id": f"user-{i}-{j}", **common})
            records.append({"prompt": prompt, "completion": answer(BAD[(i + j) % 4]), "feedback": "down", **common})
        records.append({"prompt": prompt, "completion": answer(BAD[(i + 2) % 4]), "feedback": "down",
                        "correction": answer(GOOD[(i + 2) % 4]), **common})
        records.append({"prompt": prompt, "completion": answer(GOOD[(i + 3) % 4]), "feedback": 0.9, **common})
        records.append({"prompt": prompt, "completion": answer(BAD[(i + 3) % 4]), "feedback": 0.2, **common})
    return records


def write_log(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def feedback_log(tmp_path) -> Path:
    return write_log(tmp_path / "feedback.jsonl", product_feedback(range(10)))
