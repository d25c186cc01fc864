"""Parsing shared by ensemble and wbf: `--weights 1,2` -> [1.0, 2.0]."""

from __future__ import annotations


def parse_weights(text: str | None, n: int) -> list[float] | None:
    from kcomp.errors import BadUsage

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BadUsage(f"--weights {text}: expected comma-separated numbers, e.g. 1,2") from None
    if len(values) != n:
        raise BadUsage(f"--weights {text}: {len(values)} weight(s) for {n} input file(s)")
    return values
