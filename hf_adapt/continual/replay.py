"""Experience replay: a fixed budget of old training rows is mixed into each new experience.

The buffer holds references to rows (experience name, row), never the rows themselves: the
saved state carries no training data, so publishing the model publishes no patient or customer
record. A later version that continues from this one re-reads those rows from the experiences'
data sources.
"""

from __future__ import annotations

import random
from typing import Any

from hf_adapt.continual.base import ContinualRun, Experience, Row, Strategy
from hf_adapt.errors import ConfigError

SELECTIONS = ("class_balanced", "reservoir")


class Replay(Strategy):
    name = "replay"

    def __init__(self, buffer_size: int = 200, selection: str = "class_balanced"):
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ConfigError(f"strategy replay needs strategy_options.buffer_size >= 1 (rows kept from old experiences), "
                              f"got {buffer_size!r}; a replay buffer of 0 is the naive strategy")
        if selection not in SELECTIONS:
            raise ConfigError(f"strategy_options.selection {selection!r} is not one of {list(SELECTIONS)}")
        self.buffer_size, self.selection = buffer_size, selection
        self.buffer: list[Row] = []
        self.labels: list[int] = []  # label of each buffered row (multi-label: its rarest), for class balance
        self.seen = 0  # rows offered to the reservoir so far
        self.offered: list[str] = []  # experiences whose rows the buffer has drawn from

    @property
    def description(self) -> str:
        return f"replay of at most {self.buffer_size} old training rows ({self.selection.replace('_', '-')} buffer)"

    def before_experience(self, run: ContinualRun, experience: Experience, model):
        # experiences learnt before this run (a parent's) that no saved buffer has drawn from yet
        for earlier in run.experiences:
            if earlier.trained_at < run.step and earlier.name not in self.offered:
                self.after_experience(run, earlier, model)
        return model

    def train_rows(self, run: ContinualRun, experience: Experience) -> list[Row]:
        return experience.rows("train") + [row for row in self.buffer if row[0] != experience.name]

    def after_experience(self, run: ContinualRun, experience: Experience, model) -> None:
        rng = random.Random(f"{run.seed}-{experience.name}")
        rows, labels = experience.rows("train"), experience.balance_keys("train")
        self.offered.append(experience.name)
        if self.selection == "reservoir":  # Vitter's algorithm R over the stream of all training rows
            for row, label in zip(rows, labels):
                self.seen += 1
                if len(self.buffer) < self.buffer_size:
                    self.buffer.append(row)
                    self.labels.append(label)
                else:
                    slot = rng.randrange(self.seen)
                    if slot < self.buffer_size:
                        self.buffer[slot], self.labels[slot] = row, label
            return
        # class-balanced: an equal share for each (experience, class) seen so far, so a domain-incremental
        # stream keeps every domain; each group's kept rows are a random subset, shrunk as groups arrive
        groups: dict[tuple[str, int], list[Row]] = {}
        for row, label in zip(self.buffer, self.labels):
            groups.setdefault((row[0], label), []).append(row)
        new: dict[tuple[str, int], list[Row]] = {}
        for row, label in zip(rows, labels):
            new.setdefault((row[0], label), []).append(row)
        for key, candidates in new.items():
            rng.shuffle(candidates)
            groups[key] = candidates
        order = sorted(groups, key=lambda key: (run.experience(key[0]).task, key[1]))
        quota = _balanced_quota([len(groups[key]) for key in order], self.buffer_size)
        self.buffer, self.labels = [], []
        for key, size in zip(order, quota):
            self.buffer += groups[key][:size]
            self.labels += [key[1]] * size

    def state(self) -> tuple[dict[str, Any], dict]:
        return {"buffer": [list(row) for row in self.buffer], "labels": self.labels, "seen": self.seen,
                "offered": self.offered}, {}

    def load_state(self, facts: dict[str, Any], tensors: dict) -> None:
        self.buffer = [(name, int(row)) for name, row in facts["buffer"]]
        self.labels, self.seen = list(facts["labels"]), int(facts["seen"])
        self.offered = list(facts.get("offered", sorted({name for name, _ in self.buffer})))

    def card_facts(self) -> dict[str, Any]:
        return {"buffer_size": self.buffer_size, "selection": self.selection, "rows_in_buffer": len(self.buffer)}


def _balanced_quota(sizes: list[int], budget: int) -> list[int]:
    """Equal shares of ``budget`` for groups of these sizes; what a small group cannot fill goes to the others
    (and with fewer slots than groups, the earlier groups get one each)."""
    quota = [0] * len(sizes)
    left = budget
    while left > 0:
        open_groups = [i for i, size in enumerate(sizes) if quota[i] < size]
        if not open_groups:
            break
        share = left // len(open_groups)
        if share == 0:
            for i in open_groups[:left]:
                quota[i] += 1
            break
        for i in open_groups:
            take = min(share, sizes[i] - quota[i])
            quota[i] += take
            left -= take
    return quota
