"""How a feedback round did, on prompts it never trained on, against the model it started from.

The policy is a peft model; its parent is the same model with the parent's adapter (a feedback
output it continued) or with no adapter (the base). :func:`as_parent` switches between them, so
both are scored with one copy of the weights.

- **Held-out pairs** (``prompt``, ``chosen``, ``rejected``): a model *prefers* the chosen answer when
  it gives it the higher log-likelihood. ``preference_accuracy`` is how often it does, for the parent
  (``_before``) and the policy. The policy *wins* a pair when it prefers the chosen answer by a larger
  log-likelihood margin than the parent: that is DPO's implicit-reward accuracy, and the pairs judge's
  ``win_rate`` (a tie counts half). ``reward_margin`` is the mean implicit-reward margin,
  beta x (policy margin - parent margin).
- **A judge** (a rule function or a reward model): both models answer each held-out prompt
  (greedy), the judge scores both answers, and the policy wins where it scores higher.
- ``kl_drift``: the mean per-token KL(policy || parent) over held-out completions, in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from hf_adapt.feedback.trainers import load_function

PARENT_ADAPTER = "hf_adapt_parent"


@contextmanager
def as_parent(model) -> Iterator[None]:
    """Inside, ``model`` computes as its parent: the parent's adapter if one is loaded, else the base."""
    if PARENT_ADAPTER in getattr(model, "peft_config", {}):
        active = model.active_adapter
        model.set_adapter(PARENT_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter(active)
    else:
        with model.disable_adapter():
            yield


def _ids(tokenizer, value: Any, add_generation_prompt: bool = False) -> list[int]:
    """Token ids as TRL's trainers make them: a conversation through the chat template (tokenized by it, so a
    template that writes the bos token gets it once), text through the tokenizer."""
    if isinstance(value, list):
        return list(tokenizer.apply_chat_template(value, add_generation_prompt=add_generation_prompt, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return list(tokenizer(text=value)["input_ids"])


def encode(tokenizer, prompt: Any, completion: Any, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the prompt's length, as TRL's DPO and KTO trainers tokenize them: the
    pair is tokenized together (text completions end with the eos token once), the completion starts where that
    and the prompt alone diverge, and sequences over ``max_length`` lose their end."""
    from trl.data_utils import common_prefix_length

    if isinstance(prompt, list):
        prompt_ids, full = _ids(tokenizer, prompt, add_generation_prompt=True), _ids(tokenizer, prompt + completion)
    else:
        eos = tokenizer.eos_token or ""
        prompt_ids = _ids(tokenizer, prompt)
        full = _ids(tokenizer, prompt + (completion if completion.endswith(eos) else completion + eos))
    return full[:max_length], common_prefix_length(prompt_ids, full)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _padded(encoded: list[tuple[list[int], int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and a mask of the completion tokens each position predicts."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    completion = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, (tokens, prompt_len) in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        attention[row, :len(tokens)] = 1
        completion[row, prompt_len:len(tokens)] = True
    return ids.to(device), attention.to(device), completion.to(device)


def _token_logits(model, ids, attention) -> torch.Tensor:
    """Logits that predict tokens 1..n from positions 0..n-1."""
    return model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()


@torch.no_grad()
def sequence_logprobs(model, tokenizer, rows: list[dict[str, Any]], max_length: int, batch_size: int = 8) -> torch.Tensor:
    """log p(completion | prompt), summed over the completion's tokens, for each row (``prompt``, ``completion``)."""
    device = next(model.parameters()).device
    out = []
    for batch in _batches(rows, batch_size):
        encoded = [encode(tokenizer, row["prompt"], row["completion"], max_length) for row in batch]
        ids, attention, completion = _padded(encoded, tokenizer.pad_token_id, device)
        logps = torch.log_softmax(_token_logits(model, ids, attention), dim=-1)
        token = logps.gather(-1, ids[:, 1:, None]).squeeze(-1)
        out.append((token * completion[:, 1:]).sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def kl_drift(model, tokenizer, rows: list[dict[str, Any]], max_length: int, batch_size: int = 8) -> float:
    """Mean per-token KL(policy || parent) over the completion tokens of ``rows``, in nats."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in _batches(rows, batch_size):
        encoded = [encode(tokenizer, row["prompt"], row["completion"], max_length) for row in batch]
        ids, attention, completion = _padded(encoded, tokenizer.pad_token_id, device)
        policy = torch.log_softmax(_token_logits(model, ids, attention), dim=-1)
        with as_parent(model):
            parent = torch.log_softmax(_token_logits(model, ids, attention), dim=-1)
        per_token = F.kl_div(parent, policy, log_target=True, reduction="none").sum(-1)  # KL(policy || parent)
        mask = completion[:, 1:]
        total += float(per_token[mask].sum())
        tokens += int(mask.sum())
    return total / tokens if tokens else math.nan


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Any], max_new_tokens: int, batch_size: int = 8) -> list[Any]:
    """Greedy answers to ``prompts``; conversational prompts get ``[{"role": "assistant", "content": ...}]``."""
    device = next(model.parameters()).device
    answers = []
    for batch in _batches(prompts, batch_size):
        encoded = [_ids(tokenizer, prompt, add_generation_prompt=True) for prompt in batch]
        width = max(len(ids) for ids in encoded)  # padded on the left, so every answer starts at ``width``
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        output = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for prompt, row in zip(batch, output[:, width:]):
            text = tokenizer.decode(row, skip_special_tokens=True)
            answers.append(text if isinstance(prompt, str) else [{"role": "assistant", "content": text}])
    return answers


def rule_judge(path: str, field: str = "judge") -> Callable[[list, list], list[float]]:
    """A TRL-style reward function ``f(prompts, completions, **kwargs) -> list[float]`` as a judge."""
    function = load_function(path, field)

    def judge(prompts: list, completions: list) -> list[float]:
        scores = function(prompts=prompts, completions=completions)
        return [math.nan if s is None else float(s) for s in scores]

    judge.name = path
    return judge


def reward_model_judge(source: str, max_length: int, batch_size: int = 8) -> Callable[[list, list], list[float]]:
    """A reward model written by ``hf-adapt feedback train --trainer reward`` as a judge."""
    from hf_adapt.feedback.model import load_reward_model

    model, tokenizer = load_reward_model(source)

    @torch.no_grad()
    def judge(prompts: list, completions: list) -> list[float]:
        scores = []
        rows = list(zip(prompts, completions))
        for batch in _batches(rows, batch_size):
            encoded = [encode(tokenizer, p, c, max_length) for p, c in batch]
            ids, attention, _ = _padded(encoded, tokenizer.pad_token_id, next(model.parameters()).device)
            scores += model(input_ids=ids, attention_mask=attention).logits[:, 0].float().tolist()
        return scores

    judge.name = f"reward model {source}"
    return judge


def _wins(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float(((ours > theirs).float() + 0.5 * (ours == theirs).float()).mean()) if len(ours) else math.nan


def pair_metrics(model, tokenizer, pairs: list[dict[str, Any]], max_length: int, beta: float | None,
                 batch_size: int = 8) -> dict[str, float]:
    """Preference accuracy before and after, win rate and margins on held-out pairs.

    ``margin_change`` is the mean change, parent to policy, of log p(chosen) - log p(rejected); with the ``beta``
    of a trainer that has a reference model (DPO, KTO) it is also reported as the implicit ``reward_margin``.
    """
    chosen = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    rejected = [{"prompt": p["prompt"], "completion": p["rejected"]} for p in pairs]
    policy = sequence_logprobs(model, tokenizer, chosen, max_length, batch_size) - \
        sequence_logprobs(model, tokenizer, rejected, max_length, batch_size)
    with as_parent(model):
        parent = sequence_logprobs(model, tokenizer, chosen, max_length, batch_size) - \
            sequence_logprobs(model, tokenizer, rejected, max_length, batch_size)
    change = float((policy - parent).mean())
    return {
        "preference_accuracy": float((policy > 0).float().mean()),
        "preference_accuracy_before": float((parent > 0).float().mean()),
        "pair_win_rate": _wins(policy, parent),
        "margin_change": change,
        **({"reward_margin": beta * change} if beta is not None else {}),
        "held_out_pairs": len(pairs),
    }


@torch.no_grad()
def reward_model_metrics(model, tokenizer, pairs: list[dict[str, Any]], max_length: int,
                         batch_size: int = 8) -> dict[str, float]:
    """For a reward model: how often it scores the chosen answer higher, before and after, and its win rate."""
    device = next(model.parameters()).device

    def margins() -> torch.Tensor:
        out = []
        for batch in _batches(pairs, batch_size):
            scores = []
            for side in ("chosen", "rejected"):
                encoded = [encode(tokenizer, p["prompt"], p[side], max_length) for p in batch]
                ids, attention, _ = _padded(encoded, tokenizer.pad_token_id, device)
                scores.append(model(input_ids=ids, attention_mask=attention).logits[:, 0].float().cpu())
            out.append(scores[0] - scores[1])
        return torch.cat(out) if out else torch.zeros(0)

    policy = margins()
    with as_parent(model):
        parent = margins()
    return {
        "preference_accuracy": float((policy > 0).float().mean()),
        "preference_accuracy_before": float((parent > 0).float().mean()),
        "pair_win_rate": _wins(policy, parent),
        "reward_margin": float((policy - parent).mean()),
        "held_out_pairs": len(pairs),
    }


def judged_metrics(model, tokenizer, prompts: list[Any], judge, max_new_tokens: int,
                   batch_size: int = 8) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Both models answer every held-out prompt; the judge scores both. Returns the metrics and a few examples."""
    answers = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    with as_parent(model):
        parent_answers = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    ours = torch.tensor(judge(prompts, answers), dtype=torch.float64)
    theirs = torch.tensor(judge(prompts, parent_answers), dtype=torch.float64)
    metrics = {
        "judged_win_rate": _wins(ours, theirs),
        "judged_reward": float(ours.mean()),
        "judged_reward_before": float(theirs.mean()),
        "judged_prompts": len(prompts),
    }
    examples = [{"prompt": p, "parent": b, "policy": a, "parent_score": float(s0), "policy_score": float(s1)}
                for p, a, b, s1, s0 in list(zip(prompts, answers, parent_answers, ours, theirs))[:3]]
    return metrics, examples


# ----------------------------------------------------------------------------- a round, by what it trains
# Each trainer names one of these as its ``evaluate`` (see hf_adapt.feedback.trainers); both take the same arguments.


def score_policy(model, tokenizer, held_out: dict[str, list], judge, *, beta: float | None, max_length: int,
                 max_new_tokens: int, batch_size: int = 8) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A policy against its parent: held-out pairs, KL drift on held-out completions, and the judge's verdict on
    greedy answers when there is a judge. ``beta``: that of a trainer with a reference model, else None."""
    metrics: dict[str, Any] = {}
    examples: list[dict[str, Any]] = []
    if held_out["pairs"]:
        metrics.update(pair_metrics(model, tokenizer, held_out["pairs"], max_length, beta, batch_size))
    if held_out["completions"]:
        metrics["kl_drift"] = kl_drift(model, tokenizer, held_out["completions"], max_length, batch_size)
    if judge is not None:
        judged, examples = judged_metrics(model, tokenizer, held_out["prompts"], judge, max_new_tokens, batch_size)
        metrics.update(judged)
    return metrics, examples


def score_reward_model(model, tokenizer, held_out: dict[str, list], judge, *, beta: float | None, max_length: int,
                       max_new_tokens: int, batch_size: int = 8) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A reward model against its parent, on held-out pairs only (it answers nothing a judge could score)."""
    if not held_out["pairs"]:
        return {}, []
    return reward_model_metrics(model, tokenizer, held_out["pairs"], max_length, batch_size), []
