"""Which module reads which input, and where each input's files go inside the report directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kcomp.artifacts._input import regular_file
from kcomp.errors import BadInput, BadUsage
from kcomp.options import Checked, Int, option
from kcomp.report import _plot
from kcomp.report.section import Section


@dataclass(frozen=True)
class ReportOptions(Checked):
    """What `kcomp report` was asked, checked on creation (each field with its Spec, as `TrainOptions`)."""

    previews: int = option(Int(0), 4)  # overlay previews per predictions file
    worst: int = option(Int(0), 8)  # gallery of the worst OOF rows per OOF file (0 = none)


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


def build_report(inputs: list[str], out_dir: Path, *, previews: int = 4, worst: int = 8
                 ) -> tuple[list[Section], list[str]]:
    """Sections for `inputs` with their PNGs under `out_dir`, plus out_dir/index.html; returns (sections, the
    files written). Two or more runs get a leaderboard first; OOF predictions a gallery of their `worst` rows.
    A failure half-way leaves no partial or empty directory (`staged_dir`); the command ran `check_outputs`."""
    from kcomp.artifacts._atomic import staged_dir
    from kcomp.report.leaderboard import leaderboard
    from kcomp.report.page import write_page
    from kcomp.report.predictions import report_predictions
    from kcomp.report.run import report_run
    from kcomp.report.thresholds import report_thresholds

    if not inputs:
        raise BadUsage("give at least one run directory, predictions file or thresholds file")
    if previews < 0:
        raise BadUsage(f"--previews {previews}: must be >= 0")
    if worst < 0:
        raise BadUsage(f"--worst {worst}: must be >= 0")
    kinds = [kind_of(Path(text)) for text in inputs]  # every input exists and is readable as what, before writing
    sections, runs = [], []
    tuned = _thresholds_by_task(inputs, kinds)
    with staged_dir(out_dir) as stage:  # a bad input found half-way leaves no (partial or empty) report behind
        for text, kind, prefix in zip(inputs, kinds, _prefixes(inputs), strict=True):
            path = Path(text)
            if kind == "run":
                run = path if path.is_dir() else path.parent
                sections.append(report_run(run, stage, prefix))
                runs.append((run, sections[-1]))
            elif kind == "thresholds":
                sections.append(report_thresholds(text, stage, prefix))
            else:
                sections += report_predictions(text, stage, prefix, previews, worst=worst, tuned=tuned)
        if len(runs) > 1:
            sections.insert(0, leaderboard(runs))
        page = Path(write_page(sections, stage)).name
    written = [str(out_dir / im.path) for s in sections for im in s.images] + [str(out_dir / page)]
    return sections, written


def _thresholds_by_task(inputs: list[str], kinds: list[str]) -> dict[str, list[tuple[str, dict]]]:
    """task -> the thresholds files among the inputs (path, body), for drawing predictions at their settings."""
    from kcomp.artifacts.thresholds import read_thresholds

    out: dict[str, list[tuple[str, dict]]] = {}
    for text, kind in zip(inputs, kinds, strict=True):
        if kind == "thresholds":
            body = read_thresholds(text)
            out.setdefault(str(body.get("task")), []).append((text, body))
    return out


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
