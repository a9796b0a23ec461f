"""``hf-adapt tune`` end to end on real German Credit rows and a tiny BERT: trials on train and validation only, the
best config retrained and tested once, the outputs; a killed search resumes the same study; a failed trial is recorded
and the search goes on; two workers share one PostgreSQL study without losing or repeating a trial."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed: pip install -e '.[tune]'")

from hf_adapt.config import config_from_dict  # noqa: E402
from hf_adapt.errors import ConfigError  # noqa: E402
from hf_adapt.recipes.finetune import FinetuneConfig  # noqa: E402
from hf_adapt.recipes.tune import TuneSettings, tune  # noqa: E402

SPACE = {
    "learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-2},
    "regime": {"distribution": "categorical", "choices": ["adapter", "linear_probe"]},
    "adapter.r": {"distribution": "int", "low": 2, "high": 8, "step": 2, "when": {"regime": "adapter"}},
}


def _base(tmp_path: Path, tiny_bert, credit_sample, **values) -> Path:
    base = {"model_name_or_path": str(tiny_bert), "data": str(credit_sample), "num_train_epochs": 2,
            "max_length": 64, "report_to": "none", "torch_num_threads": 1, "base_model_id": None,
            "bootstrap_resamples": 100, "card_examples": 0, "search": SPACE, **values}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_a_search_trains_on_validation_and_tests_the_best_once(tiny_bert, credit_sample, tmp_path, caplog):
    out = tmp_path / "tune"
    with caplog.at_level(logging.INFO):
        facts = tune(TuneSettings(config=str(_base(tmp_path, tiny_bert, credit_sample)), n_trials=3,
                                  output_dir=str(out), pruner="none"))
    tested = [r for r in caplog.records if r.name == "hf_adapt.finetune" and r.getMessage().startswith("test:")]
    assert len(tested) == 1, "the test split was scored by a trial, or not by the retrain"
    progress = [r.getMessage() for r in caplog.records if r.name == "hf_adapt.tune" and r.getMessage().startswith("trial ")]
    assert len(progress) == 3 and all("best" in line and "finished" in line for line in progress)
    assert (out / "study.db").is_file() and facts["trials"]["complete"] == 3
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 4
    assert (out / "figures" / "optimization_history.png").is_file()
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["regime"] == facts["best_params"]["regime"] and "search" not in best
    cfg = config_from_dict(FinetuneConfig, best)  # best_config.yaml reruns with --config
    assert cfg.learning_rate == pytest.approx(facts["best_params"]["learning_rate"])
    card = (out / "best" / "README.md").read_text()
    assert "### Hyperparameter search" in card and "3 trial(s) completed, 0 pruned, 0 failed" in card
    results = json.loads((out / "tune_results.json").read_text())
    assert results["test_metrics"] == json.loads((out / "best" / "eval_results.json").read_text())
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())  # trials leave no files


def test_a_search_resumes_its_study_and_refuses_another_on_it(tiny_bert, credit_sample, tmp_path):
    base, out = _base(tmp_path, tiny_bert, credit_sample, num_train_epochs=1), tmp_path / "tune"
    tune(TuneSettings(config=str(base), n_trials=2, output_dir=str(out), retrain=False))
    tune(TuneSettings(config=str(base), n_trials=3, output_dir=str(out), retrain=False))  # one more, not three
    study = optuna.load_study(study_name="hf-adapt", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    other = _base(tmp_path, tiny_bert, credit_sample, num_train_epochs=1, search={
        "learning_rate": {"distribution": "uniform", "low": 1e-3, "high": 2e-3}})
    with pytest.raises(ConfigError, match="holds another search"):
        tune(TuneSettings(config=str(other), n_trials=4, output_dir=str(out), retrain=False))


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tiny_bert, credit_sample, tmp_path):
    space = {"text_template": {"distribution": "categorical",
                               "choices": ["{age_in_years} years, {purpose}", "{no_such_column}"]}}
    base = _base(tmp_path, tiny_bert, credit_sample, num_train_epochs=1, search=space)
    facts = tune(TuneSettings(config=str(base), n_trials=4, output_dir=str(tmp_path / "tune"), sampler="random",
                              seed=0))  # seed 0 draws the bad template second of four
    study = optuna.load_study(study_name="hf-adapt", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all("no_such_column" in t.user_attrs["error"] for t in failed)
    assert facts["trials"]["fail"] == len(failed) and facts["best_params"]["text_template"] != "{no_such_column}"


def test_what_cannot_run_is_refused_before_the_first_trial(tiny_bert, credit_sample, tmp_path):
    cases = [({"learning_rte": {"distribution": "uniform", "low": 0.1, "high": 0.2}}, "not a field"),
             ({"per_device_train_batch_size": {"distribution": "int", "low": 0, "high": 8}},
              "per_device_train_batch_size = 0 gives a config the finetune recipe refuses"),
             ({"learning_rate": {"distribution": "uniform", "low": 0.3, "high": 0.1}}, "range is empty")]
    for space, message in cases:
        base = _base(tmp_path, tiny_bert, credit_sample, search=space)
        with pytest.raises(ConfigError, match=message):
            tune(TuneSettings(config=str(base), n_trials=1, output_dir=str(tmp_path / "refused")))
        assert not (tmp_path / "refused" / "study.db").exists()
    base = _base(tmp_path, tiny_bert, credit_sample)
    with pytest.raises(ConfigError, match="single-objective"):
        tune(TuneSettings(config=str(base), n_trials=1, output_dir=str(tmp_path / "r2"),
                          objectives="auroc,trainable_parameters"))


# ----------------------------------------------------------------------------- a study shared by workers


def _initdb() -> Path | None:
    found = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None) or shutil.which("initdb")
    return Path(found) if found else None


@pytest.fixture
def postgres_url():
    """A private PostgreSQL cluster on 127.0.0.1 (Debian's postgresql, which .ci/run installs), torn down after."""
    import tempfile

    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[tune]'")
    root = Path(tempfile.mkdtemp(prefix="hf-adapt-postgres-"))  # outside pytest's folder, which only root may enter
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres system user
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = initdb.parent
    subprocess.run([*as_user, str(initdb), "-D", str(root / "data"), "-A", "trust", "-U", "tuner"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                    f"-k {root} -c listen_addresses=127.0.0.1 -p {port}", "start"], check=True, capture_output=True)
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="tuner", dbname="postgres", autocommit=True) as db:
            db.execute("CREATE DATABASE hf_adapt")
        yield f"postgresql://tuner@127.0.0.1:{port}/hf_adapt"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores
@pytest.mark.timeout(600)
def test_two_workers_share_one_postgresql_study(tiny_bert, credit_sample, tmp_path, postgres_url):
    base = _base(tmp_path, tiny_bert, credit_sample, num_train_epochs=1)
    command = [sys.executable, "-m", "hf_adapt.cli", "tune", "--config", str(base), "--storage", postgres_url,
               "--n_trials", "6", "--pruner", "none", "--retrain", "false"]
    workers = [subprocess.Popen([*command, "--output_dir", str(tmp_path / f"worker-{i}")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [worker.communicate(timeout=540)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    assert all("trial " in log and "finished" in log for log in logs), "a worker ran no trial"
    study = optuna.load_study(study_name="hf-adapt", storage=postgres_url)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))) and 6 <= len(numbers) <= 7  # each worker checks the count first
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    ran = [line for log in logs for line in log.splitlines() if " hf_adapt.tune: trial " in line]
    assert sorted(int(line.split(" trial ")[1].split()[0]) for line in ran) == numbers  # each trial ran once


def test_several_objectives_search_the_pareto_front(tiny_bert, credit_sample, tmp_path):
    base = _base(tmp_path, tiny_bert, credit_sample, num_train_epochs=1)
    facts = tune(TuneSettings(config=str(base), n_trials=3, output_dir=str(tmp_path / "tune"), sampler="nsga2",
                              pruner="none", objectives="auroc,trainable_parameters"))
    assert facts["trials"]["complete"] == 3 and len(facts["best_values"]) == 2
    study = optuna.load_study(study_name="hf-adapt", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    assert facts["best_trial"] in {t.number for t in study.best_trials}
