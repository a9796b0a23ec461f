"""What every training recipe does around its own work, written once.

    with recipe_run(cfg) as run:                 # one writer of output_dir; push settings checked;
        data = load(...)                         #   checkpoints, accelerator, threads, seed set up
        ...                                      # inputs checked before anything is written
        with run.writing():                      # main process: a hidden staging folder; trackers;
            model = train(run.accelerator, ...)  #   any failure removes it, a success ends training
            run.write(lambda folder: save(folder, model))   # staging filled, then swapped into place
        run.push()                               # after success only, still holding output_dir

The recipe owns only what is its own: its data, its model, its training and its files.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hf_adapt import outputs


class RecipeRun:
    """One run's shared state: the accelerator, the checkpoints, the staging folder and the clock."""

    def __init__(self, cfg: Any):
        from accelerate.utils import set_seed

        from hf_adapt import speed
        from hf_adapt.checkpoints import Checkpoints
        from hf_adapt.options import SpeedOptions
        from hf_adapt.runtime import make_accelerator, set_cpu_threads

        self.cfg = cfg
        self.started = time.perf_counter()
        cfg.check_push(cfg.base_model_id)
        if isinstance(cfg, SpeedOptions):  # what this machine cannot do is refused before anything loads
            speed.require_runtime(cfg)
            speed.enable(cfg)
        self.checkpoints = Checkpoints.from_config(cfg)
        self._staging = outputs.staging_path(cfg.output_dir)  # created by the main process once inputs are valid
        self.staging: Path | None = None
        self.accelerator = make_accelerator(cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.report_to,
                                            project_dir=str(self._staging), **speed.accelerator_kwargs(cfg))
        set_cpu_threads(cfg.torch_num_threads, self.accelerator)
        set_seed(cfg.seed)
        if not self.accelerator.is_main_process:
            logging.getLogger("hf_adapt").setLevel(logging.WARNING)  # logs come from the main process only

    @property
    def seconds(self) -> float:
        """Wall time since the run started."""
        return time.perf_counter() - self.started

    @contextlib.contextmanager
    def writing(self, trackers: bool = True) -> Iterator[None]:
        """Enter once every input is checked: the main process makes the staging folder, trackers start (with
        ``trackers``), and a failure inside removes the folder; leaving it normally ends training."""
        if self.accelerator.is_main_process:
            self._staging.mkdir(parents=True)
            self.staging = self._staging
        try:
            if trackers and self.accelerator.log_with:
                self.accelerator.init_trackers("runs", config=_tracker_config(self.cfg))
            yield
            self.accelerator.end_training()  # also tears down the process group: last
        except BaseException:
            outputs.discard(self.staging)
            raise

    def write(self, write: Callable[[Path], None]) -> None:
        """``write(staging)`` on the main process, then swap it into ``output_dir`` (see :func:`outputs.write_on_main`)."""
        outputs.write_on_main(self.accelerator, self.staging, self.cfg.output_dir, write,
                              overwrite=self.cfg.overwrite_output_dir)

    def push(self) -> Any:
        """Publish the written output when the config asks to (``push_to_hub``); the push's result, or None."""
        return self.cfg.push_after_run(self.cfg.output_dir, self.accelerator)


def _tracker_config(cfg: Any) -> dict[str, Any]:
    """The config as trackers take it: secrets redacted, scalars kept, everything else as text."""
    from hf_adapt.config import redact

    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in redact(asdict(cfg)).items()}


@contextlib.contextmanager
def recipe_run(cfg: Any) -> Iterator[RecipeRun]:
    """Hold ``cfg.output_dir`` (:func:`outputs.claimed`) and set up the run: the block inside is the recipe."""
    with outputs.claimed(cfg.output_dir, cfg.overwrite_output_dir):
        yield RecipeRun(cfg)
