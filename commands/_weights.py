"""Parsing shared by ensemble and wbf: `--weights 1,2` -> [1.0, 2.0]."""

from __future__ import annotations


def parse_weights(text: str | None, n: int) -> list[float] | None:
    """One finite non-negative weight per input file, not all zero (checked before any file is read)."""
    from kcomp import options
    from kcomp.errors import BadUsage

    if text is None:
        return None
    values = options.parse_list("weights", text, options.WEIGHT)
    if len(values) != n:
        raise BadUsage(f"--weights {text}: {len(values)} weight(s) for {n} input file(s)")
    if not any(values):
        raise BadUsage(f"--weights {text}: all weights are zero")
    return values
