"""The facts a feedback round's card shows, all measured, and the card itself (``model_cards/feedback.md``)."""

from __future__ import annotations

from typing import Any

from hf_adapt.feedback.trainers import REWARD

# eval_results key -> label in the card's before/after table: (parent key, policy key)
BEFORE_AFTER = {
    "preference accuracy on held-out pairs": ("preference_accuracy_before", "preference_accuracy"),
    "judged reward of greedy answers": ("judged_reward_before", "judged_reward"),
}


def feedback_facts(cfg, model, metrics: dict[str, Any], facts: dict[str, Any],
                   info: dict[str, Any]) -> dict[str, Any]:
    from hf_adapt.adapters import count_parameters

    trainable, total = count_parameters(model)
    window, conversion = facts["window"], facts["conversion"]
    source = str(cfg.feedback)
    reward = info["objective"] == REWARD
    headline = {k: metrics[k] for k in ("preference_accuracy", "win_rate") if k in metrics and metrics[k] == metrics[k]}
    return {
        "card_template": "feedback.md",
        "summary": _summary(cfg, facts, metrics, reward),
        "base_model": facts["base_model"],
        "model_source": info["model"]["name_or_path"],
        "family": "transformers",
        "objective": info["objective"],
        "pipeline_tag": "text-classification" if reward else "text-generation",
        "regime": "adapter",
        "adapter": None if cfg.init_from else cfg.adapter,
        "trainer": cfg.trainer,
        "trainer_args": {k: v for k, v in facts["args"].to_dict().items() if k in _SHOWN_ARGS},
        "dataset_name": cfg.dataset_title(source),
        "data_source": source,
        "data_sha256": window.log.sha256,
        "data_revision": cfg.feedback_revision,
        "data_kind": "feedback",
        "input_kind": "text",
        "window": {**info["feedback"], "left_out": window.left_out, "bad_records": len(window.log.bad)},
        "inspection": facts["summary"],
        "conversion": conversion.report(),
        "conversion_text": conversion.describe(),
        "train_records": facts["train_records"],
        "eval_records": facts["eval_records"],
        "held_out": facts["held_out"],
        "split_sizes": {"train": facts["train_records"], "test": facts["eval_records"]},
        "judge": facts["judge"],
        "examples": facts["examples"][:cfg.card_examples],
        "gate": facts["gate"],
        "eval_results": metrics,
        "test_metrics": headline,
        "before_after": [(label, metrics[a], metrics[b]) for label, (a, b) in BEFORE_AFTER.items()
                         if a in metrics and b in metrics],
        "parent": info["init_from"],
        "history": [row for row in facts["log_history"] if "loss" in row],
        "steps": facts["steps"],
        "search": facts.get("search"),
        "train_seconds": facts["train_seconds"] or 0.0,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }


_SHOWN_ARGS = ("beta", "loss_type", "desirable_weight", "undesirable_weight", "num_generations",
               "max_completion_length", "center_rewards_coefficient")


def _summary(cfg, facts: dict[str, Any], metrics: dict[str, Any], reward: bool) -> str:
    parent = f"version `{cfg.init_from}`" if cfg.init_from else "its base model"
    win = metrics.get("win_rate")
    scored = (f"; on {facts['eval_records']} held-out feedback records it beats {parent} on "
              f"{100 * win:.1f} % of comparisons ({facts['judge']})" if win == win and win is not None else "")
    what = "A reward model" if reward else "A policy"
    return (f"{what} trained by hf-adapt with TRL's {cfg.trainer.upper()} trainer and a peft adapter on "
            f"{facts['train_records']} user-feedback records, starting from {parent}{scored}.")
