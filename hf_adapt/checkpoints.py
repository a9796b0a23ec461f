"""Resumable training: the full training state, saved through Accelerate every N optimiser steps.

A run's checkpoints live beside its output, in ``<output_dir>.checkpoints/``, one folder per
training phase (``train``; ``fold-1`` ... ``refit`` under cross-validation; one per continual
experience) holding ``step-<N>/`` folders. Each holds what ``accelerator.save_state`` writes
(the trainable weights and buffers as safetensors, the optimizer, the scheduler, every
process's RNG states, the gradient scaler) plus the loop's own state (epoch, position in the
epoch, the shuffling generator at the epoch's start, history, the best epoch's weights) in
``loop_state.json`` and ``loop_state.safetensors``. A phase that finished keeps a final
checkpoint, so a resumed run replays finished folds or experiences from it instead of
retraining them.

Every checkpoint is written to a hidden ``.step-<N>.partial`` sibling and renamed into place
once complete; ``loop_state.json`` is written last, and a folder without it is never resumed
from. Everything loads through safetensors or ``torch.load(weights_only=True)`` (Accelerate's
loader), never an unrestricted pickle.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_adapt.errors import ConfigError, OutputError

logger = logging.getLogger(__name__)

STATE_FILE = "loop_state.json"
TENSORS_FILE = "loop_state.safetensors"
RUN_FILE = "run.json"
_STEP = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.json"  # written last into a transformers Trainer's checkpoint-<N>
_TRAINER_STEP = re.compile(r"^checkpoint-(\d+)$")

# Fields that may differ between a run and its resumption: they change where results go, how they
# are logged or published, not what is trained.
RESUMABLE_CHANGES = frozenset({
    "output_dir", "resume_from_checkpoint", "checkpointing_steps", "checkpoints_total_limit", "overwrite_output_dir",
    "push_to_hub", "hub_model_id", "hub_private", "report_to", "logging_steps", "torch_num_threads",
    "num_workers", "license", "intended_use", "out_of_scope_use", "limitations", "card_examples",
})


@dataclass
class CheckpointOptions:
    """Checkpoint fields every training recipe's config inherits."""

    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save the full training state (adapter, optimizer, scheduler, RNG states, data position) every N optimiser steps and at the end of each training phase, into <output_dir>.checkpoints/ (unset: no checkpoints)."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Keep the last K checkpoints of each training phase; older ones are deleted."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "Continue a killed run: latest (its newest checkpoints; starts fresh when there are none) or the path of one step-N checkpoint folder. Settings that change what is trained must match the run's."})

    def check_checkpointing(self) -> None:
        if self.checkpointing_steps is not None and self.checkpointing_steps < 1:
            raise ConfigError(f"checkpointing_steps must be >= 1, got {self.checkpointing_steps}")
        if self.checkpoints_total_limit < 1:
            raise ConfigError(f"checkpoints_total_limit must be >= 1, got {self.checkpoints_total_limit}")


def checkpoint_root(output_dir: str | Path) -> Path:
    path = Path(output_dir).absolute()
    return path.parent / f"{path.name}.checkpoints"


def step_of(path: Path) -> int | None:
    match = _STEP.match(path.name)
    return int(match.group(1)) if match and (path / STATE_FILE).is_file() else None


def checkpoints_in(phase_dir: Path) -> list[Path]:
    """The complete checkpoints of a phase, oldest first (half-written ones never count)."""
    if not phase_dir.is_dir():
        return []
    found = [(step_of(p), p) for p in phase_dir.iterdir() if p.is_dir()]
    return [p for s, p in sorted((s, p) for s, p in found if s is not None)]


@dataclass
class Phase:
    """Checkpointing of one call to :func:`hf_adapt.loop.fit`."""

    directory: Path
    every_steps: int | None
    keep: int
    resume_from: Path | None  # the checkpoint to continue from, None: start fresh

    @property
    def name(self) -> str:
        return self.directory.name

    def save(self, accelerator, step: int, state: dict[str, Any], tensors: dict[str, Any]) -> Path:
        """``accelerator.save_state`` into a hidden sibling, the loop state last, then rename into place and
        drop the oldest beyond ``keep``. Collective: every process calls it."""
        from safetensors.torch import save_file

        from hf_adapt.outputs import commit

        final = self.directory / f"step-{step}"
        partial = self.directory / f".step-{step}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))  # every process writes its own RNG states
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial / TENSORS_FILE))
            _write_json(partial / STATE_FILE, state)  # last: its presence marks a complete checkpoint
            commit(partial, final)
            for old in checkpoints_in(self.directory)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        logger.info("checkpoint %s", final)
        return final

    def load(self, accelerator, model) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the training state saved in ``resume_from`` (after ``accelerator.prepare``)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = self.resume_from
        expected = {_unwrapped(k) for k in trainable_keys(model)}
        with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
            saved = {_unwrapped(k) for k in handle.keys()}
        if saved != expected:
            raise ConfigError(
                f"checkpoint {path} does not fit this model: {len(saved - expected)} saved tensors it lacks "
                f"(e.g. {sorted(saved - expected)[:3]}), {len(expected - saved)} it needs that were not saved "
                f"(e.g. {sorted(expected - saved)[:3]}); resume with the settings of the run that saved it")
        accelerator.load_state(str(path), strict=False)  # only the trainable tensors are in it, checked above
        state = json.loads((path / STATE_FILE).read_text())
        logger.info("resumed from %s (optimiser step %d, epoch %d)", path, state["step"], state["epoch"])
        return state, load_file(str(path / TENSORS_FILE))


def trainable_keys(model) -> list[str]:
    """State-dict keys of what training changes (trainable parameters and buffers), as Accelerate names them."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return [k for k in model.state_dict() if k in trainable]


def _unwrapped(key: str) -> str:
    return key.removeprefix("module.")  # DDP's wrapper; the same model may be registered wrapped and bare


def keep_trainable(models, weights, output_dir) -> None:
    """``save_state`` pre-hook: checkpoint what training changes, not the frozen backbone (peft's rule for adapters)."""
    for index, (model, state) in enumerate(zip(models, weights)):
        keys = set(trainable_keys(model))
        weights[index] = {k: v.contiguous() for k, v in state.items() if k in keys}  # safetensors needs packed


class Checkpoints:
    """A run's checkpoint folder: which phases resume from where, and whether the run matches."""

    def __init__(self, root: Path, every_steps: int | None, keep: int, resume: str | None):
        self.root, self.every_steps, self.keep, self.resume = root, every_steps, keep, resume
        self.resume_step: Path | None = None  # a step-N folder named by the user
        if resume not in (None, "latest"):
            self.resume_step = Path(resume).absolute()
            if step_of(self.resume_step) is None:
                raise ConfigError(f"resume_from_checkpoint {resume}: not a complete step-N checkpoint folder "
                                  f"(expected a folder named step-<N> holding {STATE_FILE})")
            self.root = self.resume_step.parent.parent
        self.order: list[str] = []

    @classmethod
    def from_config(cls, cfg) -> Checkpoints | None:
        if cfg.checkpointing_steps is None and cfg.resume_from_checkpoint is None:
            return None
        cfg.check_checkpointing()
        return cls(checkpoint_root(cfg.output_dir), cfg.checkpointing_steps, cfg.checkpoints_total_limit,
                   cfg.resume_from_checkpoint)

    def open(self, accelerator, cfg, data: Any) -> None:
        """Check, before training, that resuming continues this very run (same config, same ``data``
        fingerprint, as many processes), or that a fresh run will not mix with an earlier run's
        checkpoints; record the run."""
        from dataclasses import asdict

        from hf_adapt.config import redact

        run = {**redact(asdict(cfg)), "data_sha256": data, "num_processes": accelerator.num_processes}
        overwrite = cfg.overwrite_output_dir
        record = self.root / RUN_FILE
        earlier = json.loads(record.read_text()) if record.is_file() else None
        if self.resume is None and earlier is not None:
            if not overwrite:
                raise OutputError(f"{self.root} holds the checkpoints of an earlier run: pass "
                                  "--resume_from_checkpoint latest to continue it, or --overwrite_output_dir to "
                                  "delete them and start over")
            if accelerator.is_main_process:
                shutil.rmtree(self.root)
            earlier = None
        if earlier is not None:
            changed = sorted(k for k in set(run) | set(earlier["run"])
                             if k not in RESUMABLE_CHANGES and run.get(k) != earlier["run"].get(k))
            if changed:
                raise ConfigError(f"cannot resume from {self.root}: the run there differs in {changed} "
                                  f"(there: {[earlier['run'].get(k) for k in changed]}, now: "
                                  f"{[run.get(k) for k in changed]}); resume with the same settings")
            self.order = list(earlier.get("phases", []))
        elif self.resume_step is not None:
            raise ConfigError(f"resume_from_checkpoint {self.resume_step}: no {RUN_FILE} in {self.root}; "
                              "it is not inside an hf-adapt checkpoint folder")
        elif self.resume == "latest":
            logger.info("no checkpoints in %s yet: starting fresh", self.root)
        self.run = run
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            self._record()
        accelerator.wait_for_everyone()

    def phase(self, accelerator, name: str) -> Phase:
        """The checkpointing of the next training phase, and the checkpoint it resumes from (if any)."""
        directory = self.root / name
        resume_from = None
        if self.resume_step is not None and self.resume_step.parent == directory:
            resume_from = self.resume_step
            self._drop_after(accelerator, name, self.resume_step)
        elif self.resume_step is None or name in self._before(self.resume_step.parent.name):
            saved = checkpoints_in(directory)
            resume_from = saved[-1] if saved and self.resume is not None else None
        if name not in self.order:
            self.order.append(name)
            if accelerator.is_main_process:
                self._record()
        if accelerator.is_main_process and directory.is_dir():
            for partial in directory.glob(".step-*.partial"):  # a save a kill interrupted: never resumed from
                shutil.rmtree(partial, ignore_errors=True)
        return Phase(directory, self.every_steps, self.keep, resume_from)

    def _before(self, phase: str) -> list[str]:
        return self.order[:self.order.index(phase)] if phase in self.order else []

    def _drop_after(self, accelerator, name: str, kept: Path) -> None:
        """Resuming from an earlier checkpoint: what was saved after it (in this phase and later ones) belongs to a
        history that is being replaced."""
        if not accelerator.is_main_process:
            return
        for newer in [p for p in checkpoints_in(kept.parent) if step_of(p) > step_of(kept)]:
            shutil.rmtree(newer)
        later = self.order[self.order.index(name) + 1:] if name in self.order else []
        for phase in later:
            shutil.rmtree(self.root / phase, ignore_errors=True)
        self.order = self.order[:self.order.index(name) + 1] if name in self.order else self.order

    def _record(self) -> None:
        _write_json(self.root / RUN_FILE, {"run": self.run, "phases": self.order})


def _write_json(path: Path, obj: Any) -> None:
    """Write, then rename over ``path``: a reader sees the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    partial.replace(path)


def trainer_checkpoints(cfg, state, data: Any) -> tuple[Path | None, str | None]:
    """For a recipe that trains with a transformers / TRL ``Trainer``, which checkpoints itself: where its
    ``checkpoint-<N>`` folders go (None: nowhere) and the one to resume from. The same run checks as
    :meth:`Checkpoints.open`; ``latest`` takes the newest complete folder (one with ``trainer_state.json``)."""
    if cfg.checkpointing_steps is None and cfg.resume_from_checkpoint is None:
        return None, None
    cfg.check_checkpointing()
    root, named = checkpoint_root(cfg.output_dir), None
    if cfg.resume_from_checkpoint not in (None, "latest"):
        named = Path(cfg.resume_from_checkpoint).absolute()
        if not (named / TRAINER_STATE).is_file():
            raise ConfigError(f"resume_from_checkpoint {named}: not a complete checkpoint folder (expected "
                              f"checkpoint-<N> holding {TRAINER_STATE})")
        root = named.parent
    Checkpoints(root, cfg.checkpointing_steps, cfg.checkpoints_total_limit,
                "latest" if cfg.resume_from_checkpoint else None).open(state, cfg, data)
    if named is not None or cfg.resume_from_checkpoint is None:
        return root, None if named is None else str(named)
    complete = [(int(m.group(1)), p) for p in root.iterdir()
                if (m := _TRAINER_STEP.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return root, str(max(complete)[1]) if complete else None
