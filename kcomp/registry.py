"""One small registry type shared by competitions, tasks and metrics (timm's `@register_model`, without globals
mutated from arbitrary places: each registry is filled by the explicit imports of one module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from kcomp.errors import BadUsage

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    summary: str
    obj: T


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Decorator; the summary defaults to the first line of the object's docstring."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, text, obj)
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise BadUsage(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def describe(self) -> str:
        """One line per entry, for `--help` texts."""
        width = max((len(n) for n in self._entries), default=0)
        return "\n".join(f"{e.name.ljust(width)}  {e.summary}" for e in self)
