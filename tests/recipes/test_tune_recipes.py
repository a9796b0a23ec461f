"""``hf-adapt tune`` over the continual and feedback recipes: each trial trains without the data the retrained
model is tested on (continual: every experience's test rows; feedback: the held-out prompts), the best config is
retrained once, and the card records the search."""

from __future__ import annotations

import json

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed: pip install -e '.[tune]'")

from hf_adapt.config import config_from_dict  # noqa: E402
from hf_adapt.loop import Callback  # noqa: E402
from hf_adapt.recipes import continual, feedback  # noqa: E402
from hf_adapt.recipes.tune import TuneSettings, run, tune  # noqa: E402
from tests.feedback.conftest import product_feedback, write_log  # noqa: E402

STREAM = [{"name": "ab", "classes": [0, 1]}, {"name": "cd", "classes": [2, 3]}]


def _continual_base(tmp_path, block_resnet, blocks_csv, **values) -> dict:
    return {"model_name_or_path": str(block_resnet), "family": "timm", "reset_head": True, "image_size": 32,
            "data": str(blocks_csv), "label_column": "label", "feature_columns": [f"p{i}" for i in range(100)],
            "text_template": None, "pixel_shape": [10, 10], "validation_size": 0.2, "test_size": 0.25,
            "experiences": STREAM, "regime": "full", "num_train_epochs": 1, "per_device_train_batch_size": 16,
            "learning_rate": 3e-3, "warmup_ratio": 0.0, "report_to": "none", "torch_num_threads": 1,
            "base_model_id": None, "output_dir": str(tmp_path / "run"), **values}


class Seen(Callback):
    def __init__(self):
        self.steps = []

    def on_epoch_end(self, epoch, metrics):
        self.steps.append((epoch, metrics))


def test_a_continual_trial_scores_validation_rows_and_reports_each_experience(block_resnet, blocks_csv, tmp_path,
                                                                             monkeypatch):
    splits = []
    evaluate_all = continual._evaluate_all
    monkeypatch.setattr(continual, "_evaluate_all", lambda *a, **k: splits.append(a[-1]) or evaluate_all(*a, **k))
    cfg = config_from_dict(continual.ContinualConfig, _continual_base(tmp_path, block_resnet, blocks_csv))
    seen = Seen()
    result = continual.validate(cfg, [seen])
    assert splits == ["validation"] * 3  # before, after ab, after cd: never a test row
    assert [step for step, _ in seen.steps] == [1, 2] and all(0 <= m["continual_average"] <= 1 for _, m in seen.steps)
    assert seen.steps[-1][1]["continual_average"] == pytest.approx(result.metrics["continual_average"])
    assert result.metrics["average_forgetting"] >= 0 and result.trainable_parameters > 0
    assert not (tmp_path / "run").exists()  # a trial writes nothing


def test_a_continual_search_retrains_the_best_stream_and_tests_it_once(block_resnet, blocks_csv, tmp_path):
    base = _continual_base(tmp_path, block_resnet, blocks_csv, search={
        "learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-2},
        "strategy": {"distribution": "categorical", "choices": ["naive", "replay"]},
        "strategy_options.buffer_size": {"distribution": "int", "low": 8, "high": 32, "when": {"strategy": "replay"}}})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "tune"
    facts = tune(TuneSettings(config=str(tmp_path / "base.yaml"), recipe="continual", n_trials=2,
                              output_dir=str(out), pruner="none"))
    assert facts["objectives"] == ["continual_average"] and facts["trials"]["complete"] == 2
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["strategy"] == facts["best_params"]["strategy"]
    config_from_dict(continual.ContinualConfig, best)  # reruns with hf-adapt continual --config
    card = (out / "best" / "README.md").read_text()
    assert "## Hyperparameter search" in card and "every experience's validation rows" in card
    tested = json.loads((out / "best" / "continual_results.json").read_text())["test_metrics"]
    assert json.loads((out / "tune_results.json").read_text())["test_metrics"] == tested


@pytest.mark.timeout(600)
def test_a_feedback_search_never_scores_the_held_out_prompts(tiny_chat_llama, tmp_path, monkeypatch):
    log = write_log(tmp_path / "chat.jsonl", product_feedback(range(10), conversational=True))
    scored = []
    evaluate_round = feedback.evaluate_round

    def spy(cfg, model, tokenizer, held_out, *args):
        scored.append({json.dumps(p) for p in held_out["prompts"]})
        return evaluate_round(cfg, model, tokenizer, held_out, *args)

    monkeypatch.setattr(feedback, "evaluate_round", spy)
    base = {"model_name_or_path": str(tiny_chat_llama), "feedback": str(log), "trainer": "dpo", "max_steps": 2,
            "max_length": 64, "torch_num_threads": 1, "adapter": {"peft_type": "LORA", "r": 4, "lora_alpha": 8},
            "max_new_tokens": 4, "search": {"learning_rate": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-2},
                                            "trainer_args.beta": {"distribution": "categorical", "choices": [0.1, 0.5]}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "tune"
    assert run(["--recipe", "feedback", "--config", str(tmp_path / "base.yaml"), "--n_trials", "2",
                "--output_dir", str(out)]) == 0
    assert len(scored) == 3 and scored[0] == scored[1]  # two trials on one validation split, then the retrain
    assert not scored[0] & scored[2], "a trial scored a held-out prompt"
    results = json.loads((out / "tune_results.json").read_text())
    assert results["objectives"] == ["win_rate"] and results["trials"]["complete"] == 2
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["trainer_args"]["beta"] == results["best_params"]["trainer_args.beta"]
    assert config_from_dict(feedback.FeedbackConfig, best).trainer_args["beta"] in (0.1, 0.5)
    card = (out / "best" / "README.md").read_text()
    assert "## Hyperparameter search" in card and "`trainer_args.beta`" in card
