"""Which module reads which input, and where each input's files go inside the report directory."""

from __future__ import annotations

from pathlib import Path

from kcomp.artifacts._input import regular_file
from kcomp.errors import BadInput, BadUsage
from kcomp.report import _plot
from kcomp.report.section import Section


def kind_of(path: Path) -> str:
    """run (a directory with config.json, or that config.json), thresholds (other .json) or predictions (a
    table)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInput("directory is not a run directory (no config.json)", path=path)
        return "run"
    regular_file(path, "a run directory, predictions or thresholds file")
    if path.suffix == ".json":
        return "run" if _schema(path) == "run-config" else "thresholds"
    return "predictions"


def _schema(path: Path) -> str | None:
    """The schema name of a kcomp JSON file, if it has one (the reader reports anything else)."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    schema = data.get("schema") if isinstance(data, dict) else None
    return schema.get("name") if isinstance(schema, dict) else None


def build_report(inputs: list[str], out_dir: Path, *, previews: int = 4) -> tuple[list[Section], list[str]]:
    """Sections for `inputs` with their PNGs under `out_dir`, plus out_dir/index.html; returns (sections, the
    files written)."""
    from kcomp.artifacts._atomic import staged_dir
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.report.page import write_page
    from kcomp.report.predictions import report_predictions
    from kcomp.report.run import report_run
    from kcomp.report.thresholds import report_thresholds

    if not inputs:
        raise BadUsage("give at least one run directory, predictions file or thresholds file")
    if previews < 0:
        raise BadUsage(f"--previews {previews}: must be >= 0")
    check_outputs(dirs={"-o": out_dir}, inputs=inputs)
    kinds = [kind_of(Path(text)) for text in inputs]  # every input exists and is readable as what, before writing
    sections = []
    with staged_dir(out_dir) as stage:  # a bad input found half-way leaves no (partial or empty) report behind
        for text, kind, prefix in zip(inputs, kinds, _prefixes(inputs), strict=True):
            path = Path(text)
            if kind == "run":
                sections.append(report_run(path if path.is_dir() else path.parent, stage, prefix))
            elif kind == "thresholds":
                sections.append(report_thresholds(text, stage, prefix))
            else:
                sections.append(report_predictions(text, stage, prefix, previews))
        page = Path(write_page(sections, stage)).name
    written = [str(out_dir / im.path) for s in sections for im in s.images] + [str(out_dir / page)]
    return sections, written


def _prefixes(inputs: list[str]) -> list[str]:
    """File-name prefixes: none for a single input, else each input's name (made unique)."""
    if len(inputs) == 1:
        return [""]
    out, seen = [], set()
    for text in inputs:
        p = Path(text)
        base = _plot.slug(p.name if p.is_dir() or p.name != "config.json" else p.parent.name)
        base = base.removesuffix(".parquet").removesuffix(".json") or "_"
        name, k = base, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        out.append(f"{name}_")
    return out
