"""Strategies and head growth as units: buffers keep their budget and balance, state round-trips,
the head grows without touching what it knew, and bad options fail with the option's name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_adapt.continual import STRATEGIES, make_strategy, register_strategy, strategy_class
from hf_adapt.continual.base import ContinualRun, ContinualTask, Experience, Strategy
from hf_adapt.continual.heads import grow_head
from hf_adapt.errors import ConfigError


def _experience(name: str, task: int, labels: list[int], trained_at: int) -> Experience:
    return Experience(name=name, task=task, classes=sorted(set(labels)), labels={"train": labels, "validation": labels,
                      "test": labels}, splits={}, data=None, description={}, trained_at=trained_at)


def _run(experiences, scenario="class") -> ContinualRun:
    return ContinualRun(scenario, experiences, [str(i) for i in range(10)], backbone=None, accelerator=None, seed=0)


class Tiny(nn.Module):
    def __init__(self, classes: int = 2):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        return self.classifier(torch.relu(self.body(x)))


def test_registry_is_checked_and_lazy():
    assert set(STRATEGIES) >= {"naive", "replay", "ewc", "lwf", "adapter_per_experience", "joint"}
    assert all(isinstance(target, str) for target in STRATEGIES.values())  # nothing imported until asked
    with pytest.raises(ConfigError, match="not one of"):
        strategy_class("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("replay", Strategy)

    class Mine(Strategy):
        name = "mine"

    register_strategy("mine_for_test", Mine)
    try:
        assert isinstance(make_strategy("mine_for_test"), Mine)
    finally:
        del STRATEGIES["mine_for_test"]


@pytest.mark.parametrize("name, options, message", [
    ("replay", {"buffer_size": 0}, "buffer_size >= 1"),
    ("replay", {"selection": "lucky"}, "selection"),
    ("replay", {"bufer_size": 10}, "strategy_options for 'replay'"),
    ("ewc", {"ewc_lambda": 0}, "ewc_lambda"),
    ("lwf", {"temperature": -1}, "temperature"),
    ("adapter_per_experience", {"routing": "random"}, "routing"),
])
def test_bad_options_are_named(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy(name, options)


def test_class_balanced_buffer_keeps_its_budget_and_every_class():
    a = _experience("a", 0, [0] * 30 + [1] * 30, 1)
    b = _experience("b", 1, [2] * 30 + [3] * 30, 2)
    run = _run([a, b])
    replay = make_strategy("replay", {"buffer_size": 20})
    replay.after_experience(run, a, None)
    assert len(replay.buffer) == 20 and sorted(set(replay.labels)) == [0, 1]
    first = set(replay.buffer)
    replay.after_experience(run, b, None)
    assert len(replay.buffer) == 20
    assert {label: replay.labels.count(label) for label in set(replay.labels)} == {0: 5, 1: 5, 2: 5, 3: 5}
    assert {row for row in replay.buffer if row[0] == "a"} <= first  # old rows shrink, none are invented
    rows = replay.train_rows(run, b)
    assert len(rows) == 60 + 10  # b's own rows, plus the buffered rows of a (b's are already there)


def test_domain_stream_keeps_every_domain_in_a_balanced_buffer():
    a = _experience("a", 0, [0] * 30 + [1] * 30, 1)
    b = _experience("b", 1, [0] * 30 + [1] * 30, 2)
    replay = make_strategy("replay", {"buffer_size": 20})
    run = _run([a, b], "domain")
    replay.after_experience(run, a, None)
    replay.after_experience(run, b, None)
    assert sum(row[0] == "a" for row in replay.buffer) == 10


def test_reservoir_buffer_is_a_uniform_sample_of_the_stream():
    a = _experience("a", 0, [0] * 500, 1)
    b = _experience("b", 1, [1] * 500, 2)
    replay = make_strategy("replay", {"buffer_size": 100, "selection": "reservoir"})
    run = _run([a, b])
    replay.after_experience(run, a, None)
    replay.after_experience(run, b, None)
    assert len(replay.buffer) == 100 and replay.seen == 1000
    assert 30 <= sum(row[0] == "a" for row in replay.buffer) <= 70  # about half from each


def test_replay_state_round_trips():
    a = _experience("a", 0, [0, 1] * 20, 1)
    replay = make_strategy("replay", {"buffer_size": 8})
    replay.after_experience(_run([a]), a, None)
    facts, tensors = replay.state()
    again = make_strategy("replay", {"buffer_size": 8})
    again.load_state(facts, tensors)
    assert again.buffer == replay.buffer and again.labels == replay.labels and again.seen == replay.seen


def test_joint_trains_on_everything_learnt_so_far():
    a, b, c = _experience("a", 0, [0] * 5, 1), _experience("b", 1, [1] * 7, 2), _experience("c", 2, [2] * 3, 3)
    run = _run([a, b, c])
    run.step = 2
    assert len(make_strategy("joint").train_rows(run, b)) == 12


def test_task_masks_restrict_each_example_to_its_task():
    a, b = _experience("a", 0, [0, 1], 1), _experience("b", 1, [2, 3], 2)
    mask = _run([a, b], "task").task_classes(4)
    assert mask.tolist() == [[True, True, False, False], [False, False, True, True]]
    assert _run([a, b], "class").task_classes(4) is None
    task = ContinualTask(lambda model, inputs: inputs, mask)
    batch = {"inputs": torch.zeros(2, 4), "labels": torch.tensor([1, 2]), "task": torch.tensor([0, 1])}
    logits = task.logits(None, batch)
    assert logits.argmax(-1).tolist() == [0, 2]  # ties broken among the allowed classes only
    assert task(None, batch)["loss"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)


def test_grow_head_keeps_old_rows_under_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(Tiny(2), LoraConfig(r=2, target_modules=["body"], modules_to_save=["classifier"]))
    x = torch.randn(5, 4)
    before = model(x)
    assert grow_head(model, ["classifier"], 2, 5) == 2  # the frozen original and the trainable copy
    after = model(x)
    assert after.shape == (5, 5)
    torch.testing.assert_close(after[:, :2], before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n and "classifier" in n for n in trainable)
    assert not any("original_module" in n for n in trainable)
    assert grow_head(model, ["classifier"], 5, 5) == 0
    with pytest.raises(ValueError, match="no 7-output linear"):
        grow_head(model, ["classifier"], 7, 9)


def test_ewc_penalises_moving_important_parameters_and_its_state_round_trips():
    ewc = make_strategy("ewc", {"ewc_lambda": 10.0})
    model = Tiny(2)
    ewc.fisher = {"classifier.weight": torch.ones(2, 8)}
    ewc.anchor = {"classifier.weight": model.classifier.weight.detach().clone()}
    base = ContinualTask(lambda m, inputs: m(inputs))
    batch = {"inputs": torch.randn(3, 4), "labels": torch.tensor([0, 1, 0])}
    task = ewc.training_task(None, base, model)
    assert task(model, batch)["loss"].item() == pytest.approx(base(model, batch)["loss"].item())
    with torch.no_grad():
        model.classifier.weight += 0.1
    penalty = task(model, batch)["loss"].item() - base(model, batch)["loss"].item()
    assert penalty == pytest.approx(10.0 / 2 * 16 * 0.01, rel=1e-4)
    facts, tensors = ewc.state()
    again = make_strategy("ewc")
    again.load_state(facts, tensors)
    torch.testing.assert_close(again.fisher["classifier.weight"], ewc.fisher["classifier.weight"])
    torch.testing.assert_close(again.anchor["classifier.weight"], ewc.anchor["classifier.weight"])


def test_buffer_slots_a_small_class_cannot_fill_go_to_the_others():
    from hf_adapt.continual.replay import _balanced_quota

    assert _balanced_quota([2, 30, 30], 20) == [2, 9, 9]
    assert _balanced_quota([5, 5], 20) == [5, 5]
    assert _balanced_quota([9, 9, 9], 2) == [1, 1, 0]
    a = _experience("a", 0, [0] * 2 + [1] * 40, 1)
    replay = make_strategy("replay", {"buffer_size": 20})
    replay.after_experience(_run([a]), a, None)
    assert len(replay.buffer) == 20 and replay.labels.count(0) == 2


def test_lwf_distils_the_old_tasks_even_where_the_task_mask_hides_them():
    a, b = _experience("a", 0, [0, 1], 1), _experience("b", 1, [2, 3], 2)
    run = _run([a, b], "task")
    run.step, run.head_size = 2, 4
    torch.manual_seed(0)
    model = Tiny(4)
    lwf = make_strategy("lwf", {"alpha": 1.0, "temperature": 2.0})
    lwf.before_experience(run, b, model)
    assert lwf.old_classes == 2
    with torch.no_grad():
        model.classifier.weight[0] += 1.0  # the student drifts on the old task's classes
    base = ContinualTask(lambda m, inputs: m(inputs), run.task_classes(4))
    batch = {"inputs": torch.randn(6, 4), "labels": torch.tensor([2, 3] * 3), "task": torch.ones(6, dtype=torch.long)}
    extra = lwf.training_task(run, base, model)(model, batch)["loss"] - base(model, batch)["loss"]
    assert extra.item() > 1e-3
    extra.backward()
    assert model.classifier.weight.grad[:2].abs().sum() > 0


def test_confidence_routing_ranks_adapters_beyond_float32_saturation():
    from hf_adapt.continual.routing import _margin

    logits = torch.tensor([[40.0, 0.0, -1e4], [25.0, 0.0, -1e4]])  # both softmax to exactly 1.0 in float32
    assert torch.softmax(logits, -1).amax(-1).tolist() == [1.0, 1.0]
    margin = _margin(logits)
    assert margin[0] > margin[1] > 20
