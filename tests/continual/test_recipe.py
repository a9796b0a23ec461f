"""The continual recipe end to end on synthetic, separable images (``blocks_csv``) with a tiny random ResNet
(``block_resnet``), both from conftest. Naive fine-tuning must forget, replay and joint must forget less, the matrix
must have the right shape, undefined cells and values, and the release gate must trip.
"""

from __future__ import annotations

import json

import pytest
import torch

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError, DataError
from hf_adapt.recipes.continual import ContinualConfig, ReleaseGateError, main

SPLIT = [{"name": "ab", "classes": [0, 1]}, {"name": "cd", "classes": [2, 3]}, {"name": "ef", "classes": [4, 5]}]


def _config(tmp_path, block_resnet, data, name="run", **values) -> ContinualConfig:
    defaults = dict(
        model_name_or_path=str(block_resnet), family="timm", reset_head=True, image_size=32, data=str(data),
        label_column="label", feature_columns=[f"p{i}" for i in range(100)], text_template=None, pixel_shape=[10, 10],
        validation_size=0.2, test_size=0.25, experiences=SPLIT, regime="full", num_train_epochs=3,
        per_device_train_batch_size=16, learning_rate=3e-3, head_learning_rate=3e-3, warmup_ratio=0.0,
        report_to="none", torch_num_threads=1, output_dir=str(tmp_path / name), base_model_id=None,
    )
    return config_from_dict(ContinualConfig, {**defaults, **values})


@pytest.fixture(scope="module")
def naive_run(block_resnet, blocks_csv, tmp_path_factory):
    return main(_config(tmp_path_factory.mktemp("naive"), block_resnet, blocks_csv))


def test_naive_forgets_and_the_matrix_has_the_right_shape(naive_run):
    results = naive_run.results
    matrix = results["matrix"]
    assert results["rows"] == ["before", "ab", "cd", "ef"]
    assert len(matrix) == 4 and all(len(row) == 3 for row in matrix)
    # class-incremental: an experience's column is undefined until the head knows its classes
    assert [[v is None for v in row] for row in matrix] == [
        [False, True, True], [False, True, True], [False, False, True], [False, False, False]]
    assert all(matrix[i + 1][i] >= 0.9 for i in range(3)), matrix  # each experience is learnt
    assert results["summary"]["average_forgetting"] > 0.5, matrix  # and naive fine-tuning forgets it
    assert results["summary"]["backward_transfer"] < -0.5
    assert results["summary"]["forward_transfer"] is None
    assert results["labels"] == ["0", "1", "2", "3", "4", "5"]  # the label map grew by two per experience


def test_outputs_card_and_reload(naive_run):
    out = naive_run.output_dir
    for name in ("continual_results.json", "continual_matrix.png", "eval_results.json", "README.md", "model.safetensors"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "| after \\ on | ab | cd | ef |" in card
    assert "## Continual evaluation" in card
    evals = json.loads((out / "eval_results.json").read_text())
    assert evals["continual_average_accuracy"] == pytest.approx(naive_run.results["summary"]["average"])
    predictor = hf_adapt.load_adapted(str(out))
    assert predictor.labels == ["0", "1", "2", "3", "4", "5"]
    x = torch.zeros(1, 10, 10).numpy()
    model = naive_run.model.eval()
    batch = naive_run.backbone.preprocessor.collate([predictor._to_input(x[0])], train=False)
    with torch.no_grad():
        torch.testing.assert_close(predictor.logits(x[0]), naive_run.backbone.logits(model, batch))


@pytest.mark.parametrize("strategy, options", [("replay", {"buffer_size": 24}), ("joint", None)])
def test_replay_and_joint_forget_less_than_naive(strategy, options, naive_run, block_resnet, blocks_csv, tmp_path):
    run = main(_config(tmp_path, block_resnet, blocks_csv, strategy=strategy, strategy_options=options))
    naive = naive_run.results["summary"]
    summary = run.results["summary"]
    assert summary["average_forgetting"] < naive["average_forgetting"] - 0.2, (summary, naive)
    assert summary["average"] > naive["average"] + 0.2


def test_gate_trips_writes_outputs_and_refuses_to_push(block_resnet, blocks_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_gate_test")
    cfg = _config(tmp_path, block_resnet, blocks_csv, experiences=SPLIT[:2], max_forgetting=0.05,
                  push_to_hub=True, hub_model_id="hf-adapt-tests/never-pushed", base_model_id="timm/mobilenetv2_035.ra_in1k")
    with pytest.raises(ReleaseGateError, match=r"ab lost \d\.\d{4} accuracy \(\d\.\d{4} after ab -> \d\.\d{4} now\)") as err:
        main(cfg)
    assert "not pushed" in str(err.value)
    results = json.loads((tmp_path / "run" / "continual_results.json").read_text())
    assert results["gate"]["passed"] is False
    assert results["gate"]["regressions"][0]["experience"] == "ab"
    assert "**failed**" in (tmp_path / "run" / "README.md").read_text()
    # and `hf-adapt push` refuses it later too, before any request
    from hf_adapt.errors import HubError
    from hf_adapt.hub import PushSettings, push_output

    with pytest.raises(HubError, match="failed its release gate"):
        push_output(tmp_path / "run", PushSettings(repo_id="hf-adapt-tests/never-pushed"))


def test_gate_failure_exits_two_from_the_command_line(block_resnet, blocks_csv, tmp_path, capsys):
    from hf_adapt.cli import main as cli

    cfg = _config(tmp_path, block_resnet, blocks_csv)
    (tmp_path / "c.yaml").write_text(json.dumps({k: getattr(cfg, k) for k in (
        "model_name_or_path", "family", "reset_head", "image_size", "data", "label_column", "feature_columns",
        "text_template", "pixel_shape", "validation_size", "test_size", "regime", "report_to", "torch_num_threads")}))
    code = cli(["continual", "--config", str(tmp_path / "c.yaml"), "--experiences", json.dumps(SPLIT[:2]),
                "--num_train_epochs", "3", "--max_forgetting", "0.01", "--output_dir", str(tmp_path / "cli")])
    assert code == 2
    assert "release gate failed" in capsys.readouterr().err
    assert (tmp_path / "cli" / "continual_results.json").is_file()


def test_domain_incremental_keeps_the_head_and_measures_forward_transfer(block_resnet, blocks_csv, tmp_path):
    sites = [{"name": f"site{i}", "where": {"site": [f"site{i}"]}} for i in range(3)]
    run = main(_config(tmp_path, block_resnet, blocks_csv, scenario="domain", experiences=sites,
                       num_train_epochs=2))
    matrix = run.results["matrix"]
    assert all(v is not None for row in matrix for v in row)  # one label space: every cell is defined
    assert run.results["labels"] == [str(i) for i in range(8)]
    assert run.results["summary"]["forward_transfer"] is not None
    # each site's rows come from the one stratified split of the source: 25 % of 960 rows are test rows
    assert sum(e["rows"]["test"] for e in run.results["experiences"]) == 240


def test_task_incremental_predicts_within_the_task(block_resnet, blocks_csv, tmp_path):
    run = main(_config(tmp_path, block_resnet, blocks_csv, scenario="task", num_train_epochs=2,
                       dicom_window=[40.0, 400.0]))  # pixel rows ignore it; a reload must still read it
    matrix = run.results["matrix"]
    # with the task id known, old tasks only compete with their own two classes: far less forgetting
    assert run.results["summary"]["average"] > 0.8, matrix
    record = json.loads((run.output_dir / "hf_adapt.json").read_text())
    info = record["continual"]
    assert info["scenario"] == "task" and info["tasks"]["cd"] == {"task": 1, "classes": [2, 3]}
    # images reload as training read them: the DICOM window and the volume reading are in the record
    assert {k: record["data"][k] for k in ("dicom_window", "volume_slice", "volume_context")} == {
        "dicom_window": [40.0, 400.0], "volume_slice": "middle", "volume_context": 0}


@pytest.mark.parametrize("values, error, message", [
    ({"scenario": "domain", "experiences": [{"name": "a", "classes": [0, 1]}, {"name": "b", "classes": [2, 3]}]},
     ConfigError, r"labels \['2', '3'\] disjoint from those of experience 'a'"),
    ({"strategy": "replay", "strategy_options": {"buffer_size": 0}}, ConfigError, "buffer_size >= 1"),
    ({"strategy": "adapter_per_experience", "strategy_options": {"routing": "task_id"}, "regime": "adapter"},
     ConfigError, "task id at test time"),
    ({"strategy": "adapter_per_experience"}, ConfigError, "needs regime: adapter"),
    ({"experiences": [{"name": "a", "classes": [0, 9]}]}, DataError, r"classes \['9'\] are not labels"),
    ({"experiences": [{"name": "a", "where": {"scanner": ["x"]}}]}, DataError, "column 'scanner'"),
    ({"experiences": [{"name": "a", "where": {"site": ["site9"]}}]}, DataError, "no train rows"),
    ({"experiences": [{"name": "a", "classes": [0]}, {"name": "a", "classes": [1]}]}, ConfigError, "used twice"),
    ({"experiences": [{"name": "a", "clases": [0]}]}, ConfigError, r"unknown key\(s\) \['clases'\]"),
    ({"experiences": []}, ConfigError, "at least one experience"),
    ({"experiences": None}, ConfigError, "experiences: not set"),
    ({"strategy": "magic"}, ConfigError, "strategy 'magic' is not one of"),
])
def test_bad_input_fails_before_training(values, error, message, block_resnet, blocks_csv, tmp_path):
    with pytest.raises(error, match=message):
        main(_config(tmp_path, block_resnet, blocks_csv, **values))
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".run.partial-*"))
