"""A small named registry per extension kind (engines, scorers).

Built-ins register exactly as third-party plugins do: by name, either with the decorator or
through the `bon.engines` / `bon.scorers` entry-point groups.
"""

from __future__ import annotations

import importlib.metadata
from typing import Generic, TypeVar

from bon.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes; a duplicate name or an unknown name is a `ConfigError`."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self._group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str):
        """Class decorator that registers `cls` under `name`."""

        def add(cls: T) -> T:
            if name in self._items and self._items[name] is not cls:
                raise ConfigError(
                    f"{self.kind} {name!r} is registered twice: by {self._items[name]!r} "
                    f"and by {cls!r}; rename one of them"
                )
            self._items[name] = cls
            return cls

        return add

    def get(self, name: str) -> T:
        """The class registered as `name`."""
        self._load_plugins()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load_plugins()
        return sorted(self._items)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry_point in importlib.metadata.entry_points(group=self._group):
            self.register(entry_point.name)(entry_point.load())
