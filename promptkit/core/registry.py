"""Registries: the named plugins of one kind (placements, heads, task kinds, modalities,
quantization methods), each registered by one line where its kind is defined."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TypeVar

from promptkit.errors import ConfigError

_Item = TypeVar("_Item")


class Registry(dict[str, _Item]):
    """The plugins of one kind by name (each item's ``key`` attribute). Looking up a name that
    is not there is a ``ConfigError`` that lists the names there are.

    Args:
        kind: what one item is, for messages ("placement").
        items: the plugins (classes or instances).
        key: the attribute that names an item, or what gives an item's name.
    """

    def __init__(
        self, kind: str, items: Iterable[_Item], key: str | Callable[[_Item], str] = "name"
    ) -> None:
        name_of = key if callable(key) else lambda item: getattr(item, key)
        super().__init__((name_of(item), item) for item in items)
        self.kind = kind

    def __missing__(self, name: str) -> _Item:
        raise ConfigError(f"there is no {self.kind} {name!r}; choose one of {', '.join(self)}.")

    def described(self) -> dict[str, str]:
        """Each item's name and the first line of its docstring."""
        return {name: _summary(item) for name, item in self.items()}


def _summary(item: object) -> str:
    doc = inspect.getdoc(item if inspect.isclass(item) else type(item)) or ""
    first = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
    return first.split(". ")[0].removesuffix(".")
