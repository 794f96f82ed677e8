"""A small named registry shared by models, datasets, perturbations and search spaces.

Modelled on timm's registries: a duplicate name is a bug and raises at import time, and an
unknown name lists the known ones with the closest match so a typo in a YAML file is obvious.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The closest of ``choices`` to ``name`` by difflib ratio, or None if nothing is close."""

    def score(choice: str) -> tuple[float, int]:
        # Ties in similarity go to the longer shared prefix: "amq" means "amp", not "sam".
        prefix = len(os.path.commonprefix([name.lower(), choice.lower()]))
        return difflib.SequenceMatcher(None, name.lower(), choice.lower()).ratio(), prefix

    best = max(choices, key=score, default=None)
    return best if best is not None and score(best)[0] >= 0.5 else None


def unknown_message(what: str, name: object, choices: list[str]) -> str:
    """One-line error text for an unknown name: the value, the allowed values, a suggestion."""
    hint = closest(str(name), choices)
    tail = f"; did you mean {hint!r}?" if hint else ""
    return f"unknown {what} {name!r}; allowed: {', '.join(sorted(choices))}{tail}"


class Registry(Generic[T]):
    """Maps names to objects (usually factories); ``register`` doubles as a decorator."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(unknown_message(self.what, name, list(self._items))) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
