"""SIGTERM, the way batch schedulers (Slurm, Kubernetes, spot instances) stop a job, ends a run cleanly.

Under the ``hf-adapt`` command and ``recipes/*.py`` (:func:`handle_sigterm`), a SIGTERM during
training stops every process at the same optimiser step, saves a checkpoint there when
checkpointing is on, logs what happened and exits with status 143 (128 + SIGTERM, what a shell
reports for a process the signal killed). Outside training the run stops at once. Either way the
output directory is untouched: it is only ever replaced whole, at the end of a run.

``accelerate launch`` forwards the signal to its processes and kills them 5 s later (one
process) or 30 s later (several), which is enough to save an adapter's training state.
Python code that calls a recipe's ``main`` keeps its own SIGTERM handling.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

F = TypeVar("F", bound=Callable)

logger = logging.getLogger(__name__)

EXIT_STATUS = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """The run was stopped by SIGTERM; exits with :data:`EXIT_STATUS` unless caught."""

    def __init__(self, message: str):
        super().__init__(EXIT_STATUS)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _State:
    installed = False  # a handler of ours is in place
    requested = False  # SIGTERM arrived
    training = 0  # inside fit(), which stops at its next step boundary instead


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Handle SIGTERM for the duration; only from the main thread (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread() or _State.installed:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _State.installed, _State.requested = True, False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _State.installed, _State.requested = False, False


def _on_sigterm(signum, frame) -> None:
    if _State.requested:
        return  # already stopping
    _State.requested = True
    if _State.training:
        logger.warning("SIGTERM received: stopping at the next optimiser step")
        return
    raise Preempted("stopped by SIGTERM outside training; the output directory was not written (a finished "
                    "training phase resumes from its final checkpoint with --resume_from_checkpoint latest, when "
                    "checkpointing is on)")


def requested() -> bool:
    """Whether SIGTERM arrived (always False where :func:`handle_sigterm` is not in force)."""
    return _State.requested


@contextlib.contextmanager
def training() -> Iterator[None]:
    """While training, SIGTERM only asks the loop to stop at its next step; the loop raises :class:`Preempted`."""
    _State.training += 1
    try:
        yield
    finally:
        _State.training -= 1
    if _State.requested and not _State.training:  # arrived after the loop's last check: stop here
        raise Preempted("stopped by SIGTERM at the end of a training phase (its final checkpoint, when "
                        "checkpointing is on, resumes with --resume_from_checkpoint latest); the output directory "
                        "was not written")


def stoppable(function: F) -> F:
    """Run ``function`` (a training loop that polls :func:`requested`) inside :func:`training`."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with training():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def trainer_callback(save: bool):
    """A transformers ``TrainerCallback`` that ends training at the step after SIGTERM (every process at the
    same one), saving a checkpoint there when ``save``. Run the trainer inside :func:`training`."""
    from transformers import TrainerCallback

    class StopOnSigterm(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if _requested_anywhere():
                control.should_save = save
                control.should_training_stop = True
            return control

    return StopOnSigterm()


def _requested_anywhere() -> bool:
    """:func:`requested` on any process of the launch (a one-number all-reduce when there are several)."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return requested()
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(requested())], device=state.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
