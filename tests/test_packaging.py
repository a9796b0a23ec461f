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
