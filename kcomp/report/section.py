"""What each input contributes to a report: facts, one table, images (paths relative to the report dir), notes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Image:
    path: str  # relative to the report directory, `/`-separated
    caption: str


@dataclass
class Section:
    kind: str  # run | predictions | thresholds | leaderboard | worst
    title: str
    source: str
    facts: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
