"""What the server holds: a classifier (through :class:`~hf_adapt.predict.Predictor`) or a language model (a
feedback policy or a causal LM from pretraining), loaded from an output folder or a Hub repo, with the name
and revision every answer carries."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_adapt.errors import DataError, ModelError
from hf_adapt.run_record import read_record

CLASSIFIER_KINDS = ("classifier", "continual_classifier")
GENERATOR_KINDS = ("policy", "language_model")


def source_revision(directory: Path) -> str:
    """A Hub snapshot's commit (its folder name), else a fingerprint of the folder's record and weights, so two
    different versions served from the same path never share a revision."""
    if directory.parent.name == "snapshots" and len(directory.name) == 40:
        return directory.name
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and (path.suffix in (".safetensors", ".json") or path.name == "README.md"):
            digest.update(str(path.relative_to(directory)).encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return "local-" + digest.hexdigest()[:12]


@dataclass
class Served:
    """A loaded model, its kind (``classifier`` or ``generator``), and the name and revision answers carry."""

    kind: str
    name: str
    revision: str
    directory: Path
    info: dict[str, Any]
    model: Any  # a Predictor, or a Generator


def load_served(source: str, revision: str | None, trust_remote_code: bool, device: str) -> Served:
    from hf_adapt.predict import load_adapted, local_dir

    directory = local_dir(source, revision)
    record = read_record(directory)
    name = source  # a Hub repo id, or the folder as given
    if record.kind in CLASSIFIER_KINDS:
        predictor = load_adapted(str(directory), merge=True, device=device, trust_remote_code=trust_remote_code)
        return Served("classifier", name, source_revision(directory), directory, predictor.info, predictor)
    if record.kind in GENERATOR_KINDS:
        generator = Generator.load(directory, record.kind, trust_remote_code, device)
        return Served("generator", name, source_revision(directory), directory, generator.info, generator)
    raise ModelError(f"{source} is {record.description}; hf-adapt serve serves classifiers (finetune, continual) and "
                     "language models that generate (feedback policies, causal-LM pretrain outputs)")


# ----------------------------------------------------------------------------- language models


class Generator:
    """Text generation from a feedback policy or a causal LM, one answer at a time (a lock keeps the model to one
    caller), greedy at temperature 0 and sampled above it."""

    def __init__(self, model, tokenizer, info: dict[str, Any], device: str):
        self.model, self.tokenizer, self.info = model.to(device).eval(), tokenizer, info
        self.device = device
        self._lock = threading.Lock()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def load(cls, directory: Path, kind: str, trust_remote_code: bool, device: str) -> Generator:
        if kind == "policy":
            from hf_adapt.feedback import load_policy

            model, tokenizer, info = load_policy(directory, trust_remote_code=trust_remote_code, merge=True)
        else:
            from hf_adapt.lm import load_pretrained_lm

            model, tokenizer, info = load_pretrained_lm(directory, trust_remote_code=trust_remote_code)
            if info.get("objective") != "clm":
                raise ModelError(f"{directory} is a masked language model ({info.get('objective')}): it fills in "
                                 "blanks and does not generate; fine-tune a classifier from it (finetune --init_from) "
                                 "and serve that")
        return cls(model, tokenizer, info, device)

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if not self.chat:
            raise DataError("this model's tokenizer has no chat template, so it cannot read messages; send a plain "
                            "prompt to /v1/completions")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _inputs(self, prompt: str) -> dict[str, Any]:
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not self.chat)
        return {k: v.to(self.device) for k, v in encoded.items()}

    def _settings(self, max_tokens: int, temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        sample = temperature > 0
        settings = {"max_new_tokens": max_tokens, "do_sample": sample, "pad_token_id": self.tokenizer.pad_token_id}
        if sample:
            settings.update(temperature=temperature, top_p=top_p)
        return settings

    def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> tuple[str, int, int, str]:
        """``(text, prompt tokens, completion tokens, finish reason)``."""
        import torch

        inputs = self._inputs(prompt)
        with self._lock, torch.no_grad():
            out = self.model.generate(**inputs, **self._settings(max_tokens, temperature, top_p, seed))
        new = out[0, inputs["input_ids"].shape[1]:]
        finished = len(new) < max_tokens or (len(new) and int(new[-1]) == self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return text, int(inputs["input_ids"].shape[1]), int(len(new)), "stop" if finished else "length"

    def stream(self, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None) -> Iterator[str]:
        """The answer's text, piece by piece as it is generated."""
        import torch
        from transformers import TextIteratorStreamer

        inputs = self._inputs(prompt)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        settings = self._settings(max_tokens, temperature, top_p, seed)

        def run() -> None:
            with self._lock, torch.no_grad():
                self.model.generate(**inputs, **settings, streamer=streamer)

        thread = threading.Thread(target=run, daemon=True, name="hf-adapt-generate")
        thread.start()
        yield from (piece for piece in streamer if piece)
        thread.join()
