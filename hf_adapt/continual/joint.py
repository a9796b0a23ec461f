"""Joint training: every experience trains on all data seen so far. The upper bound, and the cost of it."""

from __future__ import annotations

from hf_adapt.continual.base import ContinualRun, Experience, Row, Strategy


class Joint(Strategy):
    name = "joint"
    description = "retraining on every experience seen so far (the upper bound; keeps all old data)"

    def train_rows(self, run: ContinualRun, experience: Experience) -> list[Row]:
        return [row for e in run.learnt() for row in e.rows("train")]

    def validation_rows(self, run: ContinualRun, experience: Experience) -> list[Row]:
        return [row for e in run.learnt() for row in e.rows("validation")]
