"""Every fenced code block in README.md and docs/**/*.md is run, or says why not.

The rules, for whoever writes a page:

- A ``python`` block is executed, in page order, in one namespace per page (like a doctest session); a ``bash``
  block runs under ``bash -euo pipefail``. Both run in a scratch folder of the page's own that holds what the
  examples name: ``outputs/finetune`` (a tiny fine-tuned credit model), ``credit.csv`` (200 German Credit rows),
  ``applicant.json`` (one of them), ``feedback/bot.jsonl`` (a small feedback log) and ``recipes/`` (the shipped
  configs).
- ``hf-adapt`` there is the real command with tiny stand-ins appended to its training commands
  (``tests/docs/standin.py``): the example's text stays what a user runs, the test trains a 2-layer BERT for one
  epoch. ``hf-adapt serve`` gets a free port, and ``localhost:8000`` in a block's text is read as that port.
  Processes a block leaves running (a server started with ``&``) are stopped when the page ends.
- A ``yaml`` block must be a mapping of finetune config keys, and is checked as the recipe checks a config file.
- A ``text`` block is output or a file tree, not an example.
- Anything else needs ``<!-- not run: the reason -->`` on the line before its fence: needs a GPU, the Hub, the real
  weights for minutes, a server that runs until stopped, ... A block that is neither run nor marked fails
  ``test_every_block_is_run_or_says_why_not``, as does a fence without a language.

``python -m pytest tests/docs/test_examples.py -s`` prints the counts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import train_finetune

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\S*)")
RUN = {"python", "bash", "yaml"}
pytestmark = pytest.mark.timeout(300)


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, when the block is marked

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang or 'no language'})"


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, with the ``not run`` mark on the line before each (indented fences too)."""
    lines, blocks, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end])
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.search(before)
        blocks.append(Block(page, i + 1, lang, code, mark.group(1) if mark else None))
        i = end + 1
    return blocks


def test_every_block_is_run_or_says_why_not():
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    unmarked = []
    for page in PAGES:
        for block in read_blocks(page):
            if block.not_run is not None:
                assert block.not_run, f"{block}: say why it is not run"
                for named in re.findall(r"tests/[\w/]+\.py", block.not_run):  # "tests/x.py runs it": it must exist
                    assert (ROOT / named).is_file(), f"{block}: its reason names {named}, which does not exist"
                counts["not run"] += 1
                reasons[block.not_run.split(";")[0]] += 1
            elif block.lang in RUN:
                counts["run"] += 1
            elif block.lang == "text":
                counts["text"] += 1
            else:
                unmarked.append(str(block))
    assert not unmarked, f"blocks neither run nor marked <!-- not run: reason -->: {unmarked}"
    print(f"\ndocs examples: {counts['run']} run, {counts['not run']} marked not run, {counts['text']} text blocks")
    for reason, n in reasons.most_common():
        print(f"  not run x{n}: {reason}")
    assert counts["run"] > 0


@pytest.fixture(scope="module")
def shared(tiny_bert, credit_sample, tmp_path_factory) -> dict[str, Path]:
    """What every page's folder starts from: a tiny fine-tuned credit model, rows, a feedback log, the shims."""
    import pandas as pd

    from hf_adapt.feedback import FeedbackLog

    root = tmp_path_factory.mktemp("docs_examples")
    output = train_finetune(root / "finetune", model_name_or_path=str(tiny_bert), data=str(credit_sample),
                            card_examples=0)
    row = pd.read_csv(credit_sample).drop(columns=["creditability"]).iloc[0].to_dict()
    (root / "applicant.json").write_text(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}))
    log = FeedbackLog(root / "bot.jsonl")
    for i, (answer, verdict) in enumerate([("Great coffee.", "up"), ("Bad tea.", "down"), ("Fine dog food.", "up"),
                                           ("Stale chips.", "down")] * 3):
        log.record(f"Review product {i % 4}", answer, verdict, model="my-org/bot", model_revision="v3",
                   user_id=f"user{i}")
    log.record("Review product 9", "Nice.", {"chosen": "Nice.", "rejected": "Meh."}, model="my-org/bot",
               model_revision="v3")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hf-adapt"
    shim.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -m tests.docs.standin "$@"\n')
    shim.chmod(0o755)
    standins = {"finetune": ["--model_name_or_path", str(tiny_bert), "--data", str(credit_sample),
                             "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
                             "--learning_rate", "5e-3", "--torch_num_threads", "1", "--report_to", "none",
                             "--license", "apache-2.0", "--card_examples", "0", "--bootstrap_resamples", "100"],
                "continual": ["--num_train_epochs", "1", "--torch_num_threads", "1", "--report_to", "none"]}
    return {"root": root, "output": output, "credit": Path(credit_sample), "bin": bin_dir,
            "standins": json.dumps(standins)}


def _page_folder(shared: dict, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "outputs").mkdir(parents=True)
    (work / "feedback").mkdir()
    shutil.copytree(shared["output"], work / "outputs" / "finetune")
    shutil.copy(shared["credit"], work / "credit.csv")
    shutil.copy(shared["root"] / "applicant.json", work / "applicant.json")
    shutil.copy(shared["root"] / "bot.jsonl", work / "feedback" / "bot.jsonl")
    (work / "recipes").symlink_to(ROOT / "recipes")
    return work


def _check_yaml(block: Block) -> None:
    from hf_adapt.config import check_values
    from hf_adapt.recipes.finetune import FinetuneConfig

    values = yaml.safe_load(block.code)
    assert isinstance(values, dict), f"{block}: a config block is a mapping"
    check_values(FinetuneConfig, values, source=str(block))


def _run_bash(block: Block, work: Path, env: dict, groups: list[int], seconds: float) -> None:
    process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.code], cwd=work, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    groups.append(process.pid)
    try:
        out, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, f"{block} exited {process.returncode}:\n{block.code}\n--- output ---\n{out[-4000:]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(groups: list[int]) -> None:
    for pgid in groups:  # a server a block started with & lives in that block's process group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.not_run is None and b.lang in RUN for b in read_blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_run(page, shared, tmp_path, monkeypatch):
    _run_page(page, shared, tmp_path, monkeypatch, json.loads(shared["standins"]), block_seconds=240)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_tutorial_runs_on_the_real_model(shared, tmp_path, monkeypatch):
    """The tutorial as a newcomer runs it: the real MiniLM-L6 and German Credit, no stand-ins but the port."""
    _run_page(ROOT / "docs" / "tutorial.md", shared, tmp_path, monkeypatch, {}, block_seconds=1200)


def _run_page(page: Path, shared: dict, tmp_path: Path, monkeypatch, standins: dict, block_seconds: float) -> None:
    work = _page_folder(shared, tmp_path)
    port = _free_port()
    standins = {**standins, "serve": ["--port", str(port), "--torch_num_threads", "1"]}
    env = {**os.environ, "PATH": f"{shared['bin']}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "HF_ADAPT_DOCS_STANDINS": json.dumps(standins), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__docs__"}
    groups: list[int] = []
    try:
        for block in read_blocks(page):
            if block.not_run is not None or block.lang not in RUN:
                continue
            block.code = block.code.replace("localhost:8000", f"localhost:{port}")
            if block.lang == "python":
                exec(compile(block.code, str(block), "exec"), namespace)  # noqa: S102 - the page's own example
            elif block.lang == "bash":
                _run_bash(block, work, env, groups, block_seconds)
            else:
                _check_yaml(block)
    finally:
        _stop(groups)
