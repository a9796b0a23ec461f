"""Plug-ins registered by name and imported only when first used: what the backbone and regime registries share."""

from __future__ import annotations

import importlib
import re
from typing import Generic, TypeVar

from hf_adapt.errors import ConfigError

T = TypeVar("T")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Names of one ``kind`` of plug-in ("backbone family", "regime"), each bound to an instance or to a lazy
    ``"package.module:Class"`` path whose class is imported and instantiated on first use. Malformed and duplicate
    names fail loudly when registered; an unknown name is a ``ConfigError`` listing the registered ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, str | T] = {}

    def register(self, name: str, target: str | T) -> None:
        if not NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must match {NAME.pattern}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]})")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"lazy {self.kind} path {target!r} must look like 'package.module:Class'")
        self._entries[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is not one of {list(self._entries)}")
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)()
            if getattr(target, "name", name) != name:
                raise ValueError(f"{self.kind} {name!r} resolved to a {type(target).__name__} named {target.name!r}")
            self._entries[name] = target
        return target
