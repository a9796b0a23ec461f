"""hf_adapt.tune: a search space is checked before the first trial (names, distributions, ranges, conditions), samples
conditional fields only where their condition holds, and pruning stops a trial the pruner gives up on."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed: pip install -e '.[tune]'")

from hf_adapt.errors import ConfigError  # noqa: E402
from hf_adapt.recipes.finetune import FinetuneConfig  # noqa: E402
from hf_adapt.tune.space import SearchSpace  # noqa: E402
from hf_adapt.tune.study import Pruning, check_choices  # noqa: E402

SPACE = {
    "learning_rate": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-2},
    "regime": {"distribution": "categorical", "choices": ["adapter", "linear_probe"]},
    "adapter.r": {"distribution": "int", "low": 4, "high": 16, "step": 4, "when": {"regime": "adapter"}},
    "adapter.lora_dropout": {"distribution": "uniform", "low": 0.0, "high": 0.3, "when": {"regime": ["adapter"]}},
}


@pytest.mark.parametrize("raw, message", [
    ({"learning_rte": {"distribution": "uniform", "low": 0.1, "high": 0.2}}, "not a field"),
    ({"learning_rate": {"distribution": "uniform", "low": 0.2, "high": 0.2}}, "range is empty"),
    ({"learning_rate": {"distribution": "normal", "low": 0.1, "high": 0.2}}, "distribution must be one of"),
    ({"learning_rate": {"distribution": "log_uniform", "low": 0.0, "high": 0.2}}, "log_uniform needs low > 0"),
    ({"regime": {"distribution": "categorical", "choices": []}}, "non-empty list of choices"),
    ({"num_train_epochs": {"distribution": "int", "low": 1.5, "high": 3}}, "whole low and high"),
    ({"learning_rate": {"distribution": "uniform", "low": 0.1, "high": 0.2, "colour": 1}}, "unknown key"),
    ({"learning_rate": {"distribution": "uniform", "low": "a", "high": 0.2}}, "finite numbers"),
    ({"adapter.r": {"distribution": "int", "low": 4, "high": 8, "when": {"adapter.lora_dropout": 0.1}},
      "adapter.lora_dropout": {"distribution": "uniform", "low": 0, "high": 0.2, "when": {"regime": "adapter"}}},
     "not other conditioned ones"),
    ({}, "non-empty mapping"),
])
def test_a_bad_space_is_refused_naming_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.parse(raw, FinetuneConfig)


def test_conditional_fields_are_sampled_only_where_their_condition_holds():
    space = SearchSpace.parse(SPACE, FinetuneConfig)
    assert space.names[:2] == ["learning_rate", "regime"]  # the unconditioned first
    base = {"adapter": {"peft_type": "LORA", "r": 8, "lora_alpha": 16}}
    probe = space.sample(optuna.trial.FixedTrial({"learning_rate": 1e-3, "regime": "linear_probe"}), base)
    assert probe == {**base, "learning_rate": 1e-3, "regime": "linear_probe"}
    lora = space.sample(optuna.trial.FixedTrial({"learning_rate": 1e-3, "regime": "adapter", "adapter.r": 12,
                                                 "adapter.lora_dropout": 0.1}), base)
    assert lora["adapter"] == {"peft_type": "LORA", "r": 12, "lora_alpha": 16, "lora_dropout": 0.1}
    edges = {(name, value) for name, value, _ in space.edge_configs(base)}
    assert ("adapter.r", 4) in edges and ("regime", "linear_probe") in edges


def test_choices_and_objectives_are_checked():
    metrics = ("accuracy", "auroc", "log_loss")
    check_choices("tpe", "median", ["auroc"], metrics)
    check_choices("nsga2", "none", ["auroc", "trainable_parameters"], metrics)
    for args, message in ((("grid", "median", ["auroc"]), "sampler"), (("tpe", "asha", ["auroc"]), "pruner"),
                          (("tpe", "median", ["seconds"]), "first objective"),
                          (("tpe", "median", ["auroc", "seconds"]), "single-objective"),
                          (("tpe", "none", ["auroc", "auroc"]), "distinct")):
        with pytest.raises(ConfigError, match=message):
            check_choices(*args, metrics)


def test_pruning_stops_a_trial_that_falls_behind():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1,
                                                                                         n_warmup_steps=0))
    good = study.ask()
    for epoch in (1, 2):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    ahead, behind = study.ask(), study.ask()
    Pruning(ahead, "auroc").on_epoch_end(1, {"auroc": 0.95})  # goes on
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        Pruning(behind, "auroc").on_epoch_end(1, {"auroc": 0.5})


def test_a_condition_reads_the_config_defaults_where_the_base_is_silent():
    space = SearchSpace.parse({"adapter.r": {"distribution": "int", "low": 4, "high": 8, "when": {"regime": "adapter"}}},
                              FinetuneConfig)
    values = space.sample(optuna.trial.FixedTrial({"adapter.r": 6}), {})  # regime left at its default: adapter
    assert values["adapter"]["r"] == 6
