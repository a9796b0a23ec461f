"""The accuracy matrix and what continual-learning papers read from it.

``matrix[r][j]`` is the metric on experience ``j``'s test split after matrix row ``r``: row 0 is
the model before this run (the pretrained backbone with its first head, or the parent version),
row ``r >= 1`` the model after learning the ``r``-th new experience. An entry is None where it is
undefined (class-incremental: the head does not know experience ``j``'s classes yet).
Experience ``j`` was learnt after row ``trained_at[j]`` (0 for a parent's experiences).

- average: the mean over experiences of the last row (Lopez-Paz & Ranzato's ACC).
- forgetting of ``j``: its best value from ``trained_at[j]`` up to the row before the last,
  minus its last value (Chaudhry et al., 2018); positive means it got worse.
- backward transfer (BWT): the mean of last minus just-learnt; negative means forgetting.
- forward transfer (FWT): the mean, over experiences learnt after the first, of the value just
  before learning them minus the value before the run (row 0).

For metrics where lower is better (log loss, ECE) the differences are taken the other way,
so positive forgetting always means "got worse".
"""

from __future__ import annotations

from typing import Any

from hf_adapt.metrics import LOWER_IS_BETTER


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(matrix: list[list[float | None]], trained_at: list[int], names: list[str], metric: str) -> dict[str, Any]:
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # so that "better" is always larger below
    last = len(matrix) - 1
    final = matrix[last]
    forgetting: dict[str, float] = {}
    peak_row: dict[str, int] = {}
    undefined: list[str] = []  # learnt earlier, but the metric is undefined where forgetting needs it
    for j, name in enumerate(names):
        start = trained_at[j]
        if start >= last:  # learnt in the last step: nothing to forget yet
            continue
        rows = [r for r in range(start, last) if matrix[r][j] is not None]
        if not rows or final[j] is None:
            undefined.append(name)
            continue
        best = max(rows, key=lambda r: sign * matrix[r][j])
        forgetting[name] = sign * (matrix[best][j] - final[j])
        peak_row[name] = best
    bwt = [sign * (final[j] - matrix[trained_at[j]][j]) for j in range(len(names))
           if trained_at[j] < last and matrix[trained_at[j]][j] is not None and final[j] is not None]
    later = [j for j in range(len(names)) if trained_at[j] >= 2]
    fwt_defined = all(matrix[trained_at[j] - 1][j] is not None and matrix[0][j] is not None for j in later)
    fwt_terms = [sign * (matrix[trained_at[j] - 1][j] - matrix[0][j]) for j in later] if fwt_defined else []
    return {
        "metric": metric,
        "average": _mean([v for v in final if v is not None]),
        "average_forgetting": _mean(list(forgetting.values())),
        "max_forgetting": max(forgetting.values()) if forgetting else None,
        "forgetting": forgetting,
        "peak_row": peak_row,
        "undefined": undefined,
        "backward_transfer": _mean(bwt),
        # undefined where an experience's classes are unknown before it is learnt (class-incremental)
        "forward_transfer": _mean(fwt_terms),
        "average_per_row": [_mean([matrix[r][j] for j in range(len(names)) if trained_at[j] <= r and matrix[r][j] is not None])
                            for r in range(len(matrix))],
    }


def gate(summary: dict[str, Any], max_forgetting: float | None, names: list[str], matrix, row_names: list[str]) -> dict[str, Any]:
    """The release gate: which earlier experiences lost more than ``max_forgetting`` of the metric."""
    if max_forgetting is None:
        return {"max_forgetting": None, "passed": True, "regressions": []}
    # an experience whose metric is undefined (e.g. AUROC over one class) cannot be shown not to regress
    regressions = [{"experience": name, "forgetting": None, "best": None, "best_after": None, "final": None}
                   for name in summary["undefined"]]
    for name, amount in summary["forgetting"].items():
        if amount > max_forgetting:
            j = names.index(name)
            best = summary["peak_row"][name]
            regressions.append({"experience": name, "forgetting": amount, "best": matrix[best][j],
                                "best_after": row_names[best], "final": matrix[-1][j]})
    return {"max_forgetting": max_forgetting, "passed": not regressions, "regressions": regressions}


def describe_regressions(result: dict[str, Any], metric: str) -> str:
    return "; ".join(f"{r['experience']}: {metric} undefined on its test rows (e.g. AUROC over one class)"
                     if r["forgetting"] is None else
                     f"{r['experience']} lost {r['forgetting']:.4f} {metric} ({r['best']:.4f} after {r['best_after']} "
                     f"-> {r['final']:.4f} now)" for r in result["regressions"])


def markdown_table(matrix, row_names: list[str], names: list[str]) -> str:
    head = "| after \\ on | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(names)
    rows = ["| " + row + " | " + " | ".join("–" if v is None else f"{v:.3f}" for v in values) + " |"
            for row, values in zip(row_names, matrix)]
    return "\n".join([head, rule, *rows])
