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
loader), never an unrestricted pickle; DeepSpeed's engine loads its own files.

A sharded model (FSDP2, DeepSpeed) checkpoints its weights and optimizer state one shard per
process instead, see :mod:`hf_adapt.sharding`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_adapt.config import Options, resumable_fields
from hf_adapt.errors import ConfigError, OutputError

logger = logging.getLogger(__name__)

STATE_FILE = "loop_state.json"
TENSORS_FILE = "loop_state.safetensors"
RUN_FILE = "run.json"
_STEP = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.json"  # written last into a transformers Trainer's checkpoint-<N>
_TRAINER_STEP = re.compile(r"^checkpoint-(\d+)$")



@dataclass
class CheckpointOptions(Options):
    """Checkpoints: the component every training recipe's config is composed with."""

    title = "checkpoints"

    checkpointing_steps: int | None = field(default=None, metadata={"resumable": True, "help": "Save the full training state (adapter, optimizer, scheduler, RNG states, data position) every N optimiser steps and at the end of each training phase, into <output_dir>.checkpoints/ (unset: no checkpoints)."})
    checkpoints_total_limit: int = field(default=2, metadata={"resumable": True, "help": "Keep the last K checkpoints of each training phase; older ones are deleted."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"resumable": True, "help": "Continue a killed run: latest (its newest checkpoints; starts fresh when there are none) or the path of one step-N checkpoint folder. Settings that change what is trained must match the run's."})

    def validate(self) -> None:
        if self.checkpointing_steps is not None and self.checkpointing_steps < 1:
            raise ConfigError(f"checkpointing_steps must be >= 1, got {self.checkpointing_steps}")
        if self.checkpoints_total_limit < 1:
            raise ConfigError(f"checkpoints_total_limit must be >= 1, got {self.checkpoints_total_limit}")


def checkpoint_root(output_dir: str | Path) -> Path:
    path = Path(output_dir).absolute()
    return path.parent / f"{path.name}.checkpoints"


def step_of(path: Path, pattern: re.Pattern = _STEP, marker: str = STATE_FILE) -> int | None:
    """The step of a complete checkpoint folder (named by ``pattern``, holding ``marker``); None for anything else.
    The defaults are hf-adapt's ``step-<N>``; a transformers Trainer's are ``_TRAINER_STEP`` and ``TRAINER_STATE``."""
    match = pattern.match(path.name)
    return int(match.group(1)) if match and (path / marker).is_file() else None


def checkpoints_in(directory: Path, pattern: re.Pattern = _STEP, marker: str = STATE_FILE) -> list[Path]:
    """The complete checkpoints in ``directory``, oldest first (half-written ones never count)."""
    if not directory.is_dir():
        return []
    found = [(step_of(p, pattern, marker), p) for p in directory.iterdir() if p.is_dir()]
    return [p for s, p in sorted((s, p) for s, p in found if s is not None)]


def _drop_newer(kept: Path, pattern: re.Pattern = _STEP, marker: str = STATE_FILE) -> None:
    """Resuming from an earlier checkpoint: those saved after it belong to a history that is being replaced."""
    for newer in checkpoints_in(kept.parent, pattern, marker):
        if step_of(newer, pattern, marker) > step_of(kept, pattern, marker):
            shutil.rmtree(newer)


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

    def save(self, accelerator, step: int, state: dict[str, Any], tensors: dict[str, Any], model=None,
             optimizer=None) -> Path:
        """``accelerator.save_state`` into a hidden sibling (for a sharded ``model``, see :mod:`hf_adapt.sharding`),
        the loop state last, then rename into place and drop the oldest beyond ``keep``. Collective: every process
        calls it."""
        from safetensors.torch import save_file

        from hf_adapt.outputs import commit, on_main, space_checked, write_json

        final = self.directory / f"step-{step}"
        partial = self.directory / f".step-{step}.partial"
        sharded = _sharded(tensors)  # the loop's FSDP2 shards (the best epoch's weights): written by every process
        mode = _sharding(accelerator, model)
        state = {**state, "sharded_tensors": sorted(sharded), "sharding": mode}

        def prepare() -> None:
            shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
            partial.mkdir(parents=True)

        def complete() -> None:
            save_file({k: v.contiguous() for k, v in tensors.items() if k not in sharded}, str(partial / TENSORS_FILE))
            write_json(partial / STATE_FILE, state)  # last: its presence marks a complete checkpoint
            commit(partial, final)
            for old in checkpoints_in(self.directory)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)

        with space_checked(final, cleanup=partial):  # a full disk: a clear error, and no empty .partial left
            on_main(accelerator, prepare)
            _save_training_state(accelerator, partial, mode, model, optimizer, {k: tensors[k] for k in sharded})
            accelerator.wait_for_everyone()
            on_main(accelerator, complete)
        logger.info("checkpoint %s", final)
        return final

    def load(self, accelerator, model, optimizer=None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the training state saved in ``resume_from`` (after ``accelerator.prepare``)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from hf_adapt import sharding
        from hf_adapt.loop import trainable_keys

        path = self.resume_from
        state = json.loads((path / STATE_FILE).read_text())
        was, now = state.get("sharding", "none"), _sharding(accelerator, model)
        processes = state.get("num_processes", accelerator.num_processes)
        if processes != accelerator.num_processes or was != now:  # before reading what it holds
            raise ConfigError(f"{path} was saved by {processes} process(es) with sharding {was}; resume it as it "
                              f"was launched (now {accelerator.num_processes}, sharding {now})")
        tensors = load_file(str(path / TENSORS_FILE))
        if now == "fsdp2":
            with sharding.accelerate_state_only(accelerator):
                accelerator.load_state(str(path))  # scheduler, RNG states, scaler
            tensors.update(sharding.load_dcp(path, accelerator.unwrap_model(model), optimizer,
                                             state.get("sharded_tensors", [])))
        elif now == "deepspeed":
            # the engine's own loader; the frozen weights were left out of the checkpoint and stay as built
            accelerator.load_state(str(path), load_module_strict=False)
        else:
            expected = {_unwrapped(k) for k in trainable_keys(model)}
            with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
                saved = {_unwrapped(k) for k in handle.keys()}
            sharding.check_fits(path, saved, expected)
            accelerator.load_state(str(path), strict=False)  # only the trainable tensors are in it, checked above
        logger.info("resumed from %s (optimiser step %d, epoch %d)", path, state["step"], state["epoch"])
        return state, tensors


def _sharding(accelerator, model) -> str:
    """How the weights are laid out across processes, which decides how a checkpoint stores them."""
    from hf_adapt import sharding

    if model is not None and sharding.is_fsdp2(model):
        return "fsdp2"
    return "deepspeed" if sharding.uses_deepspeed(accelerator) else "none"


def _sharded(tensors: dict[str, Any]) -> set[str]:
    from torch.distributed.tensor import DTensor

    return {k for k, v in tensors.items() if isinstance(v, DTensor)}


def _save_training_state(accelerator, directory: Path, mode: str, model, optimizer,
                         sharded_tensors: dict[str, Any]) -> None:
    """Weights, optimizer, scheduler, RNG states: through Accelerate, or (FSDP2, ``mode`` from :func:`_sharding`)
    the weights and optimizer through DCP, each process writing its shard. Collective."""
    from hf_adapt import sharding

    if mode == "fsdp2":
        with sharding.accelerate_state_only(accelerator):
            accelerator.save_state(str(directory))  # every process writes its own RNG states
        sharding.save_dcp(directory, accelerator.unwrap_model(model), optimizer, sharded_tensors)
        return
    if mode == "deepspeed":
        # the engine's save_checkpoint: each process its partitions of the weights and optimizer state
        accelerator.save_state(str(directory), exclude_frozen_parameters=True)
        return
    hook = accelerator.register_save_state_pre_hook(keep_trainable)
    try:
        accelerator.save_state(str(directory))  # every process writes its own RNG states
    finally:
        hook.remove()


def _unwrapped(key: str) -> str:
    return key.removeprefix("module.")  # DDP's wrapper; the same model may be registered wrapped and bare


def keep_trainable(models, weights, output_dir) -> None:
    """``save_state`` pre-hook: checkpoint what training changes, not the frozen backbone (peft's rule for adapters)."""
    from hf_adapt.loop import trainable_keys

    for index, (model, state) in enumerate(zip(models, weights)):
        keys = set(trainable_keys(model))
        weights[index] = {k: v.contiguous() for k, v in state.items() if k in keys}  # safetensors needs packed


class Checkpoints:
    """A run's checkpoint folder: whether the run matches, and which phases resume from where.

    Only the main process reads and changes the folder; the others learn its decisions (see
    ``outputs.on_main``), so no process acts on a half-made change of another.
    """

    def __init__(self, root: Path, every_steps: int | None, keep: int, resume: str | None):
        self.root, self.every_steps, self.keep, self.resume = root, every_steps, keep, resume
        self.resume_step: Path | None = None  # a step-N folder named by the user
        if resume not in (None, "latest"):
            self.resume_step = Path(resume).absolute()
            if step_of(self.resume_step) is None:
                raise ConfigError(f"resume_from_checkpoint {resume}: not a complete step-N checkpoint folder "
                                  f"(expected a folder named step-<N> holding {STATE_FILE})")
            self.root = self.resume_step.parent.parent
        self.order: list[str] = []  # the phases, in the order the run met them (main process)

    @classmethod
    def from_config(cls, cfg) -> Checkpoints | None:
        if cfg.checkpointing_steps is None and cfg.resume_from_checkpoint is None:
            return None
        return cls(checkpoint_root(cfg.output_dir), cfg.checkpointing_steps, cfg.checkpoints_total_limit,
                   cfg.resume_from_checkpoint)

    def open(self, accelerator, cfg, data_sha256: Any) -> None:
        """Check, before training, that resuming continues this very run (same training settings, same
        data, as many processes, same precision), or that a fresh run will not mix with an earlier run's
        checkpoints; record the run."""
        from hf_adapt.outputs import on_main

        run = run_record(cfg, data_sha256, accelerator)
        on_main(accelerator, lambda: self._open(run, cfg.overwrite_output_dir))

    def _open(self, run: dict[str, Any], overwrite: bool) -> None:
        record = self.root / RUN_FILE
        earlier = json.loads(record.read_text()) if record.is_file() else None
        if self.resume is None and earlier is not None:
            if not overwrite:
                raise OutputError(f"{self.root} holds the checkpoints of an earlier run: pass "
                                  "--resume_from_checkpoint latest to continue it, or --overwrite_output_dir to "
                                  "delete them and start over")
            shutil.rmtree(self.root)
            earlier = None
        if earlier is not None:
            changed = sorted(k for k in set(run["digests"]) | set(earlier["digests"])
                             if run["digests"].get(k) != earlier["digests"].get(k))
            if changed:
                raise ConfigError(f"cannot resume from {self.root}: the run there differs in {changed} (there: "
                                  f"{[earlier['values'].get(k) for k in changed]}, now: "
                                  f"{[run['values'].get(k) for k in changed]}); resume with the same settings")
            self.order = list(earlier.get("phases", []))
        elif self.resume_step is not None:
            raise ConfigError(f"resume_from_checkpoint {self.resume_step}: no {RUN_FILE} in {self.root}; "
                              "it is not inside an hf-adapt checkpoint folder")
        elif self.resume == "latest":
            logger.info("no checkpoints in %s yet: starting fresh", self.root)
        self.run = run
        self.root.mkdir(parents=True, exist_ok=True)
        self._record()

    def phase(self, accelerator, name: str) -> Phase:
        """The checkpointing of the next training phase, and the checkpoint it resumes from (if any)."""
        from hf_adapt.outputs import on_main

        resume_from = on_main(accelerator, lambda: self._phase(name))
        return Phase(self.root / name, self.every_steps, self.keep, resume_from)

    def _phase(self, name: str) -> Path | None:
        directory = self.root / name
        resume_from = None
        if self.resume_step is not None and self.resume_step.parent == directory:
            resume_from = self.resume_step
            self._drop_after(name, self.resume_step)
        elif self.resume_step is None or name in self._before(self.resume_step.parent.name):
            saved = checkpoints_in(directory)
            resume_from = saved[-1] if saved and self.resume is not None else None
        if name not in self.order:
            self.order.append(name)
            self._record()
        if directory.is_dir():
            for partial in directory.glob(".step-*.partial"):  # a save a kill interrupted: never resumed from
                shutil.rmtree(partial, ignore_errors=True)
        return resume_from

    def _before(self, phase: str) -> list[str]:
        return self.order[:self.order.index(phase)] if phase in self.order else []

    def _drop_after(self, name: str, kept: Path) -> None:
        """Resuming from an earlier checkpoint: what was saved after it (in this phase and later ones) belongs to a
        history that is being replaced."""
        _drop_newer(kept)
        if name in self.order:
            for phase in self.order[self.order.index(name) + 1:]:
                shutil.rmtree(self.root / phase, ignore_errors=True)
            self.order = self.order[:self.order.index(name) + 1]
            self._record()

    def _record(self) -> None:
        from hf_adapt.outputs import write_json

        write_json(self.root / RUN_FILE, {**self.run, "phases": self.order})


_DATA_PATHS = frozenset({"data", "data_files"})  # stand-ins for the data: its hash decides where there is one


def run_record(cfg, data_sha256: Any, accelerator) -> dict[str, Any]:
    """What pins a run for resuming: a digest of each training setting (of the raw value, so nothing is hidden
    by redaction, and no secret is stored), plus the data hash, the process count and the precision in use;
    the redacted values, to name what changed."""
    import hashlib
    from dataclasses import asdict

    from hf_adapt.config import redact

    values = {**asdict(cfg), "data_sha256": data_sha256, "num_processes": accelerator.num_processes,
              "mixed_precision": str(getattr(accelerator, "mixed_precision", "no"))}
    hashed = all(data_sha256) if isinstance(data_sha256, list) else bool(data_sha256)  # local files, hashed
    exempt = resumable_fields(type(cfg)) | (_DATA_PATHS if hashed else frozenset())
    kept = {k: v for k, v in values.items() if k not in exempt}
    digests = {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:16]
               for k, v in kept.items()}
    return {"digests": digests, "values": json.loads(json.dumps(redact(kept), default=str))}


def trainer_checkpoints(cfg, state, data_sha256: Any) -> tuple[Path | None, str | None]:
    """For a recipe that trains with a transformers / TRL ``Trainer``, which checkpoints itself: where its
    ``checkpoint-<N>`` folders go (None: nowhere) and the one to resume from. The same run checks as
    :meth:`Checkpoints.open`; ``latest`` takes the newest complete folder (one with ``trainer_state.json``),
    a named folder drops those saved after it."""
    from hf_adapt.outputs import on_main

    if cfg.checkpointing_steps is None and cfg.resume_from_checkpoint is None:
        return None, None
    root, named = checkpoint_root(cfg.output_dir), None
    if cfg.resume_from_checkpoint not in (None, "latest"):
        named = Path(cfg.resume_from_checkpoint).absolute()
        if step_of(named, _TRAINER_STEP, TRAINER_STATE) is None:
            raise ConfigError(f"resume_from_checkpoint {named}: not a complete checkpoint folder (expected "
                              f"checkpoint-<N> holding {TRAINER_STATE})")
        root = named.parent
        if not (root / RUN_FILE).is_file():
            raise ConfigError(f"resume_from_checkpoint {named}: no {RUN_FILE} in {root}; it is not inside an "
                              "hf-adapt checkpoint folder")
    Checkpoints(root, cfg.checkpointing_steps, cfg.checkpoints_total_limit,
                "latest" if cfg.resume_from_checkpoint else None).open(state, cfg, data_sha256)

    def pick() -> str | None:
        if named is not None:
            _drop_newer(named, _TRAINER_STEP, TRAINER_STATE)
            return str(named)
        complete = checkpoints_in(root, _TRAINER_STEP, TRAINER_STATE)
        return str(complete[-1]) if complete and cfg.resume_from_checkpoint else None

    return root, on_main(state, pick)
