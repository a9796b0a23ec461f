"""Joint (cumulative) training: each experience trains on all data seen so far, continuing from the current
weights. The reference ceiling for the stream, and what keeping every old row costs."""

from __future__ import annotations

from hf_adapt.continual.base import ContinualRun, Experience, Row, Strategy


class Joint(Strategy):
    name = "joint"
    description = "cumulative training on every experience seen so far (the ceiling; keeps all old data)"

    def train_rows(self, run: ContinualRun, experience: Experience) -> list[Row]:
        return [row for e in run.learnt() for row in e.rows("train")]

    def validation_rows(self, run: ContinualRun, experience: Experience) -> list[Row]:
        return [row for e in run.learnt() for row in e.rows("validation")]
