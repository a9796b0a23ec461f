"""The training loop's switches, on the tiny BERT: accumulation, early stopping, precision, trackers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hf_adapt.config import config_from_dict
from hf_adapt.recipes.finetune import FinetuneConfig, main


def _run(tiny_bert, credit_sample, tmp_path, **overrides):
    values = dict(model_name_or_path=str(tiny_bert), base_model_id=None, data=str(credit_sample),
                  output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=5e-3,
                  max_length=64, report_to="none", num_train_epochs=1, torch_num_threads=1)
    values.update(overrides)
    result = main(config_from_dict(FinetuneConfig, values))
    return result, json.loads((result.output_dir / "train_results.json").read_text())


def test_gradient_accumulation_counts_optimizer_steps(tiny_bert, credit_sample, tmp_path):
    result, info = _run(tiny_bert, credit_sample, tmp_path, gradient_accumulation_steps=3, num_train_epochs=2)
    batches = math.ceil(info["data"]["splits"]["train"] / 16)
    assert info["steps"] == 2 * math.ceil(batches / 3)


def test_early_stopping_and_best_epoch(tiny_bert, credit_sample, tmp_path):
    # learning rate 0: validation never improves after epoch 1, so patience 1 stops after epoch 2
    result, info = _run(tiny_bert, credit_sample, tmp_path, learning_rate=0.0, head_learning_rate=None, num_train_epochs=5,
                        early_stopping_patience=1, metric_for_best_model="log_loss")
    assert [row["epoch"] for row in info["history"]] == [1, 2]
    assert info["best_epoch"] == 1


def test_max_steps_overrides_epochs(tiny_bert, credit_sample, tmp_path):
    _, info = _run(tiny_bert, credit_sample, tmp_path, max_steps=3, num_train_epochs=10)
    assert info["steps"] == 3 and len(info["history"]) == 1


def test_bf16_autocast_trains_on_cpu(tiny_bert, credit_sample, tmp_path):
    result, info = _run(tiny_bert, credit_sample, tmp_path, mixed_precision="bf16", max_steps=2)
    assert info["steps"] == 2
    assert all(math.isfinite(v) for v in result.test_metrics.values() if v == v)


def test_tensorboard_tracker_logs_into_the_output(tiny_bert, credit_sample, tmp_path):
    pytest.importorskip("tensorboard")
    result, _ = _run(tiny_bert, credit_sample, tmp_path, report_to="tensorboard", max_steps=2, logging_steps=1)
    events = list(result.output_dir.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file in the output dir"


def test_gradual_unfreeze_opens_one_layer_group_per_stage():
    """Head alone first, then one more group from the top every `every_epochs` epochs; the frozen
    groups' gradients are dropped and their BatchNorm statistics stay fixed."""
    import timm
    from accelerate import Accelerator

    from hf_adapt.loop import GradualUnfreeze, layer_depths

    model = timm.create_model("mobilenetv2_035", pretrained=False, num_classes=3)
    callback = GradualUnfreeze(["classifier"], every_epochs=2)
    callback.on_train_start(Accelerator(cpu=True), model, None)
    depths, top = layer_depths([n for n, _ in model.named_parameters()], ["classifier"])
    frozen_names = lambda: {n for n, p in model.named_parameters() if any(p is f for f in callback.frozen)}  # noqa: E731
    for epoch, lowest in [(1, top), (2, top), (3, top - 1), (5, top - 2)]:
        model.train()
        callback.on_epoch_start(epoch, model)
        assert frozen_names() == {n for n, d in depths.items() if d < lowest}, epoch
    assert not model.bn1.training and model.classifier.training  # the frozen stem's BatchNorm is held in eval mode
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    callback.before_optimizer_step(model)
    assert model.bn1.weight.grad is None and model.classifier.weight.grad is not None


def test_layer_lr_decay_shrinks_rates_towards_the_input():
    from transformers import BertConfig, BertForSequenceClassification

    from hf_adapt.loop import LoopSettings, make_optimizer

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                     num_attention_heads=2, intermediate_size=32))
    settings = LoopSettings(num_train_epochs=1, learning_rate=1.0, head_learning_rate=10.0,
                            head_names=["classifier"], layer_lr_decay=0.5)
    optimizer = make_optimizer(model, settings)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params["classifier.weight"])] == 10.0
    assert lr_of[id(params["bert.pooler.dense.weight"])] == 1.0  # the top group below the head
    assert lr_of[id(params["bert.encoder.layer.2.output.dense.weight"])] == 0.5
    assert lr_of[id(params["bert.encoder.layer.0.output.dense.weight"])] == 0.125
    assert lr_of[id(params["bert.embeddings.word_embeddings.weight"])] == 0.0625
    flat = make_optimizer(model, LoopSettings(num_train_epochs=1, learning_rate=1.0))
    assert {g["lr"] for g in flat.param_groups} == {1.0}


def test_layer_depths_read_resnet_style_stages():
    from hf_adapt.loop import layer_depths

    names = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.weight", "fc.weight"]
    depths, top = layer_depths(names, ["fc"])
    assert depths["conv1.weight"] == 0 < depths["layer1.0.conv1.weight"] < depths["layer4.1.bn2.weight"] < top
    assert depths["fc.weight"] == top


def test_a_nan_loss_stops_training_and_names_the_step_and_the_last_good_checkpoint(tmp_path):
    from accelerate import Accelerator

    from hf_adapt.errors import TrainingDivergedError
    from hf_adapt.loop import ExampleDataset, LoopSettings, fit, make_loader

    class PoisonedTask:
        """Cross-entropy, except that the 5th batch's loss is NaN (as an fp32 overflow would make it)."""

        def __init__(self):
            self.calls = 0

        def __call__(self, model, batch):
            self.calls += 1
            logits = model(batch["inputs"])
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            return {"loss": loss * float("nan") if self.calls == 5 else loss, "logits": logits}

    torch.manual_seed(0)
    inputs = [torch.randn(4) for _ in range(64)]
    labels = [int(x.sum() > 0) for x in inputs]
    loader = make_loader(ExampleDataset(inputs, labels), lambda xs, train: torch.stack(xs), 8, train=True, seed=0)
    model = torch.nn.Linear(4, 2)
    settings = LoopSettings(num_train_epochs=3, logging_steps=100, metric_for_best_model="accuracy")
    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite at optimiser step 5 \(epoch 1\)"):
        fit(Accelerator(cpu=True), model, PoisonedTask(), loader, None, settings)

    # with checkpoints every 2 steps: the message names step 4's, and no checkpoint holds the NaN step
    from hf_adapt.checkpoints import Phase

    phase = Phase(tmp_path / "train", every_steps=2, keep=5, resume_from=None)
    with pytest.raises(TrainingDivergedError, match=f"the last good checkpoint is {tmp_path / 'train' / 'step-4'}"):
        fit(Accelerator(cpu=True), torch.nn.Linear(4, 2), PoisonedTask(), loader, None, settings, checkpoints=phase)
    assert sorted(p.name for p in phase.directory.iterdir()) == ["step-2", "step-4"]


def test_a_training_batch_draws_its_random_numbers_from_its_own_seed():
    """Augmentation (here: torch, random and numpy draws in the collate) depends on the seed and the rows of the
    batch, not on what ran before, and leaves the global streams untouched: what makes a mid-epoch resume exact
    although Accelerate collates one batch ahead."""
    import random

    import numpy as np

    from hf_adapt.loop import training_loader

    def augment(rows):
        return torch.tensor(rows, dtype=torch.float64) + torch.rand(len(rows)) + random.random() + np.random.rand()

    def epoch(consume_before: int):
        torch.manual_seed(consume_before), random.seed(consume_before), np.random.seed(consume_before)
        loader = training_loader(list(range(20)), augment, batch_size=4, seed=3)
        before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
        batches = list(loader)
        assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
        assert (np.random.get_state()[1] == before[2]).all(), "the global streams were drawn from"
        return batches

    first, second = epoch(0), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len({tuple(b.tolist()) for b in first}) == 5 and not torch.equal(first[0], first[0].round())


class _Preempted(Exception):
    pass


def _noisy_fit(tmp_path, settings, accumulation: int, stop_after: int | None = None, resume_from=None,
               every: int | None = None):
    """``fit`` on a dropout MLP whose collate adds random noise (an augmentation); with ``every``, checkpointed, and
    with ``stop_after`` interrupted right after that step's checkpoint (as a SIGKILL would, minus the process)."""
    from hf_adapt.checkpoints import Phase
    from hf_adapt.loop import ExampleDataset, fit, make_loader
    from hf_adapt.runtime import make_accelerator

    class Interrupted(Phase):
        def save(self, accelerator, step, *args, **kwargs):
            path = super().save(accelerator, step, *args, **kwargs)
            if step == stop_after:
                raise _Preempted(path)
            return path

    torch.manual_seed(0)
    inputs = [torch.randn(4) for _ in range(60)]
    labels = [int(x.sum() > 0) for x in inputs]
    noisy = lambda xs, train: torch.stack(xs) + 0.1 * torch.randn(len(xs), 4)  # noqa: E731
    loaders = (make_loader(ExampleDataset(inputs, labels), noisy, 8, train=True, seed=1),
               make_loader(ExampleDataset(inputs[:16], labels[:16]), noisy, 8, train=False, seed=1))
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
    phase = Interrupted(tmp_path / "train", every, keep=3, resume_from=resume_from) if every else None
    task = lambda m, batch: (lambda logits: {"loss": torch.nn.functional.cross_entropy(logits, batch["labels"]),  # noqa: E731
                                             "logits": logits})(m(batch["inputs"]))
    accelerator = make_accelerator("no", accumulation, "none")
    model, result = fit(accelerator, model, task, *loaders, settings, checkpoints=phase)
    return accelerator.unwrap_model(model).state_dict(), result


@pytest.mark.parametrize("case, settings, accumulation, kill_at", [
    # 8 batches an epoch; max_steps 10 ends epoch 2 mid-way, at a checkpoint: no batch may be trained past it
    ("max_steps mid-epoch", dict(num_train_epochs=5, max_steps=10), 1, 10),
    ("gradient accumulation", dict(num_train_epochs=3), 2, 6),  # 4 optimiser steps an epoch
    ("early stopping", dict(num_train_epochs=6, early_stopping_patience=1, metric_for_best_model="log_loss",
                            learning_rate=0.3), 1, 12),
])
def test_an_interrupted_fit_resumes_to_the_uninterrupted_result(case, settings, accumulation, kill_at, tmp_path):
    from hf_adapt.loop import LoopSettings

    settings = LoopSettings(**{"learning_rate": 0.05, "logging_steps": 2, "metric_for_best_model": "accuracy",
                               **settings})
    expected, whole = _noisy_fit(tmp_path / "whole", settings, accumulation)
    assert case != "early stopping" or len(whole.history) < settings.num_train_epochs, "it must stop early"
    with pytest.raises(_Preempted) as stopped:
        _noisy_fit(tmp_path / "run", settings, accumulation, stop_after=kill_at, every=2)
    got, resumed = _noisy_fit(tmp_path / "run", settings, accumulation, resume_from=stopped.value.args[0], every=2)
    assert resumed.steps == whole.steps and resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
    assert all(torch.equal(expected[k], got[k]) for k in expected), case


@pytest.mark.parametrize("rows, batches", [(16, [8, 8]), (17, [8, 8]), (18, [8, 8, 2]), (1, [1])])
def test_a_training_batch_of_one_row_is_left_out(rows, batches):
    """BatchNorm cannot train on one row: a last batch of one sits the epoch out (another row each epoch)."""
    from hf_adapt.loop import ExampleDataset, make_loader

    loader = make_loader(ExampleDataset(list(range(rows)), [0] * rows), lambda xs, train: torch.tensor(xs), 8,
                         train=True, seed=0)
    assert [len(batch["labels"]) for batch in loader] == batches
    seen = [{int(x) for batch in loader for x in batch["inputs"]} for _ in range(2)]
    assert rows != 17 or seen[0] != seen[1]  # the row left out changes with the epoch
