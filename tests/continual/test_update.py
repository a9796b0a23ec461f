"""Strategy state survives save and reload, the saved model reproduces the reported matrix, and a new
version continues a served one (init_from): old versus new on the parent's own test data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.continual import make_strategy
from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.recipes.continual import STATE_FILE, STATE_TENSORS, main
from hf_adapt.recipes.finetune import FinetuneConfig
from hf_adapt.recipes.finetune import main as finetune
from tests.continual.test_recipe import SPLIT, _config

LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}


@pytest.fixture(scope="module", params=[("replay", {"buffer_size": 16}), ("ewc", {"fisher_samples": 16}),
                                        ("lwf", None), ("adapter_per_experience", None)],
                ids=lambda p: p[0])
def lora_run(request, block_resnet, blocks_csv, tmp_path_factory):
    strategy, options = request.param
    cfg = _config(tmp_path_factory.mktemp(strategy), block_resnet, blocks_csv, experiences=SPLIT[:2], regime="adapter",
                  adapter=LORA, strategy=strategy, strategy_options=options, num_train_epochs=2)
    return main(cfg)


def test_state_survives_save_and_reload(lora_run):
    out = lora_run.output_dir
    saved = json.loads((out / STATE_FILE).read_text())
    tensors = {}
    if (out / STATE_TENSORS).is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(out / STATE_TENSORS))
    strategy = make_strategy(lora_run.strategy.name)
    strategy.load_state(saved["state"], tensors)
    facts, again = strategy.state()
    original_facts, original = lora_run.strategy.state()
    assert json.loads(json.dumps(facts)) == json.loads(json.dumps(original_facts))
    assert set(again) == set(original)
    for name in original:
        torch.testing.assert_close(again[name], original[name])
    if lora_run.strategy.name == "ewc":
        # (the residual branches of a random timm ResNet are dead: zero-initialised last BatchNorm)
        fisher = {k: t for k, t in original.items() if k.startswith("fisher/")}
        assert all(fisher[k].abs().sum() > 0 for k in fisher if ".fc." in k or "downsample" in k)
    if lora_run.strategy.name == "replay":
        assert len(facts["buffer"]) == 16


def test_saved_model_reproduces_the_reported_matrix(lora_run, blocks_csv):
    predictor = hf_adapt.load_adapted(str(lora_run.output_dir))
    results = lora_run.results
    info = json.loads((lora_run.output_dir / "hf_adapt.json").read_text())["continual"]
    if lora_run.strategy.name == "adapter_per_experience":
        assert set(info["adapters"].values()) == {"default", "exp1"}
        assert (lora_run.output_dir / "exp1" / "adapter_model.safetensors").is_file()
    for j, experience in enumerate(results["experiences"]):
        # the test rows the run scored: rebuild them from the source with the run's own split
        from hf_adapt.continual.experiences import load_experiences

        cfg = _config(lora_run.output_dir.parent, lora_run.output_dir, blocks_csv)
        names: list[str] = []
        (loaded,) = load_experiences(cfg, [{"name": experience["name"], **experience["data_config"]}], names, 0, 1)
        inputs = loaded.inputs("test", "image")
        labels = [names[c] for c in loaded.labels["test"]]
        predicted = [r["label"] for r in predictor.predict(inputs)]
        accuracy = float(np.mean([p == y for p, y in zip(predicted, labels)]))
        assert accuracy == pytest.approx(results["matrix"][-1][j]), experience["name"]


@pytest.fixture(scope="module")
def finetune_parent(block_resnet, blocks_csv, tmp_path_factory):
    """A served model: LoRA on classes 0-3 only, with the finetune recipe."""
    tmp = tmp_path_factory.mktemp("parent")
    frame = pd.read_csv(blocks_csv)
    frame[frame["label"] < 4].to_csv(tmp / "first_four.csv", index=False)
    base = _config(tmp, block_resnet, blocks_csv)
    values = {k: getattr(base, k) for k in ("model_name_or_path", "family", "reset_head", "image_size", "label_column",
                                             "feature_columns", "text_template", "pixel_shape", "validation_size",
                                             "test_size", "learning_rate", "head_learning_rate", "warmup_ratio",
                                             "per_device_train_batch_size", "report_to", "torch_num_threads")}
    cfg = config_from_dict(FinetuneConfig, {**values, "data": str(tmp / "first_four.csv"), "regime": "adapter",
                                            "adapter": LORA, "num_train_epochs": 3, "metric_for_best_model": "accuracy",
                                            "output_dir": str(tmp / "served-v1"), "card_examples": 0, "baseline": "none"})
    return finetune(cfg)


def test_update_adds_classes_and_reports_old_versus_new(finetune_parent, block_resnet, blocks_csv, tmp_path):
    cfg = _config(tmp_path, block_resnet, blocks_csv, init_from=str(finetune_parent.output_dir), regime="adapter",
                  adapter=LORA, experiences=[{"name": "new-classes", "classes": [4, 5]}], strategy="replay",
                  strategy_options={"buffer_size": 24}, output_dir=str(tmp_path / "served-v2"))
    update = main(cfg)
    results = update.results
    assert results["labels"] == ["0", "1", "2", "3", "4", "5"]
    assert [e["name"] for e in results["experiences"]] == ["served-v1", "new-classes"]
    assert results["experiences"][0]["learnt_in_this_run"] is False
    # row 0 is the parent on its own test split: exactly what the parent reported
    assert results["matrix"][0][0] == pytest.approx(finetune_parent.test_metrics["accuracy"])
    assert results["matrix"][0][1] is None  # the parent's head knew nothing of 4 and 5
    # replay drew its buffer from the parent's data: the new experience trained on 24 of the parent's rows too
    assert results["training"][0]["rows"] == results["experiences"][1]["rows"]["train"] + 24
    assert results["summary"]["forgetting"]["served-v1"] == pytest.approx(results["matrix"][0][0] - results["matrix"][1][0])
    card = (update.output_dir / "README.md").read_text()
    assert "This version succeeds the local output `served-v1`" in card
    assert "Old versus new on the parent's own test data:" in card
    assert f"| served-v1 | accuracy | {results['matrix'][0][0]:.4f} | {results['matrix'][-1][0]:.4f} |" in card
    info = json.loads((update.output_dir / "hf_adapt.json").read_text())
    assert info["continues"]["source"] == str(finetune_parent.output_dir)
    assert info["model"]["name_or_path"] == str(block_resnet)
    predictor = hf_adapt.load_adapted(str(update.output_dir))
    assert predictor.labels == results["labels"]

    # and a third version continues the second: its buffer (references to v1's rows) carries over
    cfg3 = _config(tmp_path, block_resnet, blocks_csv, init_from=str(update.output_dir), regime="adapter", adapter=LORA,
                   experiences=[{"name": "more", "classes": [6, 7]}], strategy="replay",
                   strategy_options={"buffer_size": 24}, output_dir=str(tmp_path / "served-v3"), num_train_epochs=1)
    third = main(cfg3)
    assert [e["name"] for e in third.results["experiences"]] == ["served-v1", "new-classes", "more"]
    assert third.results["matrix"][0][:2] == pytest.approx(results["matrix"][-1])
    names = {row[0] for row in third.strategy.buffer}
    assert names == {"served-v1", "new-classes", "more"}


def test_update_refuses_a_conflicting_label_map(finetune_parent, block_resnet, blocks_csv, tmp_path):
    cfg = _config(tmp_path, block_resnet, blocks_csv, init_from=str(finetune_parent.output_dir), regime="adapter",
                  adapter=LORA, scenario="domain", experiences=[{"name": "site-2", "where": {"site": ["site2"]}}])
    with pytest.raises(ConfigError, match=r"labels \['4', '5', '6', '7'\] not all in those of the parent model"):
        main(cfg)
    with pytest.raises(ConfigError, match="regime 'adapter'; an update continues its weights"):
        main(_config(tmp_path, block_resnet, blocks_csv, init_from=str(finetune_parent.output_dir), regime="full"))
    # the parent's source split another way could put its test rows into the new training rows
    source = finetune_parent.data.origin["source"]
    with pytest.raises(ConfigError, match="read the same data with different seed"):
        main(_config(tmp_path, block_resnet, source, init_from=str(finetune_parent.output_dir), regime="adapter",
                     adapter=LORA, seed=7, experiences=[{"name": "again", "classes": [0, 1]}]))
    assert not (tmp_path / "run").exists()


def test_task_incremental_model_needs_its_task_at_serving_time(block_resnet, blocks_csv, tmp_path):
    run = main(_config(tmp_path, block_resnet, blocks_csv, scenario="task", experiences=SPLIT[:2], num_train_epochs=2,
                       regime="adapter", adapter=LORA, strategy="adapter_per_experience"))
    predictor = hf_adapt.load_adapted(str(run.output_dir))
    image = np.zeros((10, 10), dtype=np.float32)
    with pytest.raises(ModelError, match="pass task="):
        predictor.predict(image)
    for task, allowed in (("ab", {"0", "1"}), ("cd", {"2", "3"})):
        probs = predictor.predict(image, task=task)[0]["probabilities"]
        assert {k for k, v in probs.items() if v > 1e-6} <= allowed
