"""Accelerator construction and CPU threading shared by every recipe."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def make_accelerator(mixed_precision: str, gradient_accumulation_steps: int, report_to: str, **kwargs: Any):
    """An ``Accelerator`` that also runs multi-process on machines without a GPU.

    ``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine starts two
    processes, but Accelerate would give each a world of one (and both would write the
    outputs). When launched with several ranks and no accelerator device, ask for CPU,
    which makes Accelerate join the ranks over gloo.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    # Several runs in one process (tests, studies) may differ in precision or accumulation:
    # start each from a fresh AcceleratorState; the process group (PartialState) is kept.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and PartialState._shared_state and not torch.distributed.is_initialized():
        raise RuntimeError("an earlier run in this process ended the process group; run several recipes in "
                           "one multi-process launch inside hf_adapt.runtime.one_process_group()")
    AcceleratorState._reset_state()
    GradientState._reset_state()
    cpu = world > 1 and not torch.accelerator.is_available()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":  # accelerate launch's DEEPSPEED
        from hf_adapt.sharding import require_deepspeed

        require_deepspeed(torch.accelerator.is_available())
    trackers = trackers_for(report_to)
    accelerator = Accelerator(
        cpu=cpu or None,
        # `accelerate launch` always exports its --mixed_precision (default "no"): a config that asks
        # for bf16/fp16 wins; a config left at "no" defers to the launcher
        mixed_precision=None if mixed_precision == "no" and os.environ.get("ACCELERATE_MIXED_PRECISION") else mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=trackers or None,
        **kwargs,
    )
    if accelerator.num_processes != world:
        raise RuntimeError(f"launched {world} processes but Accelerate joined {accelerator.num_processes}")
    return accelerator


@contextmanager
def one_process_group() -> Iterator[None]:
    """Keep one process group for several runs in this process (a study's cells), ended once on leaving.

    Each run's ``accelerator.end_training()`` destroys the process group. Joining again would
    not be safe: torch names the new default group like the old one, so under ``accelerate
    launch`` its rendezvous keys in the launcher's store are the old ones, and a rank that
    arrives first reads a peer's stale address (gloo: "connectFullMesh failed ... Connection
    refused"). Inside this block ``end_training()`` leaves the group alone.
    """
    import torch
    from accelerate.state import PartialState

    destroy = PartialState.destroy_process_group
    PartialState.destroy_process_group = lambda self, group=None: None
    try:
        yield
    finally:
        PartialState.destroy_process_group = destroy
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            PartialState().destroy_process_group()


def trackers_for(report_to: str) -> list[str]:
    """``auto``: the Accelerate trackers installed (tensorboard, trackio); ``none``; or a comma list."""
    if report_to == "none":
        return []
    if report_to == "auto":
        return [name for name in ("tensorboard", "trackio") if importlib.util.find_spec(name)]
    return [name.strip() for name in report_to.split(",") if name.strip()]


def set_cpu_threads(threads: int | None, accelerator) -> int:
    """Threads per process: ``threads``, or the machine's cores shared among its processes.

    ``accelerate launch`` exports OMP_NUM_THREADS=1, which starves a single CPU process;
    so unless told otherwise each process gets cores / processes-on-this-machine. Measured
    on 2 cores: MiniLM-L6 trains 1.8x faster with 2 threads than with 1 (tiny test models
    are the other way round, so the tests ask for 1).
    """
    import torch

    if threads is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        threads = max(1, (os.cpu_count() or 1) // max(1, local))
    torch.set_num_threads(threads)
    return threads
