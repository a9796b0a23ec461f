"""What several benchmarks share: which code a run measured."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
