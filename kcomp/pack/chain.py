"""The recorded workflow behind test predictions, traced back through their metadata: which runs, how their data
was indexed (`prep`), and every `tta`/`ensemble`/`wbf`/`stack` line, each rewritten for the notebook's paths."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcomp.artifacts.paths import trained_folds
from kcomp.errors import BadInput, BadUsage
from kcomp.pack._argv import Recorded, Ref, Token, options_except, parse

# how to run on the machine that recorded a step, not what it computes: left to the notebook's defaults
RUN_ONLY = {"--device", "--gpus", "--nodes", "--node-rank", "--master-addr", "--master-port", "--preview",
            "--preview-count", "--json", "-o", "--output", "--oof-output"}
REPLAYED = ("tta", "ensemble", "wbf", "stack")


@dataclass
class PackedRun:
    name: str  # PKG/models/<name>
    source: Path
    checkpoints: set[str] = field(default_factory=set)  # best, last


@dataclass
class Step:
    kind: str  # prep | tta | ensemble | wbf | stack
    argv: list[Token]
    source: str = ""  # the artifact whose metadata recorded it
    timing: dict[str, Any] | None = None  # tta: as measured and recorded in the predictions' metadata
    out: Ref | None = None  # what it writes


@dataclass
class Plan:
    competition: str
    runs: dict[Path, PackedRun]
    steps: list[Step]  # preps first, then in dependency order
    finals: list[Ref]  # what `submit` takes
    statics: dict[str, Path]  # PKG-relative name -> local file copied as is (stack's OOF inputs, thresholds)
    thresholds: Ref | None  # what `submit` gets as --thresholds
    warnings: list[str]


def slug(name: str) -> str:
    """A file name safe in a shell line without quoting."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-") or "_"


class Tracer:
    """Walks predictions back to runs; every file is traced once, so shared inputs are replayed once."""

    def __init__(self, competition: str, runs: list[Path], cwd: Path | None = None) -> None:
        self.comp, self.cwd = competition, cwd or Path.cwd()
        self.given_runs = [r.resolve() for r in runs]
        self.runs: dict[Path, PackedRun] = {}
        self.done: dict[Path, Ref] = {}
        self.preps: dict[tuple, Ref] = {}
        self.steps: list[Step] = []
        self.statics: dict[str, Path] = {}
        self.warnings: list[str] = []
        self._names: set[str] = set()

    def plan(self, preds: list[Path], thresholds: Path | None) -> Plan:
        refs = list(dict.fromkeys(self.test_file(p.resolve(), None) for p in preds))
        consumed = {t for s in self.steps for t in s.argv if isinstance(t, Ref) and t != s.out}
        finals = [r for r in refs if r not in consumed] or refs  # intermediates given too are not submitted
        unused = [r for r in self.given_runs if r not in self.runs]
        if unused:
            raise BadUsage(f"run {unused[0]} is not used by the predictions' recorded chain "
                           f"(it uses {', '.join(str(r) for r in self.runs) or 'no run'})")
        thr = None
        if thresholds is not None:
            thr = Ref("PKG", self._unique(f"inputs/{slug(thresholds.name)}"))
            self.statics[thr.rel] = thresholds
        return Plan(self.comp, self.runs, self.steps, finals, self.statics, thr, self.warnings)

    # ------------------------------------------------------------------------------------------- predictions

    def test_file(self, path: Path, by: str | None) -> Ref:
        if path in self.done:
            return self.done[path]
        from kcomp.artifacts.predictions import read_predictions

        pred = read_predictions(path)
        if pred.kind != "test":
            raise BadInput(f"holds {pred.kind} predictions; pack replays what made the test predictions "
                           f"`kcomp submit` takes" + (f" (an input of {by})" if by else ""), path=path)
        made_for = pred.meta.get("competition")
        if made_for and made_for != self.comp:
            raise BadInput(f"predictions of competition {made_for!r}, not {self.comp!r}", path=path)
        rec = parse(pred.meta.get("command"), str(path))
        if rec.sub not in REPLAYED:
            raise BadInput(f"made by `kcomp {rec.sub}`; pack replays {', '.join(REPLAYED)}", path=path)
        out = Ref("WORK", self._unique(f"pred/{slug(path.name)}"))
        argv = getattr(self, f"_{rec.sub}")(pred, rec, path)
        self.steps.append(Step(rec.sub, ["kcomp", rec.sub, *argv, "-o", out,
                                         *options_except(rec, RUN_ONLY | {"--test"})],
                               source=str(path), timing=pred.meta.get("timing") if rec.sub == "tta" else None,
                               out=out))
        self.done[path] = out
        return out

    def _tta(self, pred: Any, rec: Recorded, path: Path) -> list[Token]:
        recorded = pred.meta.get("runs") or []
        if not recorded:
            raise BadInput("tta predictions record no runs (metadata `runs`)", path=path)
        checkpoints = (rec.values("--checkpoints") or ["best"])[-1].split("+")
        runs = [self._run(r, path, checkpoints) for r in recorded]
        index = self._locate(str(pred.meta.get("index") or ""), path, "index of its test rows")
        return [*[Ref("PKG", f"models/{r.name}") for r in runs], self._prep(index, path)]

    def _ensemble(self, pred: Any, rec: Recorded, path: Path) -> list[Token]:
        return [self.test_file(self._locate(p, path, "input"), str(path)) for p in rec.positionals]

    _wbf = _ensemble

    def _stack(self, pred: Any, rec: Recorded, path: Path) -> list[Token]:
        """Test inputs are replayed; OOF inputs (what the level-2 model is fitted on) travel as they are."""
        from kcomp.artifacts.predictions import read_predictions

        oofs: list[Token] = []
        tests: list[Token] = []
        for p in [*rec.positionals, *rec.values("--test")]:
            local = self._locate(p, path, "input")
            if read_predictions(local).kind == "oof":
                name = self._unique(f"inputs/{slug(local.name)}")
                self.statics[name] = local
                oofs.append(Ref("PKG", name))
            else:
                tests.extend(["--test", self.test_file(local, str(path))])
        return [*oofs, *tests]

    # ----------------------------------------------------------------------------------------- runs and prep

    def _run(self, recorded: str, by: Path, checkpoints: list[str]) -> PackedRun:
        from kcomp.artifacts.run_config import read_run_config

        path = self._locate(recorded, by, "run", given=self.given_runs)
        read_run_config(path)  # checked as oof and tta check it: the notebook's tta will read it
        if not trained_folds(path):
            raise BadInput("has no trained fold (no fold*/best.pt)", path=path)
        if path not in self.runs:
            self.runs[path] = PackedRun(self._unique_run(path.name), path)
            self._check_fresh(path, by)
        self.runs[path].checkpoints.update(checkpoints)
        return self.runs[path]

    def _prep(self, index: Path, by: Path) -> Ref:
        """The `prep` line that made the index the test rows came from, pointed at the competition's input dir."""
        meta = table_meta(index, ("index", "folds"))
        command = meta.get("index_command") if meta["schema"]["name"] == "folds" else meta.get("command")
        rec = parse(command, str(index))
        if rec.sub != "prep" or not rec.positionals:
            raise BadInput(f"its index was made by `kcomp {rec.sub}`, not `kcomp prep`", path=index)
        if rec.positionals[0] != self.comp:
            raise BadUsage(f"--comp {self.comp}: the runs behind {by} were trained on {rec.positionals[0]!r} data")
        options = options_except(rec, RUN_ONLY)
        key = tuple(str(o) for o in options)
        if key not in self.preps:
            data = self._unique("data")
            self.steps.insert(sum(s.kind == "prep" for s in self.steps), Step(
                "prep", ["kcomp", "prep", self.comp, Ref("INPUT"), "-o", Ref("WORK", data), *options],
                source=str(index)))
            self.preps[key] = Ref("WORK", f"{data}/index.parquet")
        return self.preps[key]

    def _check_fresh(self, run: Path, pred: Path) -> None:
        """Weights newer than the predictions made from them: retrained since, so the package would not reproduce
        them (a copied directory gets new times too, hence a warning)."""
        newest = max((p.stat().st_mtime for p in run.glob("fold*/best.pt")), default=0.0)
        if newest > pred.stat().st_mtime:
            self.warnings.append(f"{run} has checkpoints newer than {pred}: retrained since? re-run its tta")

    # -------------------------------------------------------------------------------------------------- names

    def _locate(self, recorded: str, by: Path, what: str, given: list[Path] | None = None) -> Path:
        """A recorded path, relative to where pack runs (a Makefile's directory) or absolute; a given argument of
        the same name stands in for one that moved."""
        if recorded in ("", "-"):
            raise BadInput(f"records no readable {what} ({recorded or 'none'}); pack cannot replay it", path=by)
        p = Path(recorded) if os.path.isabs(recorded) else self.cwd / recorded
        if p.exists():
            return p.resolve()
        same = [g for g in given or [] if g.name == Path(recorded).name]
        if len(same) == 1:
            return same[0]
        raise BadInput(f"its {what} {recorded} is not found: run pack where the workflow ran"
                       + (", or give it as an argument" if given is not None else ""), path=by)

    def _unique(self, name: str) -> str:
        """`name`, or `stem-2.suffix`, `stem-3.suffix`... when taken."""
        p = Path(name)
        out, k = name, 2
        while out in self._names:
            out, k = str(p.with_name(f"{p.stem}-{k}{p.suffix}")), k + 1
        self._names.add(out)
        return out

    def _unique_run(self, name: str) -> str:
        return self._unique(f"models/{slug(name)}").removeprefix("models/")


def table_meta(path: Path, accept: tuple[str, ...]) -> dict[str, Any]:
    """A table's kcomp metadata without reading its rows."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from kcomp.artifacts import check_meta

    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"kcomp")
    except (pa.ArrowInvalid, OSError) as e:
        raise BadInput(f"not a readable parquet file: {e}", path=path) from None
    return check_meta(json.loads(raw) if raw else None, accept, str(path))
