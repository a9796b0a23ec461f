"""The Optuna side of a search: the study (storage, sampler, pruner, directions), pruning from the loop's epochs, and
one progress line per trial.

Storage is ``sqlite:///<output_dir>/study.db`` unless a URL is given: embedded and resumable (a killed search
continues the same study, its unfinished trial marked failed by the heartbeat). A PostgreSQL URL
(``postgresql://user@host/db``) lets any number of workers, on one machine or many, run the same command on one
study: each asks the study for its next trial, so none is lost or run twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from hf_adapt.errors import ConfigError
from hf_adapt.loop import Callback

logger = logging.getLogger("hf_adapt.tune")

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
            "gp": "GPSampler", "nsga2": "NSGAIISampler"}
PRUNERS = ("median", "hyperband", "none")
COSTS = {"trainable_parameters": "minimize", "seconds": "minimize"}  # what every trial costs, beside its metrics
HEARTBEAT_SECONDS = 20


@dataclass
class Validation:
    """What one tuning trial measured: its validation metrics (the recipe's ``tune_objectives``), and its cost."""

    metrics: dict[str, float]
    trainable_parameters: int
    seconds: float
    history: Any = None

    def values(self, objectives: list[str]) -> list[float]:
        found = {**self.metrics, "trainable_parameters": self.trainable_parameters, "seconds": self.seconds}
        missing = [o for o in objectives if found.get(o) is None]
        if missing:
            raise ValueError(f"the trial reported no {missing} (it reported {sorted(found)})")
        return [float(found[o]) for o in objectives]


def check_choices(sampler: str, pruner: str, objectives: list[str], metrics: dict[str, str]) -> None:
    """Before anything runs: known sampler and pruner names, objectives the trials report (``metrics``: the
    recipe's validation metrics and their directions), no pruning across several objectives (Optuna prunes
    single-objective studies only)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    if pruner not in PRUNERS:
        raise ConfigError(f"pruner must be one of {list(PRUNERS)}, got {pruner!r}")
    known = (*metrics, *COSTS)
    unknown = [o for o in objectives if o not in known]
    if not objectives or unknown or len(set(objectives)) != len(objectives):
        raise ConfigError(f"objectives must be distinct names among {list(known)}, got {objectives}")
    if objectives[0] not in metrics:
        raise ConfigError(f"the first objective is the validation metric trials are pruned and ranked on; got "
                          f"{objectives[0]!r}, expected one of {list(metrics)}")
    if len(objectives) > 1 and pruner != "none":
        raise ConfigError("Optuna prunes single-objective studies only: with several objectives set pruner: none")


def make_study(storage: str, name: str, sampler: str, pruner: str, directions: list[str], seed: int):
    """Create the study, or load it when ``storage`` already holds one called ``name`` (a resumed or shared search).

    The sampler's seed moves with the trials the study already holds, so a resumed search draws new settings
    rather than repeating its first ones; with a shared store (several workers) each worker also mixes in its
    process id, and TPE assumes the running trials' values (``constant_liar``) so workers spread out."""
    import os

    import optuna

    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
               "none": optuna.pruners.NopPruner}
    study = optuna.create_study(storage=_storage(storage), study_name=name, pruner=pruners[pruner](),
                                directions=directions, load_if_exists=True)
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise ConfigError(f"study {name!r} in {storage_label(storage)} was created with directions {stored}; "
                          f"these objectives need {directions}: use another study_name")
    shared = not storage.startswith("sqlite")
    seed = seed + len(study.trials) + (os.getpid() if shared else 0)
    sampler_class = getattr(optuna.samplers, SAMPLERS[sampler])
    arguments = sampler_class.__init__.__code__.co_varnames
    kwargs = {"seed": seed % 2**32} if "seed" in arguments else {}
    if shared and "constant_liar" in arguments:
        kwargs["constant_liar"] = True
    study.sampler = sampler_class(**kwargs)
    return study


def _storage(url: str, attempts: int = 5):
    """Optuna's RDB storage at ``url``; workers started together race to create its tables, and the one that loses
    finds them on a later attempt."""
    import optuna
    import sqlalchemy.exc

    if url.startswith("postgresql://"):  # the driver the tune extra installs, whatever SQLAlchemy's default
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS,
                engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
            racing = ("already exists", "duplicate", "database is locked")
            if attempt == attempts - 1 or not any(word in str(err).lower() for word in racing):
                raise ConfigError(f"the study storage {storage_label(url)} could not be opened: "
                                  f"{str(err).splitlines()[0]}") from err
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def storage_label(storage: str) -> str:
    """The storage URL without its password, for messages and the card."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL: show only its scheme
        return storage.split(":", 1)[0] + ":..."


class Pruning(Callback):
    """Reports each epoch's validation metric to the trial and stops a trial the pruner gives up on; the decision is
    the main process's, shared with every process."""

    def __init__(self, trial, metric: str, enabled: bool = True):
        # trial: None on the processes that follow the main one; enabled: false with several objectives (Optuna
        # prunes single-objective studies only) or pruner none, when nothing is reported
        self.trial, self.metric, self.enabled = trial, metric, enabled

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        import optuna
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        state, prune = PartialState(), [False]
        if self.trial is not None and self.metric in metrics:
            try:  # the decision reaches every process even if asking for it fails here
                self.trial.report(metrics[self.metric], epoch)
                prune = [self.trial.should_prune()]
            except Exception as err:  # noqa: BLE001 - a storage error: keep training, say so
                logger.warning("trial %d: the pruner could not be asked (%s); the trial goes on", self.trial.number, err)
        if state.num_processes > 1:
            broadcast_object_list(prune)
        if prune[0]:
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.metric}={metrics.get(self.metric)}")


class Progress:
    """One line per finished trial: its value, the best so far, the counts, and the time left."""

    def __init__(self, n_trials: int | None, timeout: float | None, objective: str):
        self.n_trials, self.timeout, self.objective, self.started = n_trials, timeout, objective, time.monotonic()

    def line(self, study, trial) -> str:
        import optuna

        states = [t.state for t in study.get_trials(deepcopy=False)]
        done = sum(s.is_finished() for s in states)
        counts = {s: states.count(s) for s in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)}
        value = (f"{self.objective}={trial.values[0]:.4f}" if trial.values else trial.state.name.lower())
        best = ""
        if len(study.directions) == 1:
            try:
                best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
            except ValueError:
                best = "no completed trial yet"
        elapsed = time.monotonic() - self.started
        left = []
        if self.timeout:
            left.append(max(self.timeout - elapsed, 0.0))
        if self.n_trials and done:
            left.append(elapsed / max(done, 1) * max(self.n_trials - done, 0))
        remaining = f", ~{min(left) / 60:.1f} min left" if left else ""
        total = f"/{self.n_trials}" if self.n_trials else ""
        return (f"trial {trial.number} {value}; {best}; {done}{total} finished, "
                f"{counts[optuna.trial.TrialState.PRUNED]} pruned, {counts[optuna.trial.TrialState.FAIL]} failed; "
                f"{elapsed / 60:.1f} min elapsed{remaining}")


def summary(study) -> dict[str, Any]:
    """Counts of the study's trials by state."""
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {state.name.lower(): states.count(state) for state in optuna.trial.TrialState}


def wait_for_running(study, poll_seconds: float = 5.0) -> None:
    """Wait until no trial of ``study`` runs (other workers finishing theirs); a trial whose worker died is failed
    once its heartbeat is stale."""
    import optuna

    while True:
        optuna.storages.fail_stale_trials(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
        if not running:
            return
        logger.info("waiting for trial(s) %s of other workers to finish before choosing the best", running)
        time.sleep(poll_seconds)
