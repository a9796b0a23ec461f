"""What a feedback log holds, before anything trains on it (``hf-adapt feedback inspect LOG``)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hf_adapt.feedback.convert import key, thumb_votes, to_dpo, to_kto, to_reward, to_sft
from hf_adapt.feedback.log import FeedbackSet, kind_of, parse_time


def summarize(log: FeedbackSet) -> dict[str, Any]:
    """Counts, label balance, duplicates, conflicting labels, the revisions the feedback refers to, and what
    each trainer would get from it."""
    records = log.records
    kinds = Counter(kind_of(r["feedback"]) for r in records)
    thumbs = Counter(r["feedback"] for r in records if kind_of(r["feedback"]) == "thumb")
    scores = [float(r["feedback"]) for r in records if kind_of(r["feedback"]) == "score"]
    identities = Counter(json.dumps([key(r["prompt"]), key(r.get("completion", "")), key(r["feedback"]),
                                     r.get("user_id")]) for r in records)
    conflicts = [e for e in thumb_votes(records).values() if e["up"] and e["down"]]
    times = sorted(parse_time(r["timestamp"]) for r in records if r.get("timestamp"))
    revisions = Counter(f"{r.get('model') or '?'}@{r.get('model_revision') or '?'}" for r in records)
    return {
        "files": log.files,
        "records": len(records),
        "bad_records": [str(b) for b in log.bad],
        "kinds": dict(kinds),
        "thumbs": {"up": thumbs["up"], "down": thumbs["down"]},
        "scores": ({"count": len(scores), "min": min(scores), "max": max(scores), "mean": sum(scores) / len(scores)}
                   if scores else None),
        "corrections": sum(r.get("correction") is not None for r in records),
        "conversational": sum(not isinstance(r["prompt"], str) for r in records),
        "prompts": len({key(r["prompt"]) for r in records}),
        "users": len({r["user_id"] for r in records if r.get("user_id")}),
        "duplicates": sum(n - 1 for n in identities.values()),
        "conflicting_thumbs": len(conflicts),
        "conflict_examples": [{"prompt": _clip(e["prompt"]), "completion": _clip(e["completion"]), "up": e["up"],
                               "down": e["down"]} for e in conflicts[:3]],
        "revisions": dict(revisions.most_common()),
        "first": times[0].isoformat() if times else None,
        "last": times[-1].isoformat() if times else None,
        "trainers": {
            "kto": to_kto(records).report(),
            "dpo": to_dpo(records).report(),
            "reward": to_reward(records).report(),
            "sft": to_sft(records).report(),
        },
    }


def _clip(value: Any, width: int = 50) -> str:
    text = key(value).replace("\n", " ")
    return text if len(text) <= width else text[:width - 3] + "..."


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the few lines ``hf-adapt feedback inspect`` prints."""
    thumbs = summary["thumbs"]
    total = thumbs["up"] + thumbs["down"]
    lines = [
        f"files: {', '.join(summary['files'])}",
        f"records: {summary['records']} ({', '.join(f'{n} {k}' for k, n in summary['kinds'].items()) or 'none'}); "
        f"{summary['prompts']} distinct prompts, {summary['users']} users, {summary['conversational']} conversational",
        f"thumbs: {thumbs['up']} up / {thumbs['down']} down"
        + (f" ({100 * thumbs['up'] / total:.1f} % up)" if total else ""),
    ]
    if summary["scores"]:
        s = summary["scores"]
        lines.append(f"scores: {s['count']}, min {s['min']:g}, mean {s['mean']:.3g}, max {s['max']:g}")
    lines += [
        f"corrections: {summary['corrections']}",
        f"duplicates: {summary['duplicates']} (same prompt, completion, feedback and user)",
        f"conflicting thumbs: {summary['conflicting_thumbs']} (prompt, completion) with both up and down votes",
    ]
    lines += [f"  {c['up']} up / {c['down']} down: {c['prompt']!r} -> {c['completion']!r}"
              for c in summary["conflict_examples"]]
    lines.append("revisions: " + ", ".join(f"{rev} ({n})" for rev, n in summary["revisions"].items()))
    if summary["first"]:
        lines.append(f"time: {summary['first']} .. {summary['last']}")
    if summary["bad_records"]:
        lines.append(f"bad records skipped: {len(summary['bad_records'])}")
        lines += [f"  {b}" for b in summary["bad_records"][:10]]
    lines.append("trainers would get:")
    for name, report in summary["trainers"].items():
        drops = ", ".join(f"{n} {why}" for why, n in report["dropped"].items()) or "nothing dropped"
        lines.append(f"  {name}: {report['rows']} rows from {report['records_used']} records ({drops})")
    return "\n".join(lines)
