"""The docs site builds offline with ``mkdocs build --strict`` (no broken link or anchor, no page missing from the
nav, every API object found), and the README keeps its two commands and its links into the site."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ('pip install -e ".[assets]" && accelerate launch recipes/finetune.py',
            'pip install -e ".[dev,assets]" && python -m pytest')


def test_mkdocs_build_strict_passes_offline(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed: pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "load_adapted" in api and "FeedbackLog" in api  # mkdocstrings rendered the docstrings
    assert "fonts.googleapis.com" not in (tmp_path / "site" / "index.html").read_text()  # reads offline too


def test_the_readme_keeps_its_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert list(blocks[:2]) == list(COMMANDS), "the README's two commands must stay byte-identical, first"
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"\n{COMMANDS[1]}\n" in ci, ".ci/run must run the README's test command as written"
    assert len(readme.splitlines()) <= 170, "the README is the front door (about 150 lines); move detail to docs/"


def test_the_readme_links_land_on_pages_and_headings():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs/)[^)\s]*)\)", readme):
        path, _, anchor = target.partition("#")
        page = ROOT / path
        assert page.is_file(), f"README links {target}, but {path} does not exist"
        if anchor:
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+?)\s*(?:\{#.*\})?$", page.read_text(), flags=re.M)}
            assert anchor in slugs, f"README links {target}, but {path} has no heading with that anchor"


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)
