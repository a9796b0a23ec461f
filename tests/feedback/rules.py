"""Reward functions for tests, importable as ``tests.feedback.rules:NAME`` (TRL's signature)."""

POSITIVE = ("great", "love", "excellent", "fresh", "lovely")


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def positive_words(prompts, completions, **kwargs) -> list[float]:
    """How many positive words an answer holds."""
    return [float(sum(word in _text(c) for word in POSITIVE)) for c in completions]


def distinct_characters(prompts, completions, **kwargs) -> list[float]:
    """Varied even for a random model's babble, so GRPO's advantages are not all zero."""
    return [float(len(set(_text(c)))) for c in completions]
