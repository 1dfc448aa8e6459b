"""Parts found by name: the quantizers (`codebooks.method`) and the rankers (`train.model`).

A registry maps names to classes of one base, given as the class or as its import path
(`module:Class`, imported when first used, so listing the names imports nothing heavy).
Built-in parts are lines in their registry's table; code outside the package adds its own
with `register` (and takes it back with `unregister`)."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: str, built_in: Mapping[str, str | type[T]], error: type[Exception] = ValueError):
        """kind: what the parts are ("quantizer"); base: the import path of their base class."""
        self.kind, self.base, self.error = kind, base, error
        self.built_in = dict(built_in)
        self._entries: dict[str, str | type[T]] = dict(built_in)

    def _base(self) -> type:
        return _import(self.base)

    def register(self, name: str, cls: type[T]) -> type[T]:
        if not (isinstance(cls, type) and issubclass(cls, self._base())):
            raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a {self.base.replace(':', '.')} subclass")
        path = f"{cls.__module__}:{cls.__qualname__}"
        if name in self._entries and self.path(name) != path:
            # a run's identity names its part: one name, one class, or results would be mistaken
            raise ValueError(f"{self.kind} {name!r} is already {self.path(name)}: register {path} under another name")
        self._entries[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        if name in self.built_in:
            raise ValueError(f"{self.kind} {name!r} is built in")
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def path(self, name: str) -> str:
        """`module:Class` of the part: what another process imports it by."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r} (choose from {', '.join(self._entries)})") from None
        return entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"

    def get(self, name: str) -> type[T]:
        entry = self._entries.get(name)
        return entry if isinstance(entry, type) else self.load(self.path(name))

    def load(self, path: str) -> type[T]:
        """The class at an import path, checked to be one of this registry's parts."""
        cls = _import(path)
        if not (isinstance(cls, type) and issubclass(cls, self._base())):
            raise TypeError(f"{path} is not a {self.base.replace(':', '.')} subclass")
        return cast("type[T]", cls)


def _import(path: str):
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
