"""The speed options (hf_adapt.speed, group_by_length): a compiled model saves and reloads to the same logits,
length-grouped batches hold every row once with less padding, and what this machine cannot run is refused by
field before anything is written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError
from hf_adapt.recipes.finetune import FinetuneConfig, main

CUDA = torch.cuda.is_available()


def _config(tiny_bert, credit_sample, tmp_path, **overrides) -> FinetuneConfig:
    values = dict(model_name_or_path=str(tiny_bert), base_model_id="hf-adapt-tests/tiny-bert", data=str(credit_sample),
                  output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=16,
                  learning_rate=5e-3, max_length=128, report_to="none", torch_num_threads=1, bootstrap_resamples=0)
    return config_from_dict(FinetuneConfig, {**values, **overrides})


def _logits(result, model) -> torch.Tensor:
    inputs = result.data.inputs("test", "text")[:16]
    batch = result.backbone.preprocessor.collate(inputs, train=False)
    model.eval()
    with torch.no_grad():
        return result.backbone.logits(model, batch)


def test_a_compiled_run_saves_and_reloads_to_the_same_logits(tiny_bert, credit_sample, tmp_path, monkeypatch):
    """The recipe's files and reload with the model wrapped by torch.compile. Dynamo's eager backend wraps it as
    inductor does (inductor takes minutes to compile on 2 cores; benchmarks/speed.py runs it and checks its
    losses)."""
    from accelerate.utils import TorchDynamoPlugin
    from torch._dynamo.eval_frame import OptimizedModule

    from hf_adapt import speed

    real = speed.accelerator_kwargs
    assert real(_config(tiny_bert, credit_sample, tmp_path, torch_compile=True))["dynamo_plugin"].backend == "INDUCTOR"
    monkeypatch.setattr(speed, "accelerator_kwargs", lambda cfg: {"dynamo_plugin": TorchDynamoPlugin(backend="eager")})
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    result = main(_config(tiny_bert, credit_sample, tmp_path, torch_compile=True, max_train_samples=48))
    assert counters["stats"]["unique_graphs"] > 0, "accelerator.prepare did not compile the model"
    assert not isinstance(result.model, OptimizedModule)  # the saved one, as without torch_compile
    keys = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert keys and not [k for k in keys if "_orig_mod" in k]  # the files are those of an uncompiled run
    expected = _logits(result, result.model)
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    assert torch.equal(predictor.logits(result.data.inputs("test", "text")[:16]), expected)


def test_length_grouped_batches_hold_every_row_once_with_less_padding():
    from hf_adapt.loop import ExampleDataset, make_loader

    lengths = [int(n) for n in torch.randint(4, 200, (400,), generator=torch.Generator().manual_seed(0))]
    dataset = ExampleDataset(list(range(400)), [0] * 400)

    def batches(grouped: bool, seed: int = 1) -> list[list[int]]:
        loader = make_loader(dataset, lambda rows, train: torch.tensor(rows), 8, train=True, seed=seed,
                             lengths=lengths if grouped else None)
        return [batch["inputs"].tolist() for batch in loader]

    def padded(batch_list) -> int:  # tokens a padded batch computes
        return sum(len(b) * max(lengths[i] for i in b) for b in batch_list)

    grouped = batches(True)
    assert sorted(i for b in grouped for i in b) == list(range(400))
    assert padded(grouped) < 0.75 * padded(batches(False))
    assert grouped == batches(True) and grouped != batches(True, seed=2)  # seeded, as the shuffled loader is
    loader = make_loader(dataset, lambda rows, train: torch.tensor(rows), 8, train=True, seed=1, lengths=lengths)
    assert [b["inputs"].tolist() for b in loader] != [b["inputs"].tolist() for b in loader]  # a new order each epoch


def test_a_length_grouped_run_trains_and_reloads(tiny_bert, credit_sample, tmp_path):
    result = main(_config(tiny_bert, credit_sample, tmp_path, group_by_length=True))
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    assert torch.equal(predictor.logits(result.data.inputs("test", "text")[:16]), _logits(result, result.model))


@pytest.mark.parametrize("values, match", [
    ({"torch_compile_mode": "max-autotune"}, "torch_compile_mode: max-autotune applies with torch_compile: true"),
    ({"liger_kernel": True, "family": "timm"}, "liger_kernel .* family timm has no Liger kernels"),
    ({"group_by_length": True, "balanced_sampler": True}, "group_by_length .* balanced_sampler .* set one of them"),
    ({"group_by_length": True, "family": "timm"}, "group_by_length .* family timm reads images"),
])
def test_options_that_make_no_sense_together_are_refused_when_read(values, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(FinetuneConfig, values)


@pytest.mark.skipif(CUDA, reason="checks the refusals of a machine without a CUDA GPU")
@pytest.mark.parametrize("values, match", [
    ({"tf32": True}, "tf32: true needs a CUDA GPU"),
    ({"liger_kernel": True}, "liger_kernel: true needs (the liger-kernel package|a CUDA GPU)"),
])
def test_gpu_options_are_refused_on_this_machine_before_anything_is_written(values, match, tiny_bert, credit_sample,
                                                                             tmp_path):
    with pytest.raises(ConfigError, match=match):
        main(_config(tiny_bert, credit_sample, tmp_path, **values))
    assert not list(tmp_path.iterdir())


def test_group_by_length_is_refused_for_images(tiny_timm_convnet, digits_folder, tmp_path):
    with pytest.raises(ConfigError, match="group_by_length groups texts .* reads image inputs"):
        main(config_from_dict(FinetuneConfig, dict(
            model_name_or_path=str(tiny_timm_convnet), base_model_id=None, data=str(digits_folder), label_column="label",
            reset_head=True, image_size=32, metric_for_best_model="accuracy",
            output_dir=str(tmp_path / "out"), report_to="none", torch_num_threads=1, group_by_length=True)))
    assert not (tmp_path / "out").exists()


def test_liger_refuses_an_architecture_it_has_no_kernels_for(tiny_bert):
    pytest.importorskip("liger_kernel")
    from transformers import AutoModelForSequenceClassification

    from hf_adapt.speed import check_liger_model

    with pytest.raises(ConfigError, match="model type 'bert' has no Liger kernels"):
        check_liger_model(AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2))


def test_feedback_hands_the_speed_options_to_trl_and_refuses_them_twice(tmp_path):
    from types import SimpleNamespace

    from hf_adapt.recipes.feedback import FeedbackConfig, check_taken, trl_config

    cfg = FeedbackConfig(feedback="log.jsonl", torch_compile=True, torch_compile_mode="max-autotune")
    args = trl_config(cfg, str(tmp_path), {}, 1)
    assert (args.torch_compile, args.torch_compile_mode, args.use_liger_kernel, args.tf32) == (
        True, "max-autotune", False, None)
    assert trl_config(FeedbackConfig(feedback="log.jsonl"), str(tmp_path), {}, 1).torch_compile is False
    with pytest.raises(ConfigError, match=r"trainer_args sets \['use_liger_kernel'\].* use_liger_kernel is liger_kernel"):
        FeedbackConfig(feedback="log.jsonl", trainer_args={"use_liger_kernel": True})
    asked = FeedbackConfig(feedback="log.jsonl", trainer_args={"padding_free": True})
    with pytest.raises(ConfigError, match="padding_free: true is turned off by TRL"):
        check_taken(asked, SimpleNamespace(padding_free=False))  # what TRL 1.16's DPOTrainer does with it
    check_taken(asked, SimpleNamespace(padding_free=True))


def test_a_continual_stream_trains_each_experience_on_length_grouped_batches(tiny_bert, credit_sample, tmp_path,
                                                                            monkeypatch):
    from hf_adapt import speed
    from hf_adapt.recipes.continual import ContinualConfig
    from hf_adapt.recipes.continual import main as continual_main

    grouped = []
    real = speed.row_lengths
    monkeypatch.setattr(speed, "row_lengths", lambda p, rows, on: grouped.append((len(rows), on)) or real(p, rows, on))
    cfg = config_from_dict(ContinualConfig, dict(
        model_name_or_path=str(tiny_bert), base_model_id=None, data=str(credit_sample), label_column="creditability",
        scenario="domain", experiences=[{"name": "own", "where": {"housing": ["own"]}},
                                        {"name": "other", "where": {"housing": ["rent", "for free"]}}],
        output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=8, max_length=64,
        report_to="none", torch_num_threads=1, group_by_length=True))
    continual_main(cfg)
    assert len(grouped) == 2 and all(n > 8 and on for n, on in grouped)  # each experience's training rows
    assert (tmp_path / "out" / "hf_adapt.json").is_file()


def test_liger_patches_a_llama_and_leaves_its_forward(tiny_llama):
    """Patching needs no GPU (running the kernels does): Liger's RMSNorm and SwiGLU replace the modules' forwards,
    and the model's own forward stays, so our tasks still read its logits."""
    pytest.importorskip("liger_kernel")
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from hf_adapt.speed import apply_liger

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    apply_liger(model, SimpleNamespace(liger_kernel=True))
    assert model.model.norm.forward.__func__.__module__.startswith("liger_kernel")
    assert model.model.layers[0].mlp.forward.__func__.__module__.startswith("liger_kernel")
    assert model.forward.__func__.__module__.startswith("transformers")  # no fused linear cross-entropy forward
