"""A tiny chat Llama (locally trained tokenizer with a chat template) and hand-written feedback logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOOD = ["great taste, would buy again", "lovely flavour and fresh", "my dog loves it", "excellent value"]
BAD = ["stale and awful", "arrived broken", "tastes like cardboard", "too salty, returned it"]
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_llama(tmp_path_factory, review_texts) -> Path:
    """A 2-layer, 64-wide Llama with a byte-level BPE tokenizer trained on reviews and a ChatML chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(review_texts + GOOD + BAD, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    path = tmp_path_factory.mktemp("tiny_chat_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def product_feedback(products: range, day: int = 10, revision: str = "v1", model: str | None = None,
                     conversational: bool = False) -> list[dict]:
    """For each product prompt: two answers voted up, two voted down, a correction and two scores."""
    records = []
    for i in products:
        prompt = f"How was product {i}?"
        if conversational:
            prompt = [{"role": "user", "content": prompt}]

        def answer(text):
            return [{"role": "assistant", "content": text}] if conversational else text

        stamp = f"2026-11-{day:02d}T{i % 24:02d}:00:00+00:00"
        common = {"model_revision": revision, "timestamp": stamp, **({"model": model} if model else {})}
        for j in range(2):
            records.append({"prompt": prompt, "completion": answer(GOOD[(i + j) % 4]), "feedback": "up",
                            "user_id": f"user-{i}-{j}", **common})
            records.append({"prompt": prompt, "completion": answer(BAD[(i + j) % 4]), "feedback": "down", **common})
        records.append({"prompt": prompt, "completion": answer(BAD[(i + 2) % 4]), "feedback": "down",
                        "correction": answer(GOOD[(i + 2) % 4]), **common})
        records.append({"prompt": prompt, "completion": answer(GOOD[(i + 3) % 4]), "feedback": 0.9, **common})
        records.append({"prompt": prompt, "completion": answer(BAD[(i + 3) % 4]), "feedback": 0.2, **common})
    return records


def write_log(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def feedback_log(tmp_path) -> Path:
    return write_log(tmp_path / "feedback.jsonl", product_feedback(range(10)))
