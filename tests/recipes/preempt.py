"""Run an hf-adapt command, and SIGKILL this process right after its Nth checkpoint is on disk.

A preemption at a known point: ``HF_ADAPT_TEST_KILL_AT=<phase>:<step>`` (e.g. ``train:12``)
kills the main process once that checkpoint is renamed into place, mid-epoch if the step is;
``HF_ADAPT_TEST_KILL_IN=write`` kills it while the outputs are written (the adapter is in the
staging folder, the rest not yet), ``commit`` once the staging folder is filled, before it is
renamed into place; ``HF_ADAPT_TEST_TERM_AT=<step>`` sends this process a real SIGTERM as the
Nth training batch of the run is counted (a step that need not be a checkpoint's). Used as
``python tests/recipes/preempt.py finetune --config ...`` or under ``accelerate launch``.
"""

import os
import signal
import sys

from hf_adapt import artifacts, checkpoints, outputs
from hf_adapt.cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_checkpoint(target: str) -> None:
    phase, step = target.split(":")
    save = checkpoints.Phase.save

    def save_then_die(self, accelerator, at_step, *args, **kwargs):
        path = save(self, accelerator, at_step, *args, **kwargs)
        if self.name == phase and at_step == int(step) and accelerator.is_main_process:
            _die()
        return path

    checkpoints.Phase.save = save_then_die


def _kill_while_writing(where: str) -> None:
    if where == "commit":
        outputs.commit = lambda *args, **kwargs: _die()
        return
    save_model = artifacts.save_model

    def save_then_die(*args, **kwargs):
        save_model(*args, **kwargs)
        _die()

    artifacts.save_model = save_then_die


def _terminate_at(step: str) -> None:
    from hf_adapt import loop

    count, seen = loop._Run.count, [0]

    def count_then_terminate(self, loss):
        count(self, loss)
        seen[0] += 1
        if seen[0] == int(step):
            os.kill(os.getpid(), signal.SIGTERM)

    loop._Run.count = count_then_terminate


if __name__ == "__main__":
    if "HF_ADAPT_TEST_TERM_AT" in os.environ:
        _terminate_at(os.environ["HF_ADAPT_TEST_TERM_AT"])
    if "HF_ADAPT_TEST_KILL_AT" in os.environ:
        _kill_after_checkpoint(os.environ["HF_ADAPT_TEST_KILL_AT"])
    if "HF_ADAPT_TEST_KILL_IN" in os.environ:
        _kill_while_writing(os.environ["HF_ADAPT_TEST_KILL_IN"])
    sys.exit(main(sys.argv[1:]))
