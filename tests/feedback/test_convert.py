"""Converters from hand-written logs: what each trainer gets, what is dropped and why, and determinism."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from hf_adapt.errors import DataError
from hf_adapt.feedback.convert import convert, corrections_to_experience, to_dpo, to_kto, to_pairs, to_reward, to_sft


def thumb(prompt, completion, vote, **extra):
    return {"prompt": prompt, "completion": completion, "feedback": vote, **extra}


LOG = [
    thumb("p1", "good", "up"), thumb("p1", "good", "up"), thumb("p1", "good", "down"),  # 2:1 -> up
    thumb("p1", "bad", "down"),
    thumb("p2", "tie", "up"), thumb("p2", "tie", "down"),  # tied -> dropped
    thumb("p2", "meh", "down", correction="fixed"),
    thumb("p3", "alone", "up"),  # no down answer to pair with
    {"prompt": "p4", "feedback": {"chosen": "A", "rejected": "B"}},
    {"prompt": "p4", "feedback": {"chosen": "B", "rejected": "A"}},  # contradicts the line before
    {"prompt": "p5", "feedback": {"chosen": "C", "rejected": "D"}},
    {"prompt": "p5", "feedback": {"chosen": "C", "rejected": "D"}},  # repeated
    {"prompt": "p6", "completion": "hi", "feedback": 0.9}, {"prompt": "p6", "completion": "lo", "feedback": 0.2},
    {"prompt": "p6", "completion": "hi", "feedback": 0.7},  # mean 0.8
    {"prompt": "p6", "completion": "eq", "feedback": 0.8},  # ties hi's mean: no pair between them
]


def test_kto_majority_votes_and_drops_ties():
    out = to_kto(LOG)
    rows = {(r["prompt"], r["completion"]): r["label"] for r in out.rows}
    assert rows == {("p1", "good"): True, ("p1", "bad"): False, ("p2", "meh"): False, ("p3", "alone"): True}
    assert out.counts == {"desirable": 2, "undesirable": 2, "outvoted_thumbs": 1}
    assert out.dropped == {"conflicting thumbs, tied": 2, "not a thumb": 8} and out.used == 6


def test_pairs_from_thumbs_pairs_corrections_and_scores():
    dpo = to_dpo(LOG)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in dpo.rows] == [
        ("p2", "fixed", "meh"), ("p5", "C", "D"), ("p1", "good", "bad")]
    assert "margin" not in dpo.rows[0]
    assert dpo.dropped == {"contradicted by another pair": 2, "no partner to pair with": 3,
                           "not used by this trainer (score)": 4} and dpo.used == 7
    reward = to_reward(LOG)
    scored = {(r["chosen"], r["rejected"]): r["margin"] for r in reward.rows if r["prompt"] == "p6"}
    assert scored == {("hi", "lo"): pytest.approx(0.6), ("eq", "lo"): pytest.approx(0.6)}
    assert all(r["margin"] == 0.0 for r in reward.rows if r["prompt"] != "p6")  # one schema for every row
    capped = to_pairs(LOG, max_pairs_per_prompt=1)
    assert sum(r["prompt"] == "p6" for r in capped.rows) == 1
    assert capped.dropped["only in pairs over max_pairs_per_prompt"] == 1  # eq's only pair (against lo) was cut


def test_sft_from_corrections_and_up_votes():
    assert [(r["prompt"], r["completion"]) for r in to_sft(LOG).rows] == [("p2", "fixed")]
    with_up = to_sft(LOG, include_up=True)
    assert [(r["prompt"], r["completion"]) for r in with_up.rows] == [("p2", "fixed"), ("p1", "good"), ("p3", "alone")]


def test_conversions_are_deterministic_and_conversational_safe():
    chat = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in LOG]
    for trainer in ("kto", "dpo", "reward", "sft", "grpo"):
        first, again = convert(LOG, trainer), convert(list(LOG), trainer)
        assert first.rows == again.rows and first.report() == again.report()
        assert len(convert(chat, trainer).rows) == len(first.rows)
    assert [r["prompt"] for r in convert(LOG, "grpo").rows] == ["p1", "p2", "p3", "p4", "p5", "p6"]


def test_corrected_labels_become_a_continual_experience(tmp_path):
    records = [thumb("applicant 1 ...", "good", "down", correction="bad"),
               thumb("applicant 2 ...", "bad", "down", correction="good"),
               thumb("applicant 3 ...", "bad", "down", correction="good"),
               thumb("applicant 3 ...", "bad", "down", correction="bad"),  # conflicting
               thumb("applicant 4 ...", "good", "up")]
    out = corrections_to_experience(records, tmp_path / "exp" / "corrections.csv")
    with (tmp_path / "exp" / "corrections.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"text": "applicant 1 ...", "label": "bad"}, {"text": "applicant 2 ...", "label": "good"}]
    assert out.dropped == {"records with conflicting corrections": 2, "no correction": 1} and out.used == 2
    with pytest.raises(DataError, match="no record carries a usable corrected label"):
        corrections_to_experience(records[-1:], tmp_path / "none.csv")


def test_cli_dry_run_and_write(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in LOG))
    run = [sys.executable, "-m", "hf_adapt.cli", "feedback", "convert", str(log)]
    out = subprocess.run(run + ["--to", "dpo", "--dry_run"], capture_output=True, text=True, check=True).stdout
    assert "16 records -> 3 dpo rows" in out and not list(tmp_path.glob("*.partial"))
    subprocess.run(run + ["--to", "kto", "--output", str(tmp_path / "kto.jsonl")], check=True, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "kto.jsonl").read_text().splitlines()]
    assert rows == to_kto(LOG).rows
    failed = subprocess.run(run + ["--to", "dpo"], capture_output=True, text=True)
    assert failed.returncode == 2 and "--output is needed" in failed.stderr
