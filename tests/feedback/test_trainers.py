"""The registry of TRL trainers: every entry resolves to real TRL classes, bad entries fail when registered, a new
trainer plugs in with one call, and importing the registry leaves TRL unloaded."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hf_adapt.errors import ConfigError
from hf_adapt.feedback import trainers
from hf_adapt.feedback.convert import convert, to_dpo
from hf_adapt.feedback.trainers import TrainerSpec, get_trainer, register_trainer, trainer_names
from hf_adapt.recipes.feedback import FeedbackConfig
from tests.feedback.conftest import product_feedback

REPO = Path(__file__).resolve().parents[2]


def test_the_registry_and_the_converters_leave_trl_unloaded():
    code = ("import sys, hf_adapt.feedback.trainers, hf_adapt.feedback.convert, hf_adapt.recipes.feedback; "
            "print(sorted(m for m in ('trl', 'datasets', 'timm', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "kto", "orpo", "grpo"])
def test_each_entry_resolves_to_its_trl_classes(name):
    spec = get_trainer(name)
    config_class, trainer_class = spec.classes()
    assert (config_class.__name__.lower(), trainer_class.__name__.lower()) == (f"{name}config", f"{name}trainer")
    assert dataclasses.is_dataclass(config_class) and "learning_rate" in {f.name for f in dataclasses.fields(config_class)}
    assert callable(spec.scorer())
    assert spec.convert(product_feedback(range(2))).rows, f"{name}: its converter gave no rows"


def test_entries_say_what_they_train_and_how_it_is_scored():
    assert [n for n in trainer_names() if get_trainer(n).objective == "reward"] == ["reward"]
    assert [n for n in trainer_names() if get_trainer(n).reference_model] == ["dpo", "kto"]
    assert [n for n in trainer_names() if get_trainer(n).reward_funcs] == ["grpo"]
    assert get_trainer("reward").scorer().__name__ == "score_reward_model"
    assert get_trainer("orpo").scorer().__name__ == "score_policy"


@pytest.mark.parametrize("spec, error, match", [
    (TrainerSpec("dpo", "trl:DPOConfig", "trl:DPOTrainer", "hf_adapt.feedback.convert:to_dpo"), ValueError,
     "'dpo' is already registered"),
    (TrainerSpec("My-DPO", "trl:DPOConfig", "trl:DPOTrainer", "hf_adapt.feedback.convert:to_dpo"), ValueError,
     "must match"),
    (TrainerSpec("x", "trl.DPOConfig", "trl:DPOTrainer", "hf_adapt.feedback.convert:to_dpo"), ValueError,
     "config_class 'trl.DPOConfig' must look like 'package.module:attribute'"),
    (TrainerSpec("x", "trl:DPOConfig", "trl:DPOTrainer", "hf_adapt.feedback.convert:to_dpo", ("max_pairs",)),
     ValueError, r"converter_options \['max_pairs'\]"),
    (TrainerSpec("x", "trl:DPOConfig", "trl:DPOTrainer", "hf_adapt.feedback.convert:to_dpo", objective="mlm"),
     ValueError, "objective 'mlm'"),
    (TrainerSpec("x", "trl:DPOConfig", "trl:DPOTrainer", "hf_adapt.feedback.convert:to_dpo", defaults={"beta": 1}),
     TypeError, "defaults must be callable"),
    ({"name": "x"}, TypeError, "takes a TrainerSpec, not dict"),
])
def test_malformed_or_duplicate_entries_fail_when_registered(spec, error, match):
    before = dict(trainers.TRAINERS)
    with pytest.raises(error, match=match):
        register_trainer(spec)
    assert trainers.TRAINERS == before


@pytest.fixture
def clone_of_dpo():
    register_trainer(TrainerSpec("dpo_clone", "trl:DPOConfig", "trl:DPOTrainer", "hf_adapt.feedback.convert:to_dpo",
                                 ("max_pairs_per_prompt",), reference_model=True))
    yield get_trainer("dpo_clone")
    del trainers.TRAINERS["dpo_clone"]


def test_a_trainer_plugs_in_with_one_entry(clone_of_dpo):
    records = product_feedback(range(3))
    assert convert(records, "dpo_clone", max_pairs_per_prompt=1).rows == to_dpo(records, 1).rows
    cfg = FeedbackConfig(feedback="log.jsonl", trainer="dpo_clone")
    assert cfg.trainer == "dpo_clone"


@pytest.mark.parametrize("values, match", [
    ({"trainer": "ppo"}, r"trainer 'ppo' is not one of \['sft', 'reward', 'dpo', 'kto', 'orpo', 'grpo'\]"),
    ({"trainer": "grpo"}, "trainer grpo needs reward_funcs"),
    ({"trainer": "kto", "reward_funcs": ["m:f"]}, "reward_funcs are for trainer grpo, not kto"),
    ({"trainer": "reward", "judge": "rule:m:f"}, "a reward model is scored on held-out pairs"),
])
def test_the_config_asks_the_entry(values, match):
    with pytest.raises(ConfigError, match=match):
        FeedbackConfig(feedback="log.jsonl", **values)


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "configs").glob("feedback_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_make_their_trl_config(path, tmp_path):
    """Binding (tests/test_config.py) does not see TRL; this checks trainer_args against the TRL config class."""
    from hf_adapt.config import parse_config
    from hf_adapt.recipes.feedback import trl_config

    cfg = parse_config(FeedbackConfig, ["--config", str(path)])
    args = trl_config(cfg, str(tmp_path), {"desirable": 3, "undesirable": 1}, 1)
    config_class, _ = get_trainer(cfg.trainer).classes()
    assert type(args) is config_class and args.beta == cfg.trainer_args["beta"]
    assert (args.learning_rate, args.per_device_train_batch_size) == (cfg.learning_rate, cfg.per_device_train_batch_size)
