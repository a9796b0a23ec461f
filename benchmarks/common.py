"""What several benchmarks share: an offline environment, and which code a run measured."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def offline_checkout() -> None:
    """No Hub traffic (the assets are local), and hf_adapt importable from a checkout that is not pip-installed.

    Call it before anything imports huggingface_hub or hf_adapt.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if importlib.util.find_spec("hf_adapt") is None:
        sys.path.insert(0, str(REPO))


def code_version() -> str:
    """Where hf_adapt was imported from, and the repository commit (other people may be editing the tree)."""
    import hf_adapt

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = "modified" if git("status", "--porcelain", "hf_adapt") else "clean"
    return (f"hf_adapt imported from `{Path(hf_adapt.__file__).parent}`; repository HEAD {git('rev-parse', '--short', 'HEAD') or '?'}"
            f" (its hf_adapt/: {dirty})")


def run_reporting(run, args) -> int:
    """``run(args)``, with any error printed rather than raised: a benchmark reports; it does not fail a build."""
    import traceback

    try:
        run(args)
    except Exception as err:  # noqa: BLE001 - printed, and the exit status stays 0
        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    return 0
