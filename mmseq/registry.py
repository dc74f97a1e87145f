"""Registries of interchangeable parts (encoders, tokenizers, tasks), as timm does for models.

A part registers under a name with a decorator; ``create`` builds it from a name and keyword
settings; ``names`` lists them. Encoders may also come from other installed packages through the
``mmseq.encoders`` entry point group: each entry point names a module (or object) that registers
its encoders when imported.
"""

from __future__ import annotations

import fnmatch
import warnings
from importlib import metadata
from typing import Any, Callable

from .errors import ConfigError


class Registry:
    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, Callable[..., Any]] = {}
        self._origin: dict[str, str] = {}
        self._plugins_loaded = False

    def register(self, name: str, origin: str = "mmseq"):
        """Decorator: ``@ENCODERS.register("conformer")`` on a class or builder function."""

        def wrap(obj):
            if name in self._items and self._items[name] is not obj:
                warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2)
            self._items[name] = obj
            self._origin[name] = getattr(obj, "__module__", origin) or origin
            return obj

        return wrap

    def load_plugins(self) -> None:
        if self._plugins_loaded or self.entry_point_group is None:
            return
        self._plugins_loaded = True
        for entry in metadata.entry_points(group=self.entry_point_group):
            try:
                entry.load()
            except Exception as error:  # a broken plugin must not break the library
                warnings.warn(f"could not load {self.kind} plugin {entry.name!r} ({entry.value}): {error}")

    def get(self, name: str):
        self.load_plugins()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {known}")
        return self._items[name]

    def create(self, name: str, **kwargs):
        """Build a registered part; settings given as ``None`` are dropped so defaults apply."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self, pattern: str = "*") -> list[str]:
        self.load_plugins()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origin[name]

    def __contains__(self, name: str) -> bool:
        self.load_plugins()
        return name in self._items
