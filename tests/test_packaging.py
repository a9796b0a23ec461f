"""What a wheel of hf-adapt holds: pyproject.toml lists its packages by hand (model_cards/ installs as
``hf_adapt.model_cards``), so a new subpackage must be added there or a non-editable install lacks it."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "hf_adapt").rglob("__init__.py")}
    listed = set(setuptools["packages"])
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == {"hf_adapt.model_cards"}
    assert setuptools["package-dir"]["hf_adapt.model_cards"] == "model_cards"
    data = [p for p in (ROOT / "hf_adapt").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data == [], f"files a wheel would leave out unless listed in package-data: {data}"


def test_importing_hf_adapt_loads_no_heavy_library():
    """``import hf_adapt`` (and the CLI's help) stays fast: torch, transformers, timm and the rest load when used."""
    import subprocess
    import sys

    code = ("import sys, hf_adapt; print(sorted(m for m in ('torch', 'transformers', 'timm', 'datasets', 'peft', "
            "'accelerate', 'trl', 'sklearn', 'optuna') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", f"import hf_adapt loaded {run.stdout.strip()}"
