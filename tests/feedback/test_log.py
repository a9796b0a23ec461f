"""The feedback log: validation, concurrent appends, reading with line numbers, inspection."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import pytest

from hf_adapt.errors import ConfigError, DataError
from hf_adapt.feedback import FeedbackLog, read_feedback
from hf_adapt.feedback.inspect import summarize
from hf_adapt.feedback.log import USER_HASH
from tests.feedback.conftest import product_feedback, write_log
from tests.hub_server import LocalHub, hub_env


def test_record_validates_hashes_and_stamps(tmp_path):
    log = FeedbackLog(tmp_path / "logs" / "bot.jsonl")
    written = log.record("Is it good?", "Yes, very.", "up", model="org/bot", model_revision="v2", user_id="alice@bank")
    assert written["user_id"].startswith(USER_HASH) and "alice" not in (tmp_path / "logs" / "bot.jsonl").read_text()
    assert written["timestamp"].endswith("+00:00")
    salted = FeedbackLog(tmp_path / "salted.jsonl", user_salt="s3cret").record("q", "a", "up", user_id="alice@bank")
    assert salted["user_id"].startswith(USER_HASH) and salted["user_id"] != written["user_id"]
    log.record([{"role": "user", "content": "hi"}], feedback={"chosen": [{"role": "assistant", "content": "hello"}],
                                                             "rejected": [{"role": "assistant", "content": "go away"}]})
    assert len(read_feedback(log.path)) == 2
    for bad, message in [
        (dict(prompt="q", completion="a", feedback="meh"), "feedback must be 'up', 'down'"),
        (dict(prompt="q", feedback="up"), "needs the completion it judges"),
        (dict(prompt="", completion="a", feedback="up"), "prompt is empty"),
        (dict(prompt="q", completion="a", feedback=float("nan")), "feedback score is nan"),
        (dict(prompt="q", feedback={"chosen": "a", "rejected": "a"}), "are the same completion"),
        (dict(prompt="q", completion="a", feedback="up", timestamp="yesterday"), "not an ISO-8601 time"),
        (dict(prompt=[{"role": "user", "content": "q"}], completion=[{"role": "user", "content": "a"}], feedback="up"),
         "last message is from 'user'"),
        (dict(prompt=[{"role": "user", "content": "q"}], completion="a", feedback="up"),
         "the prompt is a conversation but an answer is text"),
    ]:
        with pytest.raises(DataError, match=message):
            log.record(**bad)
    assert len(read_feedback(log.path)) == 2  # refused records were not written
    with pytest.raises(ConfigError, match="should end in .jsonl"):
        FeedbackLog(tmp_path / "bot.csv")


def _writer(path: str, worker: int, count: int) -> None:
    log = FeedbackLog(path)
    for i in range(count):
        log.record(f"prompt {worker}-{i} " + "x" * (i % 50) * 40, f"answer {i}", "up" if i % 2 else "down",
                   metadata={"worker": worker, "i": i})


def test_concurrent_writers_lose_nothing(tmp_path):
    """4 processes append 1000 records each (some lines over 2 KB) at once: every record arrives, whole."""
    path = tmp_path / "shared.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), w, 1000)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    log = read_feedback(path)  # on_bad_record="error": a torn line would raise here
    seen = {(r["metadata"]["worker"], r["metadata"]["i"]) for r in log.records}
    assert len(log) == 4000 and seen == {(w, i) for w in range(4) for i in range(1000)}


def test_bad_lines_stop_or_are_counted(tmp_path):
    records = product_feedback(range(2))
    lines = [json.dumps(r) for r in records]
    lines[3] = lines[3][:-5]  # truncated JSON
    lines[5] = json.dumps({**records[5], "feedback": "sideways"})
    path = tmp_path / "log.jsonl"
    path.write_bytes("\n".join(lines[:7]).encode() + b"\n\xff\xfe not utf-8\n" + "\n".join(lines[7:]).encode())
    with pytest.raises(DataError, match=r"log.jsonl:4: not a JSON object .*--on_bad_record skip"):
        read_feedback(path)
    log = read_feedback(path, on_bad_record="skip")
    assert [b.line for b in log.bad] == [4, 6, 8]
    assert len(log) == len(records) - 2 and "feedback must be" in log.bad[1].reason
    assert summarize(log)["bad_records"][0].endswith("log.jsonl:4: " + log.bad[0].reason)


def test_reads_json_parquet_folders_and_hub_datasets(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = product_feedback(range(3))
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(records[:10]))
    scalar = [{**r, "feedback": json.dumps(r["feedback"])} for r in records[10:]]  # one column type for parquet
    pq.write_table(pa.Table.from_pylist(scalar), folder / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet:1: feedback must be"):
        read_feedback(folder)  # parquet strings are not thumbs here
    pq.write_table(pa.Table.from_pylist([r for r in records[10:] if r["feedback"] in ("up", "down")]),
                   folder / "b.parquet")
    log = read_feedback(folder)
    assert len(log) == 10 + sum(r["feedback"] in ("up", "down") for r in records[10:])
    assert log.where[0] == "a.json:1" and log.where[10] == "b.parquet:1"

    with LocalHub() as hub:
        lines = "".join(json.dumps(r) + "\n" for r in records).encode()
        hub.add_repo("org/bot-feedback", {"data/train.jsonl": lines, "README.md": b"# feedback"}, repo_type="dataset")
        hub_env(monkeypatch, hub, tmp_path / "hf_home")
        from_hub = read_feedback("org/bot-feedback")
        assert len(from_hub) == len(records) and from_hub.where[0] == "train.jsonl:1"
        with pytest.raises(DataError, match="neither a local file or folder nor a Hub dataset"):
            read_feedback("org/missing")
    with pytest.raises(DataError, match="not found"):
        read_feedback(tmp_path / "nope.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        read_feedback(tmp_path / "empty")


def test_inspect_counts_duplicates_conflicts_and_revisions(tmp_path):
    records = product_feedback(range(4), revision="v1") + product_feedback(range(2), revision="v2", day=20)
    records.append({"prompt": "How was product 0?", "completion": records[0]["completion"], "feedback": "down"})
    path = write_log(tmp_path / "log.jsonl", records)
    summary = summarize(read_feedback(path))
    assert summary["records"] == len(records) and summary["prompts"] == 4
    assert summary["thumbs"] == {"up": 12, "down": 19}
    assert summary["revisions"] == {"?@v1": 28, "?@v2": 14, "?@?": 1}
    assert summary["conflicting_thumbs"] == 1 and summary["duplicates"] == 14  # v2 repeats all 7 records of v1's products 0 and 1
    assert summary["first"].startswith("2026-11-10") and summary["last"].startswith("2026-11-20")
    out = subprocess.run([sys.executable, "-m", "hf_adapt.cli", "feedback", "inspect", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert "thumbs: 12 up / 19 down" in out and "conflicting thumbs: 1" in out and "?@v2 (14)" in out
    assert "  kto: " in out and "  dpo: " in out
