"""Recipe configs are composed of components: every field belongs to one, resumability is marked on the field,
no recipe config inherits another to refuse its fields, and a mode refuses what it would ignore."""

from __future__ import annotations

import dataclasses
import importlib
import time

import pytest

from hf_adapt import options
from hf_adapt.checkpoints import CheckpointOptions
from hf_adapt.cli import GROUPED_RECIPES, RECIPES
from hf_adapt.config import Options, config_from_dict, owner, resumable_fields
from hf_adapt.errors import ConfigError
from hf_adapt.hub import PublishOptions

COMPONENTS = {*(c for c in vars(options).values() if isinstance(c, type) and issubclass(c, Options)
                and c is not Options), CheckpointOptions, PublishOptions}
TRAINING = ("finetune", "pretrain", "continual", "feedback train")


def recipe_config(name: str) -> type:
    module, cls_name, _ = {**RECIPES, **GROUPED_RECIPES}[name]
    return getattr(importlib.import_module(module), cls_name)


@pytest.mark.parametrize("name", TRAINING)
def test_a_recipe_config_is_components_plus_its_own_fields(name):
    cls = recipe_config(name)
    bases = [b for b in cls.__bases__]
    assert all(b in COMPONENTS for b in bases), f"{cls.__name__} inherits {[b for b in bases if b not in COMPONENTS]}"
    recipes = {recipe_config(other) for other in TRAINING} - {cls}
    assert not recipes & set(cls.__mro__), f"{cls.__name__} inherits another recipe's config"
    owners = {f.name: owner(cls, f.name) for f in dataclasses.fields(cls)}
    own = sorted(n for n, o in owners.items() if o is cls)
    assert len(own) <= 20, f"{cls.__name__} declares {len(own)} fields itself: {own}; move shared ones to a component"
    assert all(o is cls or o in COMPONENTS for o in owners.values())


def test_each_field_name_belongs_to_exactly_one_component():
    declared: dict[str, type] = {}
    for component in COMPONENTS:
        for name in vars(component).get("__annotations__", {}):
            assert name not in declared, f"{name} is declared by {declared[name].__name__} and {component.__name__}"
            declared[name] = component
    assert len(declared) >= 80


def test_resumability_is_marked_on_the_field():
    from hf_adapt.recipes.continual import ContinualConfig
    from hf_adapt.recipes.finetune import FinetuneConfig

    finetune = resumable_fields(FinetuneConfig)
    assert {"output_dir", "push_to_hub", "operating_point", "license", "resume_from_checkpoint"} <= finetune
    assert not {"learning_rate", "adapter", "regime", "data", "seed", "cv_folds", "label_column"} & finetune
    assert {"max_forgetting", "continual_metric"} <= resumable_fields(ContinualConfig)
    import hf_adapt.checkpoints as checkpoints

    assert not hasattr(checkpoints, "RESUMABLE_CHANGES")  # no list of names kept apart from the fields


def test_a_recipe_default_keeps_the_component_its_field_belongs_to():
    from hf_adapt.recipes.feedback import FeedbackConfig

    assert owner(FeedbackConfig, "learning_rate") is options.TrainingOptions
    assert FeedbackConfig.__dataclass_fields__["learning_rate"].default == 1e-4
    with pytest.raises(ConfigError, match="learning_rate must be a number >= 0"):  # the component's rule still holds
        config_from_dict(FeedbackConfig, {"feedback": "log.jsonl", "learning_rate": -1.0})


def test_components_check_their_fields_in_every_recipe_that_uses_them():
    from hf_adapt.recipes.continual import ContinualConfig
    from hf_adapt.recipes.pretrain import PretrainConfig

    stream = [{"name": "a", "classes": [0]}, {"name": "b", "classes": [1]}]
    for cls, values in ((PretrainConfig, {"data": "x.txt"}), (ContinualConfig, {"experiences": stream})):
        with pytest.raises(ConfigError, match="train_fraction or train_samples_per_class"):
            config_from_dict(cls, {**values, "train_fraction": 0.5, "train_samples_per_class": 3})
        with pytest.raises(ConfigError, match="lr_scheduler_type 'sideways'"):
            config_from_dict(cls, {**values, "lr_scheduler_type": "sideways"})


def test_continual_has_no_field_it_would_ignore():
    from hf_adapt.recipes.continual import ContinualConfig

    stream = [{"name": "a", "classes": [0]}, {"name": "b", "classes": [1]}]
    for key, value in (("cv_folds", 5), ("operating_point", "youden"), ("class_weights", "balanced"),
                       ("sensitive_columns", ["age"])):
        with pytest.raises(ConfigError, match=rf"unknown key\(s\) \['{key}'\] for ContinualConfig"):
            config_from_dict(ContinualConfig, {"experiences": stream, key: value})


def test_language_modelling_refuses_the_fields_only_supervised_pretraining_reads():
    from hf_adapt.recipes.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="label_column, image_size: set for objective mlm"):
        config_from_dict(PretrainConfig, {"data": "x.txt", "objective": "mlm", "label_column": "y", "image_size": 64})
    cfg = config_from_dict(PretrainConfig, {"data": "x.csv", "objective": "supervised", "label_column": "y",
                                            "group_column": "patient"})
    from hf_adapt.recipes.pretrain import finetune_config

    assert finetune_config(cfg).group_column == "patient"  # the finetune run it becomes gets every shared field


def test_help_lists_fields_by_component_and_stays_fast():
    import subprocess
    import sys

    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hf_adapt.cli", "finetune", "--help"], capture_output=True,
                         text=True, check=True).stdout
    seconds = time.perf_counter() - start
    sections = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections[1:4] == ["model", "backbone", "data"]  # after argparse's own "options"
    assert "publishing" in sections and "evaluation" in sections
    assert seconds < 3  # a loose bound for a loaded CI machine; README measures ~0.2 s
