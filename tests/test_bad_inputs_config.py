"""Issue 17's config and card cases: bad config files and values refused while parsing, user text escaped in cards.

Config: every case goes through the parser and entry point the CLI uses (``hf_adapt.cli.run_recipe``) and must
end in exit status 2 with a one-line ``ConfigError`` that names the file or field and what was expected, before
the recipe's ``main`` (and so any model load) starts.

Cards: labels, column names, group names and dataset names holding ``|``, newlines, backticks or HTML keep
the card's tables and bullets intact and are shown as text, while the YAML metadata still parses.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_adapt.cli import GROUPED_RECIPES, RECIPES, run_recipe

# ----------------------------------------------------------------------------- config: the CLI path, main stubbed

# what each recipe needs besides the case's own flags (nothing here is read while parsing)
BASE_ARGS = {
    "finetune": [],
    "continual": ["--experiences", "[{name: a, classes: [bad]}, {name: b, classes: [good]}]"],
    "pretrain": ["--data", "docs.txt"],
    "feedback train": ["--feedback", "log.jsonl"],
    "transfer_study": [],
}
ALL_RECIPES = ("finetune", "continual", "pretrain", "feedback train")  # those with the shared training numbers
CLASSIFIERS = ("finetune", "continual")


def _refused(recipe: str, argv: list[str], monkeypatch, capsys) -> str:
    """Run ``hf-adapt <recipe> argv`` with ``main`` and the backbone builders stubbed to fail loudly; return the
    error line the user sees (the exit status must be 2 and ``main`` must not have started)."""
    module = importlib.import_module({**RECIPES, **GROUPED_RECIPES}[recipe][0])

    def no_main(cfg):
        raise AssertionError(f"{recipe}: the config was accepted and main started (a model would load now)")

    def no_builder(family):
        raise AssertionError("a backbone builder was asked for while parsing the config")

    monkeypatch.setattr(module, "main", no_main)
    monkeypatch.setattr("hf_adapt.backbones.get_builder", no_builder)
    assert run_recipe(recipe, [*BASE_ARGS[recipe], *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hf-adapt {recipe}: error: ") and "\n" not in err, err
    return err


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _noise(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _nul_text(path: Path) -> Path:
    path.write_bytes(b"learning_rate: 1e-3\n\x00\x00\x00\x00num_train_epochs: 2\n")  # ASCII, but binary
    return path


def _control_chars(path: Path) -> Path:
    path.write_bytes(b"learning_rate: 1e-3\x01\x02\n")  # decodes as UTF-8, but YAML refuses the characters
    return path


def _huge(path: Path) -> Path:
    with path.open("wb") as handle:  # sparse: its size says what it is, nothing is read
        handle.truncate(64 * 2**20)
    return path


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CONFIG_FILES = [
    pytest.param(lambda tmp: str(_png(tmp / "picture.png")), r"config .*picture\.png is not a YAML text file "
                 r"\(byte 0x89 at offset 0", id="png"),
    pytest.param(lambda tmp: str(_noise(tmp / "noise.yaml")), r"config .*noise\.yaml is not a YAML text file",
                 id="random-bytes"),
    pytest.param(lambda tmp: str(_nul_text(tmp / "nul.yaml")), r"config .*nul\.yaml is not a YAML text file "
                 r"\(it holds a NUL byte", id="nul-bytes"),
    pytest.param(lambda tmp: str(_control_chars(tmp / "ctl.yaml")), r"config .*ctl\.yaml is not a YAML text file "
                 r"\(character '\\x01' at offset 19 is not allowed in YAML\)", id="control-characters"),
    pytest.param(lambda tmp: str(_huge(tmp / "big.yaml")), r"config .*big\.yaml is not a YAML config file "
                 r"\(67,108,864 bytes", id="64-MiB-file"),
    pytest.param(lambda tmp: "/dev/zero", r"config /dev/zero is not a regular file \(a character device\)",
                 id="dev-zero"),
    pytest.param(lambda tmp: str(tmp), r"config .* is not a regular file \(a directory\)", id="directory"),
    pytest.param(lambda tmp: str(tmp / "missing.yaml"), r"config file not found: .*missing\.yaml", id="missing"),
    pytest.param(lambda tmp: str(_yaml(tmp / "list.yaml", "- a\n- b\n")),
                 r"list\.yaml: expected a mapping of field names to values, got list", id="yaml-list"),
]


@pytest.mark.parametrize(("make", "words"), CONFIG_FILES)
def test_bad_config_file_is_refused_by_name(make, words, tmp_path, monkeypatch, capsys):
    err = _refused("finetune", ["--config", make(tmp_path)], monkeypatch, capsys)
    assert re.search(words, err), err


def test_fifo_config_is_refused_without_reading_it(tmp_path, monkeypatch, capsys):
    """A named pipe nobody writes to would block a reader forever: refused by what it is, not by reading it."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    err = _refused("pretrain", ["--config", str(fifo)], monkeypatch, capsys)
    assert re.search(r"config .*config\.yaml is not a regular file \(a named pipe\)", err), err


def test_study_refuses_a_finetune_config_that_is_not_a_file(tmp_path, monkeypatch, capsys):
    err = _refused("transfer_study", ["--finetune_config", "/dev/zero"], monkeypatch, capsys)
    assert "finetune_config: config /dev/zero is not a regular file (a character device)" in err, err
    err = _refused("transfer_study", ["--finetune_config", str(_png(tmp_path / "x.png"))], monkeypatch, capsys)
    assert re.search(r"finetune_config: config .*x\.png is not a YAML text file", err), err


ADAPTERS = [
    pytest.param("{peft_type: LORA, r: abc}", r"adapter\.r must be int, got 'abc' \(peft LoraConfig\)", id="r-not-int"),
    pytest.param("{peft_type: LORA, r: 8.5}", r"adapter\.r must be int, got 8\.5", id="r-float"),
    pytest.param("{peft_type: LORA, lora_dropout: high}", r"adapter\.lora_dropout must be float, got 'high'",
                 id="dropout-not-float"),
    pytest.param("{peft_type: LORA, use_dora: maybe}", r"adapter\.use_dora must be bool, got 'maybe'",
                 id="use-dora-not-bool"),
    pytest.param("{peft_type: LORA, target_modules: 5}", r"adapter\.target_modules must be .*list.*str.*, got 5",
                 id="target-modules-int"),
    pytest.param("{peft_type: LORA, target_modules: [query, 3]}", r"adapter\.target_modules must be .*got \['query', 3\]",
                 id="target-modules-list-of-int"),
    pytest.param("{peft_type: LORA, rank: 8}", r"adapter: LoraConfig has no field\(s\) \['rank'\]", id="unknown-key"),
    pytest.param("{peft_type: LORAX}", r"adapter\.peft_type 'LORAX' is not a peft method", id="unknown-peft-type"),
    pytest.param("{r: 8}", r"adapter\.peft_type None is not a peft method", id="no-peft-type"),
    pytest.param("{peft_type: LORA, layers_pattern: layer}", r"adapter: invalid LoraConfig settings: When "
                 r"`layers_pattern` is specified", id="peft-post-init-refuses"),
]


@pytest.mark.parametrize("recipe", ["finetune", "pretrain", "feedback train"])
@pytest.mark.parametrize(("adapter", "words"), ADAPTERS)
def test_bad_adapter_is_refused_at_config_time(recipe, adapter, words, monkeypatch, capsys):
    err = _refused(recipe, ["--adapter", adapter], monkeypatch, capsys)
    assert re.search(words, err), err


def test_bad_adapter_in_a_config_file_names_the_file(tmp_path, monkeypatch, capsys):
    path = _yaml(tmp_path / "lora.yaml", "regime: adapter\nadapter: {peft_type: LORA, r: abc, lora_alpha: 16}\n")
    err = _refused("continual", ["--config", str(path)], monkeypatch, capsys)
    assert re.search(r"adapter\.r must be int, got 'abc'", err), err


def test_adapter_unused_by_the_regime_is_not_checked():
    """A linear probe ignores the adapter dict, so a half-edited one must not stop it (and full, likewise)."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig

    cfg = config_from_dict(FinetuneConfig, {"regime": "linear_probe", "adapter": {"peft_type": "LORA", "r": "abc"}})
    assert cfg.regime == "linear_probe"


# (flag, value, the words of the error, the recipes that have the field)
NUMBERS = [
    ("learning_rate", "-1e-3", r"learning_rate must be a number >= 0, got -0\.001", ALL_RECIPES),
    ("learning_rate", "nan", r"learning_rate must be a number >= 0, got nan", ALL_RECIPES),
    ("learning_rate", "inf", r"learning_rate must be a number >= 0, got inf", ALL_RECIPES),
    ("learning_rate", "-inf", r"learning_rate must be a number >= 0, got -inf", ALL_RECIPES),
    ("head_learning_rate", "-0.01", r"head_learning_rate must be a number >= 0 \(or null", CLASSIFIERS),
    ("head_learning_rate", "nan", r"head_learning_rate must be a number >= 0 .*got nan", CLASSIFIERS),
    ("weight_decay", "-0.1", r"weight_decay must be a number >= 0, got -0\.1", ALL_RECIPES),
    ("weight_decay", "nan", r"weight_decay must be a number >= 0, got nan", ALL_RECIPES),
    ("per_device_train_batch_size", "0", r"per_device_train_batch_size must be a positive integer, got 0", ALL_RECIPES),
    ("per_device_eval_batch_size", "-4", r"per_device_eval_batch_size must be a positive integer, got -4", ALL_RECIPES),
    ("gradient_accumulation_steps", "0", r"gradient_accumulation_steps must be a positive integer, got 0", ALL_RECIPES),
    ("num_train_epochs", "-1", r"num_train_epochs must be a positive number, got -1", ALL_RECIPES),
    ("num_train_epochs", "0", r"num_train_epochs must be a positive number, got 0", ALL_RECIPES),
    ("warmup_ratio", "1.5", r"warmup_ratio must be a share in \[0, 1\), got 1\.5", ALL_RECIPES),
    ("warmup_ratio", "-0.1", r"warmup_ratio must be a share in \[0, 1\), got -0\.1", ALL_RECIPES),
    ("max_steps", "0", r"max_steps must be a positive number of steps, or -1 \(unset", ALL_RECIPES),
    ("max_steps", "-5", r"max_steps must be a positive number of steps, or -1 .*got -5", ALL_RECIPES),
    ("max_grad_norm", "-1", r"max_grad_norm must be a number >= 0 \(0: no clipping\), got -1", ALL_RECIPES),
]
NUMBER_CASES = [pytest.param(recipe, flag, value, words, id=f"{recipe.split()[0]}-{flag}={value}")
                for flag, value, words, recipes in NUMBERS for recipe in recipes]


@pytest.mark.parametrize(("recipe", "flag", "value", "words"), NUMBER_CASES)
def test_out_of_range_numbers_are_refused_at_config_time(recipe, flag, value, words, monkeypatch, capsys):
    err = _refused(recipe, [f"--{flag}={value}"], monkeypatch, capsys)  # "=": argparse reads -1e-3 as a flag
    assert re.search(words, err), err


@pytest.mark.parametrize("recipe", ALL_RECIPES)
@pytest.mark.parametrize(("text", "words"), [
    ("learning_rate: .nan\n", r"learning_rate must be a number >= 0, got nan"),
    ("max_steps: null\n", r"max_steps must be int, got None \(leave max_steps out for its default, -1\)"),
    ("learning_rate: null\n", r"learning_rate must be float, got None \(leave learning_rate out for its default"),
    ("output_dir: null\n", r"output_dir must be str, got None \(leave output_dir out for its default, 'outputs/"),
], ids=["nan", "max-steps-null", "learning-rate-null", "output-dir-null"])
def test_values_in_a_yaml_file_name_the_file(recipe, text, words, tmp_path, monkeypatch, capsys):
    """YAML can say what flags cannot: .nan, and null for a field that has no unset value."""
    err = _refused(recipe, ["--config", str(_yaml(tmp_path / "run.yaml", text))], monkeypatch, capsys)
    assert re.search(rf"run\.yaml: {words}", err), err


@pytest.mark.parametrize(("recipe", "values"), [
    ("finetune", {"max_steps": 5, "warmup_ratio": 0.0, "weight_decay": 0.0, "head_learning_rate": None}),
    ("pretrain", {"max_steps": -1, "learning_rate": 0.0, "max_grad_norm": 0.0}),
    ("feedback train", {"num_train_epochs": 0.5, "max_steps": 3, "warmup_ratio": 0.5}),
])
def test_edge_values_that_are_fine_still_parse(recipe, values, tmp_path):
    """The bounds are the documented ones, not stricter: -1 leaves max_steps unset, 0 turns clipping and decay off,
    a learning rate of 0 trains nothing on purpose, a fractional epoch count is fine where epochs are a float."""
    import yaml

    from hf_adapt.cli import recipe_parser
    from hf_adapt.config import config_from_namespace

    path = _yaml(tmp_path / "ok.yaml", yaml.safe_dump(values))
    cfg = config_from_namespace(recipe_parser(recipe).parse_args([*BASE_ARGS[recipe], "--config", str(path)]))
    assert {k: getattr(cfg, k) for k in values} == values


def test_the_python_api_is_checked_too():
    """Configs built in Python (not parsed) get the same checks: they live in the dataclasses."""
    from hf_adapt.errors import ConfigError
    from hf_adapt.recipes.feedback import FeedbackConfig
    from hf_adapt.recipes.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match=r"learning_rate must be a number >= 0, got -1"):
        FinetuneConfig(learning_rate=-1)
    with pytest.raises(ConfigError, match=r"adapter\.r must be int"):
        FeedbackConfig(feedback="log.jsonl", adapter={"peft_type": "LORA", "r": "8"})


# ----------------------------------------------------------------------------- cards: user text in the body

HOSTILE_LABELS = ["good|bad", "line\nbreak", "<script>alert(1)</script>", "tick`tock"]
HOSTILE_COLUMN = "age|<img src=x onerror=alert(2)>"
HOSTILE_GROUP = "a|b\n<b>bold</b>"
HOSTILE_DATASET = "credit | <i>2024</i>\nrows"


def _classifier_facts() -> dict:
    """Card facts of a finetune run as ``finetune._write_outputs`` records them, with hostile user text in every
    place it can reach: labels, a column, a group, the dataset name, a text template and a positive label."""
    labels = HOSTILE_LABELS
    template = "{age} | <b>{purpose}</b>"
    metrics = {"accuracy": 0.81, "macro_f1": 0.7, "auroc": 0.8, "sensitivity": 0.7, "specificity": 0.9}
    return {
        "card_template": "classifier.md",
        "model_name": "credit-lora",
        "summary": f"A {len(labels)}-class classifier ({', '.join(labels)}) adapted from `org/base` with a peft LORA "
                   f"adapter, trained with hf-adapt on {HOSTILE_DATASET}.",
        "base_model": "org/base", "model_source": "org/base", "family": "transformers",
        "regime": "adapter", "adapter": {"peft_type": "LORA", "r": 8}, "license": "mit",
        "dataset_id": None, "dataset_name": HOSTILE_DATASET, "data_source": "/data/credit|<x>.csv",
        "data_revision": None, "data_sha256": "ab" * 32, "data_kind": "table", "input_kind": "text",
        "input_description": f"table rows rendered as text (template `{template}`) over 2 columns",
        "split_sizes": {"train": 70, "validation": 15, "test": 15}, "split_method": "seeded stratified split",
        "labels": labels,
        "label_counts": {split: dict.fromkeys(labels, 3) for split in ("train", "validation", "test")},
        "test_metrics": metrics, "test_intervals": None, "metric_for_best_model": "auroc", "best_epoch": 1,
        "baseline": None, "cv": None, "figures": {}, "explanations": [
            {"path": "figures/explain_0.png", "predicted": labels[2], "explained_output": f"p({labels[0]})",
             "top": [{"column": HOSTILE_COLUMN, "value": "<script>x</script>|1", "attribution": 0.2}]}],
        "gradcam": [{"path": "figures/gradcam_0.png", "title": f"true {labels[0]}, predicted {labels[1]} (0.9)"}],
        "operating_point": {"positive_label": labels[2], "negative_label": labels[0], "threshold": 0.4,
                            "log_odds": -0.4, "rule": "youden", "target": None, "selected_on": "validation",
                            "validation": {"sensitivity": 0.7}},
        "operating_point_error": None,
        "subgroups": {"positive_label": labels[2], "columns": {HOSTILE_COLUMN: {
            "metric_names": ["accuracy"], "gaps": {"accuracy_difference": 0.1},
            "groups": {HOSTILE_GROUP: {"n": 40, "small": False, "accuracy": 0.8},
                       "missing": {"n": 2, "small": True, "accuracy": None}}}}},
        "subgroup_sentences": [f"Accuracy is 0.10 lower for {HOSTILE_COLUMN} = {HOSTILE_GROUP!r} (n=40)."],
        "grouped_by": "patient|id", "skipped_images": None, "imbalance": None,
        "lineage": {"parent": "org/parent", "hub": True, "revision": "v1", "relation": "transfer",
                    "kept": "the backbone weights", "new": f"a classification head for 4 labels ({', '.join(labels)})",
                    "changes": [{"field": "text_template", "parent": "{a}|{b}", "this": template}],
                    "metrics": {}, "parent_metrics": {}},
        "example_input": repr({"age": 30}), "example_file": None,
        "history": [{"epoch": 1, "train_loss": 0.6, "accuracy": 0.7, "auroc": 0.75, "log_loss": 0.6}],
        "steps": 10, "train_seconds": 1.0, "trainable_parameters": 10, "total_parameters": 100,
        "num_processes": 1, "mixed_precision": "no", "gradient_accumulation_steps": 1, "hardware": "1 x CPU",
        "config": {"learning_rate": 1e-3, "head_learning_rate": None, "weight_decay": 0.0,
                   "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "per_device_train_batch_size": 8,
                   "seed": 0, "init_from": None},
        "config_yaml": f"text_template: |-\n  a\n  ```\n  {template}\n", "git": None,
        "versions": {"python": "3.11"}, "recipe": "finetune", "output_dir": "/tmp/out",
        "intended_use": None, "out_of_scope_use": None, "limitations": None,
    }


def _body(content: str) -> str:
    """The markdown after the YAML front matter."""
    return content.split("\n---\n", 1)[1]


def _cells(row: str) -> int:
    """Cells of a GFM table row: pipes not escaped by a backslash (GFM splits cells before inline parsing, so
    a pipe inside a code span needs the backslash too)."""
    return re.sub(r"\\.", "", row.strip()).strip("|").count("|") + 1


def _tables(body: str) -> list[list[str]]:
    """Each GFM table as its lines: a header, its delimiter row, then rows until the first line that is not one."""
    lines, tables = body.splitlines(), []
    for i in range(1, len(lines)):
        if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i].strip()) and lines[i - 1].startswith("|"):
            rows = [lines[i - 1], lines[i]]
            for line in lines[i + 1:]:
                if not line.startswith("|"):
                    break
                rows.append(line)
            tables.append(rows)
    return tables


def _outside_code(body: str) -> str:
    """The body without fenced blocks and code spans (CommonMark: a run of n backticks not escaped by a backslash
    closes at the next run of n), i.e. the text a renderer reads as markdown and HTML."""
    body = re.sub(r"^(`{3,})[^\n]*\n.*?^ {0,3}\1`*[ \t]*$", "", body, flags=re.M | re.S)
    return re.sub(r"(?<![`\\])(`+)(?!`)(.+?)(?<!`)\1(?!`)", "", body, flags=re.S)


@pytest.fixture(scope="module")
def hostile_card():
    from hf_adapt import cards

    return cards.render_card(_classifier_facts())


def test_card_tables_keep_their_columns(hostile_card):
    tables = _tables(_body(hostile_card.content))
    assert len(tables) >= 5  # metrics, operating point, subgroups, labels, training history, lineage changes
    for table in tables:
        header = _cells(table[0])
        assert [_cells(row) for row in table] == [header] * len(table), "\n".join(table)
    label_table = next(t for t in tables if t[0].startswith("| label |"))
    assert len(label_table) == 2 + len(HOSTILE_LABELS), "\n".join(label_table)  # one row per label, none split
    group_table = next(t for t in tables if t[0].startswith("| group |"))
    assert len(group_table) == 2 + 2, "\n".join(group_table)


def test_card_user_text_stays_on_its_line(hostile_card):
    body = _body(hostile_card.content)
    for line in body.splitlines():  # the second half of "line\nbreak" never starts a line of its own
        assert not line.startswith(("break", "rows", "<b>bold")), line
    bullets = [line for line in body.splitlines() if line.startswith("- ")]
    assert any("Accuracy is 0.10 lower for" in b and "bold" in b for b in bullets)


def test_card_html_is_text_not_markup(hostile_card):
    markdown = _outside_code(_body(hostile_card.content))
    for tag in ("<script", "<img", "<b>", "<i>", "<x>"):
        assert tag not in markdown, tag
    assert "&lt;script>alert(1)&lt;/script>" in markdown  # shown as the text it is
    assert "<details>" in markdown and "<summary>Resolved config</summary>" in markdown  # the template's own HTML


def test_card_fences_outlast_user_backticks(hostile_card):
    """A config value holding ``` must not close the card's YAML block early."""
    lines = _body(hostile_card.content).splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"`{3,}yaml", line))
    fence = lines[start][:-len("yaml")]
    # CommonMark: a line of at least as many backticks, indented up to 3 spaces, closes the block
    end = next(i for i in range(start + 1, len(lines)) if re.fullmatch(rf" {{0,3}}{fence}`*\s*", lines[i]))
    assert "{age} | <b>{purpose}</b>" in "\n".join(lines[start + 1:end])


def test_card_metadata_still_parses(hostile_card):
    from huggingface_hub import ModelCard

    card = ModelCard(hostile_card.content)
    assert card.data.model_name == "credit-lora"
    assert card.data.license == "mit" and card.data.library_name == "peft"
    assert card.data.eval_results[0].dataset_name == HOSTILE_DATASET  # the metadata keeps the name as given
    assert {r.metric_name for r in card.data.eval_results} >= {"Accuracy", "AUROC"}


@pytest.mark.parametrize(("text", "expected"), [
    ("good|bad", r"good\|bad"),
    ("line\nbreak\r\nend", "line break end"),
    ("<script>alert(1)</script>", "&lt;script>alert(1)&lt;/script>"),
    ("<25 and >=50", "<25 and >=50"),  # not a tag: subgroup bins stay readable as written
    ("a`b", r"a\`b"),
    ("[x](javascript:alert(1))", r"\[x\](javascript:alert(1))"),
    ("back\\slash", "back\\\\slash"),
    ("AT&T &amp; co", "AT&T &amp;amp; co"),
    ("age_in_years", "age_in_years"),
])
def test_md_filter(text, expected):
    from hf_adapt.cards import md

    assert md(text) == expected


@pytest.mark.parametrize(("text", "table", "expected"), [
    ("plain", False, "`plain`"),
    ("a`b", False, "``a`b``"),
    ("`edge`", False, "`` `edge` ``"),
    ("<script>\nx", False, "`<script> x`"),
    ("a|b", True, r"`a\|b`"),
    ("a|b", False, "`a|b`"),
])
def test_code_filter(text, table, expected):
    from hf_adapt.cards import md_code

    assert md_code(text, table=table) == expected


def test_prose_filter_keeps_hf_adapts_own_code_spans():
    from hf_adapt.cards import md_prose

    text = "A classifier (good|bad, <script>) adapted from `org/base|x`, trained on\ncredit."
    assert md_prose(text) == r"A classifier (good\|bad, &lt;script>) adapted from `org/base|x`, trained on credit."


def test_card_escaping_is_one_environment():
    """Every template renders through the one environment that knows the filters."""
    from hf_adapt import cards

    for name in ("classifier.md", "continual.md", "pretrain.md", "feedback.md"):
        cards.environment().parse(cards.template_path(name).read_text(encoding="utf-8"))
    assert {"md", "code", "prose"} <= set(cards.environment().filters)
