"""Feedback records -> the datasets TRL's trainers read, deterministically, with a report of every drop.

- :func:`to_kto`: thumbs, one row per distinct (prompt, completion), labelled by majority vote
  (``prompt``, ``completion``, ``label``).
- :func:`to_pairs`: preference pairs (``prompt``, ``chosen``, ``rejected``) from explicit pairs,
  from an up and a down completion of one prompt, from two scored completions of one prompt (with
  the score difference as ``margin``, which TRL's reward trainer reads) and from corrections
  (the correction preferred to the completion it corrects). :func:`to_dpo` and :func:`to_reward`
  are it with the sources each trainer uses.
- :func:`to_sft`: corrections (and, optionally, up-voted completions) as (``prompt``, ``completion``).
- :func:`to_prompts`: distinct prompts (GRPO samples its own completions).
- :func:`corrections_to_experience`: for classifier backbones, corrected labels as a table that
  the continual recipe learns as a new experience.

The same records always give the same rows in the same order (first appearance in the log).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from hf_adapt.errors import DataError
from hf_adapt.feedback.log import kind_of
from hf_adapt.feedback.trainers import get_trainer

PAIR_SOURCES = ("pair", "thumb", "score", "correction")


@dataclass
class Conversion:
    """The rows for one trainer, and what happened to every record on the way."""

    format: str  # kto | pairs | sft | prompts
    rows: list[dict[str, Any]]
    records: int
    used: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> records
    counts: dict[str, int] = field(default_factory=dict)  # e.g. desirable / undesirable

    def report(self) -> dict[str, Any]:
        return {"format": self.format, "records": self.records, "rows": len(self.rows), "records_used": self.used,
                "dropped": dict(sorted(self.dropped.items())), **self.counts}

    def describe(self) -> str:
        drops = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        counts = "".join(f", {k} {v}" for k, v in self.counts.items())
        return f"{self.records} records -> {len(self.rows)} {self.format} rows (used {self.used}{counts}); dropped: {drops}"


def key(value: Any) -> str:
    """A hashable, order-preserving identity for a prompt or completion (text or messages)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def thumb_votes(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(prompt, completion) -> its first prompt/completion values, up/down vote counts and the records that voted."""
    votes: dict[tuple[str, str], dict[str, Any]] = {}
    for index, record in enumerate(records):
        if kind_of(record["feedback"]) != "thumb":
            continue
        entry = votes.setdefault((key(record["prompt"]), key(record["completion"])), {
            "prompt": record["prompt"], "completion": record["completion"], "up": 0, "down": 0, "records": []})
        entry[record["feedback"]] += 1
        entry["records"].append(index)
    return votes


def to_kto(records: list[dict[str, Any]]) -> Conversion:
    """Unpaired thumbs: one row per distinct (prompt, completion), its label the majority vote (ties dropped)."""
    out = Conversion("kto", [], len(records))
    out.dropped["not a thumb"] = sum(kind_of(r["feedback"]) != "thumb" for r in records)
    outvoted = 0
    for entry in thumb_votes(records).values():
        if entry["up"] == entry["down"]:
            out.dropped["conflicting thumbs, tied"] += len(entry["records"])
            continue
        out.rows.append({"prompt": entry["prompt"], "completion": entry["completion"], "label": entry["up"] > entry["down"]})
        out.used += len(entry["records"])
        outvoted += min(entry["up"], entry["down"])
    out.dropped = +out.dropped
    desirable = sum(row["label"] for row in out.rows)
    out.counts = {"desirable": desirable, "undesirable": len(out.rows) - desirable, "outvoted_thumbs": outvoted}
    return out


def to_pairs(records: list[dict[str, Any]], sources: tuple[str, ...] = PAIR_SOURCES,
             max_pairs_per_prompt: int | None = None) -> Conversion:
    """Preference pairs from the record kinds in ``sources``; a pair seen twice is kept once, a pair
    contradicted by another (A over B and B over A) is dropped."""
    out = Conversion("pairs", [], len(records))
    pairs: dict[tuple[str, str, str], dict[str, Any]] = {}
    support: dict[tuple[str, str, str], set[int]] = {}

    def add(records_behind, prompt, chosen, rejected, margin=None):
        ident = (key(prompt), key(chosen), key(rejected))
        support.setdefault(ident, set()).update(records_behind)
        if ident not in pairs:
            pairs[ident] = {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                            **({"margin": float(margin)} if margin is not None else {})}

    for index, record in enumerate(records):
        kind = kind_of(record["feedback"])
        if kind == "pair" and "pair" in sources:
            add([index], record["prompt"], record["feedback"]["chosen"], record["feedback"]["rejected"])
        if record.get("correction") is not None and "correction" in sources:
            rejected = record["feedback"]["rejected"] if kind == "pair" else record["completion"]
            if key(record["correction"]) != key(rejected):
                add([index], record["prompt"], record["correction"], rejected)
    if "thumb" in sources:
        by_prompt: dict[str, dict[str, list]] = {}
        for entry in thumb_votes(records).values():
            net = entry["up"] - entry["down"]
            if net:
                side = by_prompt.setdefault(key(entry["prompt"]), {"up": [], "down": []})
                side["up" if net > 0 else "down"].append(entry)
        for side in by_prompt.values():
            for good, bad in product(side["up"], side["down"]):
                add(good["records"] + bad["records"], good["prompt"], good["completion"], bad["completion"])
    if "score" in sources:
        scored: dict[str, dict[str, dict[str, Any]]] = {}
        for index, record in enumerate(records):
            if kind_of(record["feedback"]) == "score":
                entry = scored.setdefault(key(record["prompt"]), {}).setdefault(key(record["completion"]), {
                    "prompt": record["prompt"], "completion": record["completion"], "scores": [], "records": []})
                entry["scores"].append(float(record["feedback"]))
                entry["records"].append(index)
        for completions in scored.values():
            means = [(e, sum(e["scores"]) / len(e["scores"])) for e in completions.values()]
            for i, (a, score_a) in enumerate(means):
                for b, score_b in means[i + 1:]:
                    if score_a != score_b:
                        (hi, lo) = (a, b) if score_a > score_b else (b, a)
                        add(a["records"] + b["records"], a["prompt"], hi["completion"], lo["completion"],
                            abs(score_a - score_b))
    used: set[int] = set()
    contradicted: set[int] = set()
    capped: set[int] = set()
    kept_per_prompt: Counter = Counter()
    for ident, row in pairs.items():
        if (ident[0], ident[2], ident[1]) in pairs:
            contradicted |= support[ident]
            continue
        if max_pairs_per_prompt and kept_per_prompt[ident[0]] >= max_pairs_per_prompt:
            capped |= support[ident]
            continue
        kept_per_prompt[ident[0]] += 1
        out.rows.append(row)
        used |= support[ident]
    eligible = {i for i, r in enumerate(records) if kind_of(r["feedback"]) in sources
                or (r.get("correction") is not None and "correction" in sources)}
    out.used = len(used)
    out.dropped["contradicted by another pair"] = len(contradicted - used)
    out.dropped["only in pairs over max_pairs_per_prompt"] = len(capped - used - contradicted)
    out.dropped["no partner to pair with"] = len(eligible - used - contradicted - capped)
    out.dropped["not used by this trainer (" + ", ".join(k for k in ("thumb", "score", "pair") if k not in sources) + ")"] = \
        len(records) - len(eligible)
    out.dropped = +out.dropped  # drop zero counts
    if any("margin" in row for row in out.rows):  # one schema for every row: explicit pairs get no margin
        out.rows = [{**row, "margin": row.get("margin", 0.0)} for row in out.rows]
    return out


def to_dpo(records: list[dict[str, Any]], max_pairs_per_prompt: int | None = None) -> Conversion:
    """Pairs for DPO and ORPO: explicit pairs, up against down completions of one prompt, corrections."""
    out = to_pairs(records, ("pair", "thumb", "correction"), max_pairs_per_prompt)
    out.format = "dpo"
    return out


def to_reward(records: list[dict[str, Any]], max_pairs_per_prompt: int | None = None) -> Conversion:
    """Pairs for a reward model: every source, scores with their difference as ``margin``."""
    out = to_pairs(records, PAIR_SOURCES, max_pairs_per_prompt)
    out.format = "reward"
    return out


def to_sft(records: list[dict[str, Any]], include_up: bool = False) -> Conversion:
    """Corrections as (prompt, completion) examples; with ``include_up`` also completions voted up on balance."""
    out = Conversion("sft", [], len(records))
    seen: set[tuple[str, str]] = set()

    def add(prompt, completion) -> bool:
        ident = (key(prompt), key(completion))
        if ident in seen:
            out.dropped["repeated examples"] += 1
            return False
        seen.add(ident)
        out.rows.append({"prompt": prompt, "completion": completion})
        return True

    used: set[int] = set()
    for index, record in enumerate(records):
        if record.get("correction") is not None:
            add(record["prompt"], record["correction"])
            used.add(index)
    if include_up:
        for entry in thumb_votes(records).values():
            if entry["up"] > entry["down"]:
                add(entry["prompt"], entry["completion"])
                used.update(entry["records"])
    out.used = len(used)
    out.dropped["no correction" + (" or up vote" if include_up else "")] = len(records) - out.used
    out.dropped = +out.dropped
    out.counts = {"corrections": sum(r.get("correction") is not None for r in records)}
    return out


def to_prompts(records: list[dict[str, Any]]) -> Conversion:
    """Distinct prompts, for trainers that sample their own completions (GRPO)."""
    out = Conversion("prompts", [], len(records), used=len(records))
    seen: set[str] = set()
    for record in records:
        if key(record["prompt"]) not in seen:
            seen.add(key(record["prompt"]))
            out.rows.append({"prompt": record["prompt"]})
    out.dropped["repeated prompts"] = len(records) - len(out.rows)
    out.dropped = +out.dropped
    return out


def convert(records: list[dict[str, Any]], trainer: str, *, include_up: bool = False,
            max_pairs_per_prompt: int | None = None) -> Conversion:
    """The rows ``trainer`` (a name in :data:`hf_adapt.feedback.trainers.TRAINERS`) trains on, by its converter."""
    return get_trainer(trainer).convert(records, include_up=include_up, max_pairs_per_prompt=max_pairs_per_prompt)


def corrections_to_experience(records: list[dict[str, Any]], path: str | Path, text_column: str = "text",
                              label_column: str = "label") -> Conversion:
    """Corrected labels of a classifier as a CSV (``text_column``, ``label_column``) at ``path``.

    For classifier backbones a record's prompt is the input text and its correction the right
    label; the file is an experience for ``hf-adapt continual`` (``data_files: {train: path}``).
    A text corrected to two different labels is dropped as conflicting. When every such record keeps the table
    row it was rendered from (``metadata.row``, as ``hf-adapt serve`` logs a table model's answers), the file
    holds the rows' own columns instead of ``text_column``, so a table model reads them through its template.
    """
    import csv

    out = Conversion("experience", [], len(records))
    labels: dict[str, list[str]] = {}
    rows: dict[str, Any] = {}  # text -> the table row it was rendered from, where the record kept it
    for record in records:
        if record.get("correction") is None:
            out.dropped["no correction"] += 1
        elif not isinstance(record["prompt"], str) or not isinstance(record["correction"], str):
            out.dropped["not a text and label"] += 1
        else:
            labels.setdefault(record["prompt"], []).append(record["correction"].strip())
            rows[record["prompt"]] = (record.get("metadata") or {}).get("row")
    as_rows = bool(rows) and all(isinstance(row, dict) for row in rows.values())
    for text, found in labels.items():
        if len(set(found)) > 1:
            out.dropped["records with conflicting corrections"] += len(found)
            continue
        out.rows.append({**(rows[text] if as_rows else {text_column: text}), label_column: found[0]})
        out.used += len(found)
    if not out.rows:
        raise DataError("no record carries a usable corrected label (a text prompt with a text correction)")
    out.counts = {"labels": len({row[label_column] for row in out.rows})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        columns = list(dict.fromkeys(name for row in out.rows for name in row if name != label_column))
        writer = csv.DictWriter(handle, fieldnames=[*columns, label_column])
        writer.writeheader()
        writer.writerows(out.rows)
    partial.replace(path)
    return out


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Rows as JSON lines at ``path``, written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    partial.replace(path)
