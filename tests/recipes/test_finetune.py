"""The finetune recipe end to end on small real data with tiny models: artifacts, card, reload."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.recipes.finetune import FinetuneConfig, main


def _text_config(tiny_bert, credit_sample, tmp_path, **overrides) -> FinetuneConfig:
    values = dict(
        model_name_or_path=str(tiny_bert), base_model_id="hf-adapt-tests/tiny-bert", data=str(credit_sample),
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
        learning_rate=5e-3, max_length=128, report_to="none", torch_num_threads=1, license="apache-2.0",
    )
    values.update(overrides)
    return config_from_dict(FinetuneConfig, values)


def _test_logits(result) -> torch.Tensor:
    inputs = result.data.inputs("test", result.backbone.preprocessor.input_kind)[:16]
    batch = result.backbone.preprocessor.collate(inputs, train=False)
    result.model.eval()
    with torch.no_grad():
        return result.backbone.logits(result.model, batch)


@pytest.fixture(scope="module")
def text_run(tiny_bert, credit_sample, tmp_path_factory):
    cfg = _text_config(tiny_bert, credit_sample, tmp_path_factory.mktemp("text_run"))
    return cfg, main(cfg)


def test_text_run_writes_every_artifact(text_run):
    cfg, result = text_run
    out = result.output_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "label_map.json", "tokenizer.json",
                 "eval_results.json", "train_results.json", "config.yaml", "hf_adapt.json", "README.md"):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".out.partial-*")), "staging dir left behind"
    assert json.loads((out / "label_map.json").read_text())["id2label"] == {"0": "bad", "1": "good"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert config_from_dict(FinetuneConfig, saved) == cfg
    metrics = json.loads((out / "eval_results.json").read_text())
    assert set(metrics) == {"accuracy", "macro_f1", "auroc", "log_loss", "ece", "brier", "gini", "ks"}
    assert metrics == pytest.approx(result.test_metrics)
    history = json.loads((out / "train_results.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]


def test_adapter_holds_the_trained_head(text_run):
    _, result = text_run
    from safetensors.torch import load_file

    keys = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in keys)
    assert any(k.endswith("classifier.modules_to_save.weight") or "classifier" in k for k in keys)


def test_card_metadata_carries_real_metrics(text_run):
    _, result = text_run
    card = ModelCard.load(result.output_dir / "README.md")
    assert card.data.base_model == "hf-adapt-tests/tiny-bert"
    assert card.data.library_name == "peft"
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.license == "apache-2.0"
    assert "licence" not in card.data.to_dict()
    reported = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert reported["accuracy"] == round(result.test_metrics["accuracy"], 4)
    assert reported["roc_auc"] == round(result.test_metrics["auroc"], 4)
    assert "logistic regression" in card.text
    assert "[More Information Needed]" not in card.content


def test_reload_gives_identical_logits(text_run):
    _, result = text_run
    expected = _test_logits(result)
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    inputs = result.data.inputs("test", "text")[:16]
    assert torch.equal(predictor.logits(inputs), expected)
    merged = hf_adapt.load_adapted(str(result.output_dir), merge=True)
    assert not any("lora" in n for n, _ in merged.model.named_parameters())
    torch.testing.assert_close(merged.logits(inputs), expected, atol=1e-4, rtol=1e-4)


def test_an_output_written_before_run_record_kinds_still_loads_to_identical_logits(text_run, tmp_path):
    """An hf_adapt.json as hf-adapt wrote it before kinds and column kinds (format_version 1)."""
    import shutil

    _, result = text_run
    old = tmp_path / "old"
    shutil.copytree(result.output_dir, old)
    info = json.loads((old / "hf_adapt.json").read_text())
    assert info["format_version"] == 2 and info["kind"] == "classifier"
    del info["kind"], info["data"]["column_kinds"]
    (old / "hf_adapt.json").write_text(json.dumps({**info, "format_version": 1}))
    inputs = result.data.inputs("test", "text")[:16]
    assert torch.equal(hf_adapt.load_adapted(str(old)).logits(inputs), _test_logits(result))


def test_predictor_takes_table_rows(text_run):
    _, result = text_run
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    test = result.data.splits["test"]
    rows = [{c: test[i][c] for c in result.data.feature_columns} for i in range(4)]
    rendered = result.data.inputs("test", "text")[:4]
    out = predictor.predict(rows)
    assert [o["label"] for o in out] == [o["label"] for o in predictor.predict(rendered)]
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-5 for o in out)


def test_existing_output_dir_is_refused_then_replaced(text_run, tiny_bert, credit_sample):
    cfg, result = text_run
    from hf_adapt.errors import OutputError

    with pytest.raises(OutputError, match="different hf-adapt run"):
        main(cfg)
    before = (result.output_dir / "adapter_model.safetensors").read_bytes()
    again = config_from_dict(FinetuneConfig, {**vars(cfg), "overwrite_output_dir": True, "max_steps": 1})
    main(again)
    assert (result.output_dir / "adapter_model.safetensors").read_bytes() != before


@pytest.mark.parametrize("regime", ["linear_probe", "full"])
def test_other_regimes_reload_identically(regime, tiny_bert, credit_sample, tmp_path):
    cfg = _text_config(tiny_bert, credit_sample, tmp_path, regime=regime, num_train_epochs=1)
    result = main(cfg)
    expected = _test_logits(result)
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    assert torch.equal(predictor.logits(result.data.inputs("test", "text")[:16]), expected)
    assert not (result.output_dir / "adapter_config.json").exists()


def test_image_folder_with_conv_net_lora(tiny_timm_convnet, digits_folder, tmp_path):
    cfg = config_from_dict(FinetuneConfig, dict(
        model_name_or_path=str(tiny_timm_convnet), base_model_id=None, data=str(digits_folder),
        label_column="label", reset_head=True, image_size=32, num_train_epochs=2, learning_rate=5e-3,
        metric_for_best_model="accuracy", output_dir=str(tmp_path / "img"), report_to="none",
        adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8}, torch_num_threads=1,
    ))
    from safetensors.torch import load_file

    base = load_file(str(tiny_timm_convnet / "model.safetensors"))
    result = main(cfg)
    # BatchNorm statistics stay frozen, so the base model is unchanged and the adapter reproduces the model
    trained = {k.removeprefix("base_model.model."): v for k, v in result.model.state_dict().items()}
    stats = [k for k in base if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 10
    assert all(torch.equal(trained[k], base[k]) for k in stats)
    card = ModelCard.load(result.output_dir / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.base_model is None
    assert card.data.license is None  # not given: omitted, never guessed
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    images = result.data.inputs("test", "image")[:16]  # same batch as _test_logits: bitwise equal
    assert torch.equal(predictor.logits(images), _test_logits(result))


@pytest.mark.parametrize("overrides, error", [
    ({"label_column": "target"}, "label column 'target' not found"),
    ({"model_name_or_path": "/nonexistent/model"}, "could not be loaded"),
    ({"adapter": {"peft_type": "NOT_A_METHOD"}}, "is not a peft method"),
    ({"text_template": "{no_such_column}"}, r"text_template names columns \['no_such_column'\] that the data lacks"),
])
def test_bad_input_fails_before_training_and_leaves_nothing(overrides, error, tiny_bert, credit_sample, tmp_path):
    from hf_adapt.errors import HfAdaptError

    with pytest.raises(HfAdaptError, match=error):  # the adapter is refused as the config is built, the rest in main
        main(_text_config(tiny_bert, credit_sample, tmp_path, **overrides))
    assert list(tmp_path.iterdir()) == [], "partial output left behind"


def test_cli_reports_bad_input_in_one_line(tiny_bert, credit_sample, tmp_path, capsys):
    from hf_adapt.cli import main as cli_main

    code = cli_main(["finetune", "--model_name_or_path", str(tiny_bert), "--data", str(credit_sample),
                     "--label_column", "target", "--output_dir", str(tmp_path / "o")])
    assert code == 2
    assert "hf-adapt finetune: error: label column 'target' not found" in capsys.readouterr().err


def test_load_adapted_from_a_hub_repo(text_run, tmp_path):
    """The Hub path: snapshot_download from a local Hub server, then identical predictions."""
    import os
    import subprocess
    import sys

    from tests.hub_server import LocalHub

    _, result = text_run
    texts = result.data.inputs("test", "text")[:4]
    expected = hf_adapt.load_adapted(str(result.output_dir)).logits(texts)
    script = (
        "import json, sys, hf_adapt\n"
        "p = hf_adapt.load_adapted('hf-adapt-tests/credit-lora')\n"
        "print(json.dumps(p.logits(json.loads(sys.argv[1])).tolist()))\n"
    )
    with LocalHub({"hf-adapt-tests/credit-lora": result.output_dir}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "HF_TOKEN": "hf_fake_token_for_tests", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(texts)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert any("/resolve/" in r and "adapter_model.safetensors" in r for r in hub.requests)
    assert torch.equal(torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1])), expected)


def test_output_folder_cannot_switch_on_remote_code(text_run, tmp_path):
    import shutil

    from hf_adapt.errors import ModelError
    from hf_adapt.outputs import read_json, write_json

    _, result = text_run
    copy = tmp_path / "copy"
    shutil.copytree(result.output_dir, copy)
    info = read_json(copy / "hf_adapt.json")
    info["model"]["trust_remote_code"] = True
    write_json(copy / "hf_adapt.json", info)
    with pytest.raises(ModelError, match="needs trust_remote_code=True"):
        hf_adapt.load_adapted(str(copy))


def test_overwrite_never_deletes_a_folder_hf_adapt_did_not_write(tiny_bert, credit_sample, tmp_path):
    from hf_adapt.errors import OutputError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    cfg = _text_config(tiny_bert, credit_sample, tmp_path, overwrite_output_dir=True)
    with pytest.raises(OutputError, match="not an hf-adapt run"):
        main(cfg)
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_secrets_in_data_kwargs_are_not_written(tiny_bert, credit_sample, tmp_path):
    cfg = _text_config(tiny_bert, credit_sample, tmp_path, max_steps=1,
                       data_kwargs={"token": "hf_secret_value", "encoding": "utf-8"})
    result = main(cfg)
    saved = (result.output_dir / "config.yaml").read_text()
    assert "hf_secret_value" not in saved and "<redacted>" in saved and "utf-8" in saved


def test_divergence_stops_the_run_and_saves_nothing(tiny_bert, credit_sample, tmp_path, capsys):
    from hf_adapt.cli import main as cli_main

    code = cli_main(["finetune", "--model_name_or_path", str(tiny_bert), "--data", str(credit_sample),
                     "--base_model_id", "hf-adapt-tests/tiny-bert", "--learning_rate", "1e30", "--report_to", "none",
                     "--logging_steps", "2", "--output_dir", str(tmp_path / "o")])
    assert code == 2
    assert "training diverged: the loss was NaN or infinite at optimiser step" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "a diverged run left an output or staging folder"


def test_a_planted_pickle_is_refused_and_never_runs(text_run, tmp_path):
    """A fake adapter folder (from the Hub, say) whose weights are a pickle that runs code when unpickled."""
    import pickle
    import shutil

    from hf_adapt.errors import ModelError

    _, result = text_run
    fake = tmp_path / "fake"
    shutil.copytree(result.output_dir, fake)
    (fake / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (fake / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelError, match="loads adapters only from safetensors"):
        hf_adapt.load_adapted(str(fake))
    assert not marker.exists(), "the pickle ran"


def test_an_adapter_for_another_label_map_is_refused_by_name(text_run, tmp_path):
    import shutil

    from hf_adapt.errors import ModelError

    _, result = text_run
    other = tmp_path / "other"
    shutil.copytree(result.output_dir, other)
    (other / "label_map.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b", "2": "c"},
                                                      "label2id": {"a": 0, "b": 1, "c": 2}}))
    with pytest.raises(ModelError, match="does not fit the model .* number of labels differ"):
        hf_adapt.load_adapted(str(other))


def test_an_adapter_is_refused_on_other_base_weights_of_the_same_shapes(text_run, tiny_bert, tmp_path):
    """hf_adapt.json records a fingerprint of the base weights trained on; the same architecture with other
    weights (another checkpoint or revision) is refused by name, while an identical copy loads."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hf_adapt.errors import ModelError

    _, result = text_run
    for name, change in (("same", False), ("other", True)):
        base = tmp_path / f"{name}_base"
        shutil.copytree(tiny_bert, base)
        if change:
            weights = load_file(base / "model.safetensors")
            key = next(k for k in weights if k.endswith("word_embeddings.weight"))
            weights[key] = weights[key] + 0.01
            save_file(weights, base / "model.safetensors")
        out = tmp_path / f"{name}_out"
        shutil.copytree(result.output_dir, out)
        info = json.loads((out / "hf_adapt.json").read_text())
        assert info["model"]["weights_fingerprint"]
        info["model"]["name_or_path"] = str(base)
        (out / "hf_adapt.json").write_text(json.dumps(info))
        if change:
            with pytest.raises(ModelError, match="trained on other base weights"):
                hf_adapt.load_adapted(str(out))
        else:
            assert hf_adapt.load_adapted(str(out)).labels == ["bad", "good"]


def test_texts_longer_than_max_length_are_counted_in_one_warning(tiny_bert, credit_sample, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="hf_adapt"):
        main(_text_config(tiny_bert, credit_sample, tmp_path, max_length=24, max_steps=1, num_train_epochs=1))
    cut = [r.getMessage() for r in caplog.records if "longer than max_length" in r.getMessage()]
    assert len(cut) == 1 and "texts longer than max_length 24 tokens are truncated: train " in cut[0], cut
