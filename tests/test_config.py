"""The shared parser: YAML then CLI overrides, unknown keys refused, --help complete."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from hf_adapt.cli import GROUPED_RECIPES, RECIPES, recipe_parser
from hf_adapt.cli import main as cli_main
from hf_adapt.config import config_from_dict, parse_config
from hf_adapt.errors import ConfigError
from hf_adapt.recipes.finetune import FinetuneConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "recipes" / "configs").glob("*.yaml") if not p.name.startswith("tune_"))
SEARCH_SPACES = sorted((REPO / "recipes" / "configs").glob("tune_*.yaml"))  # hf-adapt tune --search files
ALL_RECIPES = {**RECIPES, **GROUPED_RECIPES}  # "feedback train" too
# a shipped config is named after its recipe's command (feedback_dpo.yaml: hf-adapt feedback train)
CONFIG_PREFIX = {name: name.split()[0] for name in ALL_RECIPES}


def test_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 2e-4\nnum_train_epochs: 5\nadapter: {peft_type: IA3}\n")
    cfg = parse_config(FinetuneConfig, ["--config", str(path), "--num_train_epochs", "2",
                                        "--reset_head", "--feature_columns", "[a, b]"])
    assert cfg.learning_rate == 2e-4  # YAML reads "2e-4" as text; the parser coerces it
    assert cfg.num_train_epochs == 2
    assert cfg.adapter == {"peft_type": "IA3"}
    assert cfg.reset_head is True
    assert cfg.feature_columns == ["a", "b"]
    assert cfg.output_dir == FinetuneConfig().output_dir


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\nlearnig_rate: 2e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learnig_rate'\]"):
        parse_config(FinetuneConfig, ["--config", str(path)])


def test_unknown_flag_is_an_error():
    with pytest.raises(SystemExit):
        parse_config(FinetuneConfig, ["--learnig_rate", "1"])


@pytest.mark.parametrize("values, message", [
    ({"num_train_epochs": "three"}, "num_train_epochs must be int"),
    ({"regime": "lora"}, "regime 'lora' is not one of"),
    ({"test_size": 1.5}, "test_size must be between 0 and 1"),
    ({"validation_size": 0.5, "test_size": 0.5}, "must leave rows for training"),
])
def test_bad_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(FinetuneConfig, values)


@pytest.mark.parametrize("recipe", sorted(ALL_RECIPES))
def test_help_documents_every_field(recipe):
    parser = recipe_parser(recipe)
    module, cls_name, _ = ALL_RECIPES[recipe]
    cls = getattr(importlib.import_module(module), cls_name)
    text = parser.format_help()
    for field in dataclasses.fields(cls):
        assert f"--{field.name}" in text
        assert field.metadata.get("help"), f"{recipe}: {field.name} has no help"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_bind_to_their_recipe(path):
    """A config named after a recipe (transfer_study_*.yaml, feedback_*.yaml) binds to it; the others to finetune."""
    recipe = next((name for name, prefix in sorted(CONFIG_PREFIX.items(), key=lambda item: -len(item[1]))
                   if path.name.startswith(f"{prefix}_")), "finetune")
    args = recipe_parser(recipe).parse_args(["--config", str(path)])
    from hf_adapt.config import config_from_namespace

    module, cls_name, _ = ALL_RECIPES[recipe]
    assert isinstance(config_from_namespace(args), getattr(importlib.import_module(module), cls_name))


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_shipped_search_spaces_check_against_finetune(path):
    """A shipped tune_*.yaml is a search space over the finetune recipe, and checks as one."""
    pytest.importorskip("optuna", reason="the tune extra is not installed")
    import yaml

    from hf_adapt.recipes.finetune import FinetuneConfig
    from hf_adapt.tune.space import SearchSpace

    assert SearchSpace.parse(yaml.safe_load(path.read_text()), FinetuneConfig).names


def test_shipped_configs_exist():
    assert len(SHIPPED) >= 2


def test_the_configs_the_recipes_name_exist():
    """recipes/feedback.py once pointed at a feedback_dpo.yaml that was never shipped."""
    import re

    scripts = [*(REPO / "recipes").glob("*.py"), *(REPO / "hf_adapt" / "recipes").glob("*.py")]
    named = {name for path in scripts for name in re.findall(r"recipes/configs/\w+\.yaml", path.read_text())}
    assert "recipes/configs/feedback_dpo.yaml" in named
    assert sorted(name for name in named if not (REPO / name).is_file()) == []


def test_cli_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "finetune" in capsys.readouterr().out


def test_resolved_config_round_trips(tmp_path):
    from hf_adapt.config import save_config

    cfg = config_from_dict(FinetuneConfig, {"adapter": {"peft_type": "LORA", "r": 4}, "image_size": 64})
    save_config(cfg, tmp_path / "config.yaml")
    assert parse_config(FinetuneConfig, ["--config", str(tmp_path / "config.yaml")]) == cfg


def test_quickstart_config_spells_out_the_defaults():
    cfg = parse_config(FinetuneConfig, ["--config", str(REPO / "recipes/configs/credit_minilm_lora.yaml")])
    default = FinetuneConfig()
    differing = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}
    # beyond the defaults it only names what the card derives or omits by itself
    assert differing == {"intended_use", "output_dir", "base_model_id", "dataset_name", "license"}
