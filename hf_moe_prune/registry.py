"""A tiny name → object registry, used for adapters, methods, allocators and compensators."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def closest(name: Any, choices: Iterable[str]) -> str | None:
    """The valid name closest to a mistyped `name` (for "did you mean ...?" hints), or None when none is close."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1)
    return matches[0] if matches else None


def refuse_unknown_keywords(owner: str, kwargs: dict[str, Any], valid: list[str]) -> None:
    """Raise a `TypeError` naming the first unknown keyword in `kwargs`, the closest valid one, and all of them."""
    key = sorted(kwargs)[0]
    close = closest(key, valid)
    raise TypeError(
        f"{owner} got an unexpected keyword {key!r}"
        + (f"; did you mean {close!r}?" if close else ".")
        + f" Its options: {', '.join(valid)}."
    )


class Registry(Generic[T]):
    """Maps lower-case names to registered objects and words a helpful error for unknown names.

    Args:
        kind (`str`): What is registered ("method", "model family", ...), used in error messages.
        hint (`str`, *optional*): Appended to the unknown-name error, e.g. how to add a new entry.
    """

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def decorator(obj: T) -> T:
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items:
            raise ValueError(
                f"Unknown {self.kind} {name!r}. Supported: {', '.join(self.names())}."
                + (f" {self.hint}" if self.hint else "")
            )
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        """The registered objects, in name order."""
        return [self._items[name] for name in self.names()]
