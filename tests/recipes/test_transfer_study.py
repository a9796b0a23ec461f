"""The transfer_study recipe: a grid of arms x label budgets over finetune runs, its tables and curve."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError, DataError, OutputError
from hf_adapt.recipes.transfer_study import (
    KEEP_FILES,
    TransferStudyConfig,
    main,
    plan,
    results_markdown,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]


def _finetune(tiny_bert, credit_sample, **overrides) -> dict:
    """What every cell shares: the tiny BERT on 200 German Credit rows, a few quick steps."""
    return {"model_name_or_path": str(tiny_bert), "base_model_id": "hf-adapt-tests/tiny-bert",
            "data": str(credit_sample), "num_train_epochs": 1, "per_device_train_batch_size": 8,
            "learning_rate": 5e-3, "report_to": "none", "torch_num_threads": 1, **overrides}


def _study(tiny_bert, credit_sample, output_dir, **values) -> TransferStudyConfig:
    return config_from_dict(TransferStudyConfig, {
        "finetune": _finetune(tiny_bert, credit_sample), "output_dir": str(output_dir), **values})


@pytest.fixture(scope="module")
def study(tiny_bert, credit_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = _study(tiny_bert, credit_sample, root / "study", budgets=[5, 1.0],
                 arms=["linear_probe", {"name": "lora_r4", "regime": "adapter",
                                        "adapter": {"peft_type": "LORA", "r": 4, "lora_alpha": 8}}])
    return cfg, main(cfg)


def test_study_writes_every_result_file(study):
    from PIL import Image

    cfg, result = study
    out = Path(cfg.output_dir)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["arm"], r["budget"], r["seed"]) for r in rows] == [
        ("linear_probe", "5", "42"), ("linear_probe", "1.0", "42"), ("lora_r4", "5", "42"), ("lora_r4", "1.0", "42")]
    for row in rows:
        metrics = json.loads((Path(row["output_dir"]) / "eval_results.json").read_text())
        assert float(row["score"]) == pytest.approx(metrics["accuracy"]) == pytest.approx(float(row["accuracy"]))
        assert {"macro_f1", "auroc", "log_loss", "ece", "train_seconds"} <= set(row)
        assert float(row["train_seconds"]) > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(result.rows))
    assert set(saved["summary"]["arms"]) == {"linear_probe", "lora_r4"}
    markdown = (out / "results.md").read_text()
    assert "| arm | 5/class (10 labels) | 100% (" in markdown
    assert markdown.count("\n| linear_probe |") == 2 and markdown.count("\n| lora_r4 |") == 2  # scores, times
    with Image.open(out / "transfer_curve.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 300
    assert (out / "transfer_curve.png").stat().st_size > 10_000
    assert config_from_dict(TransferStudyConfig, yaml.safe_load((out / "config.yaml").read_text())) == cfg
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "staging left behind"


def test_labels_are_the_budget_times_the_classes(study):
    _, result = study
    small, full = (json.loads((Path(r["output_dir"]) / "train_results.json").read_text())["data"]
                   for r in result.rows[:2])
    assert small["label_counts"]["train"] == {"bad": 5, "good": 5}
    everything = sum(full["label_counts"]["train"].values())
    assert everything == full["splits"]["train"] > 100  # 1.0 = every training row of the 200-row sample
    assert [r["labels"] for r in result.rows] == [10, everything, 10, everything]


def test_scored_runs_keep_only_their_scores(study):
    _, result = study
    for row in result.rows:
        assert sorted(p.name for p in Path(row["output_dir"]).iterdir()) == sorted(KEEP_FILES)


def test_rerun_needs_overwrite_and_drops_runs_of_the_old_grid(study, tmp_path):
    cfg, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(cfg.output_dir, copy)
    again = config_from_dict(TransferStudyConfig, {**vars(cfg), "output_dir": str(copy), "arms": ["linear_probe"],
                                                   "budgets": [5]})
    with pytest.raises(OutputError, match="already holds a different hf-adapt run"):
        main(again)
    result = main(config_from_dict(TransferStudyConfig, {**vars(again), "overwrite_output_dir": True}))
    assert [r["arm"] for r in result.rows] == ["linear_probe"]
    assert sorted(str(p.relative_to(copy / "runs")) for p in (copy / "runs").glob("*/*/*")) == ["linear_probe/5/seed42"]


def test_summary_means_stds_and_labels_to_reach_95_percent():
    scores = {("adapter", 5): (0.80, 0.84), ("adapter", 20): (0.90, 0.92), ("adapter", 1.0): (0.95, 0.95),
              ("full", 5): (0.50, 0.50), ("full", 20): (0.70, 0.74), ("full", 1.0): (0.96, 0.94)}
    labels = {5: 10, 20: 40, 1.0: 385}
    rows = [{"arm": arm, "budget": budget, "labels": labels[budget], "seed": seed, "score": score,
             "train_seconds": 1.0} for (arm, budget), pair in scores.items() for seed, score in zip((1, 2), pair)]
    summary = summarise(rows, "accuracy")
    adapter, full = summary["arms"]["adapter"], summary["arms"]["full"]
    assert adapter["cells"]["5"]["mean"] == pytest.approx(0.82)
    assert adapter["cells"]["5"]["std"] == pytest.approx(math.sqrt(2) * 0.02)
    # 0.95 x 0.95 = 0.9025: 40 labels (0.91) reach it, 10 labels (0.82) do not
    assert (adapter["target"], adapter["reach_labels"], adapter["reach_budget"]) == (pytest.approx(0.9025), 40, 20)
    assert (full["reach_labels"], full["reach_budget"]) == (385, 1.0)
    markdown = results_markdown(summary)
    assert "| adapter | 0.820 ± 0.028 | 0.910 ± 0.014 | 0.950 ± 0.000 | 40 (20/class) |" in markdown
    lower = summarise([{**r, "score": 1 - r["score"]} for r in rows], "log_loss")
    # lower is better: the target is 0.05 / 0.95 = 0.0526, which 40 labels (0.09) miss
    assert lower["higher_is_better"] is False
    assert (lower["arms"]["adapter"]["target"], lower["arms"]["adapter"]["reach_labels"]) == (pytest.approx(0.05 / 0.95), 385)


def test_finetune_yaml_then_dict_then_arm_overrides(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": 1e-4, "num_train_epochs": 7, "output_dir": "outputs/x",
                                    "seed": 3}))
    cfg = config_from_dict(TransferStudyConfig, {
        "finetune_config": str(path), "finetune": {"learning_rate": 2e-4}, "budgets": [8, 0.5],
        "arms": ["linear_probe", {"name": "scratch", "regime": "full", "pretrained": False, "num_train_epochs": 2}],
        "output_dir": str(tmp_path / "s")})
    cells = {(c.arm, c.budget): c.config for c in plan(cfg)}
    assert cells["linear_probe", 8].learning_rate == 2e-4 and cells["linear_probe", 8].num_train_epochs == 7
    assert cells["scratch", 0.5].num_train_epochs == 2 and cells["scratch", 0.5].pretrained is False
    assert (cells["scratch", 0.5].train_fraction, cells["scratch", 0.5].train_samples_per_class) == (0.5, None)
    assert (cells["linear_probe", 8].train_fraction, cells["linear_probe", 8].train_samples_per_class) == (None, 8)
    assert cells["linear_probe", 8].seed == 42
    assert cells["linear_probe", 8].output_dir == str(tmp_path / "s" / "runs" / "linear_probe" / "8" / "seed42")


def test_budget_overrides_apply_to_their_budget_only(tmp_path):
    cfg = config_from_dict(TransferStudyConfig, {
        "budgets": [1, 1.0], "budget_overrides": {1: {"num_train_epochs": 30}, "1.0": {"max_steps": 9}},
        "arms": ["adapter", {"name": "slow", "regime": "full", "learning_rate": 1e-5}], "output_dir": str(tmp_path)})
    cells = {(c.arm, str(c.budget)): c.config for c in plan(cfg)}
    assert [cells["slow", "1"].num_train_epochs, cells["slow", "1"].max_steps] == [30, -1]
    assert [cells["adapter", "1.0"].num_train_epochs, cells["adapter", "1.0"].max_steps] == [3, 9]
    assert cells["slow", "1.0"].learning_rate == 1e-5


@pytest.mark.parametrize("values, error", [
    ({"budget_overrides": {7: {"num_train_epochs": 2}}}, "budget_overrides: 7 is not one of the budgets"),
    ({"budget_overrides": {5: {"epochs": 2}}}, r"budget_overrides\[5\]: unknown key\(s\) \['epochs'\]"),
    ({"budget_overrides": {5: {"num_train_epochs": 2}}, "arms": [{"name": "a", "num_train_epochs": 1}]},
     r"budget_overrides\[5\]: \['num_train_epochs'\] set by arm 'a' too"),
    ({"arms": ["adapter", {"name": "broken", "learning_rat": 1e-3}]}, r"arm 'broken': unknown key\(s\) \['learning_rat'\]"),
    ({"arms": [{"name": "scratch_lora", "pretrained": False}]}, "arm 'scratch_lora', budget 5/class, seed 42: pretrained: false needs regime: full"),
    ({"arms": ["lora"]}, r"arms\[0\]: 'lora' is not a regime"),
    ({"arms": [{"regime": "full"}]}, r"arms\[0\]: needs a name"),
    ({"arms": ["full", "full"]}, "names must be unique"),
    ({"finetune": {"seed": 3}}, r"finetune: \['seed'\] are set by the study"),
    ({"budgets": [5, 1.5]}, r"share 1.5 must be in \(0, 1\]"),
    ({"budgets": [0]}, "need at least 1"),
    ({"seeds": []}, "seeds: a non-empty list"),
])
def test_bad_study_configs_fail_before_any_training(values, error, tmp_path):
    with pytest.raises(ConfigError, match=error):
        config_from_dict(TransferStudyConfig, {"output_dir": str(tmp_path / "s"), **values})
    assert list(tmp_path.iterdir()) == []


def test_a_budget_larger_than_a_class_fails_before_training(tiny_bert, credit_sample, tmp_path):
    cfg = _study(tiny_bert, credit_sample, tmp_path / "s", budgets=[5, 50, 1.0], arms=["linear_probe"])
    with pytest.raises(DataError, match=r"budgets: 50/class .*larger than the \d+ training rows of class 'bad'"):
        main(cfg)
    assert list(tmp_path.iterdir()) == []


def test_output_dir_of_something_else_is_refused(tiny_bert, credit_sample, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("keep me")
    cfg = _study(tiny_bert, credit_sample, tmp_path / "s", overwrite_output_dir=True, budgets=[5])
    with pytest.raises(OutputError, match="not an hf-adapt run"):
        main(cfg)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["notes.txt"]


def test_cli_runs_a_study_and_reports_bad_input_in_one_line(tiny_bert, credit_sample, tmp_path, capsys):
    from hf_adapt.cli import main as cli_main

    finetune = json.dumps(_finetune(tiny_bert, credit_sample))
    out = tmp_path / "cli"
    code = cli_main(["transfer_study", "--finetune", finetune, "--arms", "[linear_probe]", "--budgets", "[4]",
                     "--output_dir", str(out), "--keep_models"])
    assert code == 0
    assert (out / "runs" / "linear_probe" / "4" / "seed42" / "head.safetensors").is_file()  # keep_models
    assert "| linear_probe |" in (out / "results.md").read_text()
    code = cli_main(["transfer_study", "--finetune", finetune, "--arms", "[{name: x, regime: full, lr: 1}]",
                     "--output_dir", str(tmp_path / "bad")])
    assert code == 2
    assert "hf-adapt transfer_study: error: arm 'x': unknown key(s) ['lr']" in capsys.readouterr().err


@pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_two_processes_run_every_cell_and_write_the_study_once(tiny_bert, credit_sample, tmp_path):
    """Two cells in one 2-process launch: the second finetune run must find the process group alive."""
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(REPO / "recipes" / "transfer_study.py"), "--finetune", json.dumps(_finetune(tiny_bert, credit_sample)),
        "--arms", "[linear_probe, adapter]", "--budgets", "[5]", "--output_dir", str(out),
    ]
    # teardown of gloo groups has hung before: a hard timeout keeps CI from stalling
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["arm"], r["labels"]) for r in rows] == [("linear_probe", "10"), ("adapter", "10")]
    for row in rows:
        assert json.loads((Path(row["output_dir"]) / "train_results.json").read_text())["num_processes"] == 2
    assert sorted(p.name for p in tmp_path.rglob(".*")) == [], "staging dirs left by a rank"


def test_study_dir_refuses_other_runs_and_resumes_an_unfinished_study(tmp_path):
    from hf_adapt.outputs import write_json
    from hf_adapt.recipes.transfer_study import check_study_dir

    finetuned = tmp_path / "finetuned"
    finetuned.mkdir()
    write_json(finetuned / "hf_adapt.json", {"recipe": "finetune"})
    with pytest.raises(OutputError, match="holds an hf-adapt finetune run, not a transfer study"):
        check_study_dir(finetuned, overwrite=True)
    unfinished = tmp_path / "unfinished"
    (unfinished / "runs" / "adapter").mkdir(parents=True)
    with pytest.raises(OutputError, match="unfinished transfer study"):
        check_study_dir(unfinished, overwrite=False)
    check_study_dir(unfinished, overwrite=True)
    check_study_dir(tmp_path / "new", overwrite=False)
