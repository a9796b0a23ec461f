"""Naive fine-tuning: each experience trains on its own data only. The lower bound: it forgets."""

from __future__ import annotations

from hf_adapt.continual.base import Strategy


class Naive(Strategy):
    name = "naive"
    description = "fine-tuning on each new experience alone (no protection against forgetting)"
