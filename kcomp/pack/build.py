"""`kcomp pack`: a finished local workflow -> a directory to upload as a Kaggle dataset, whose notebook replays the
workflow's recorded inference chain offline on the hidden test set."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcomp.errors import BadInput, BadUsage
from kcomp.options import Flag, Float, Int, Text, check_fields, option
from kcomp.pack import wheels as wh
from kcomp.pack._argv import Ref, render
from kcomp.pack.chain import Plan, Tracer
from kcomp.pack.estimate import estimate, parse_duration
from kcomp.pack.manifest import MANIFEST, content_id, files_of, write_manifest
from kcomp.pack.scripts import Block, Paths, notebook, predict_sh

THRESHOLDED = ("seg", "ink")  # tasks whose submissions are cut at tuned thresholds
KAGGLE_INPUT = "/kaggle/input"


@dataclass(frozen=True)
class PackOptions:
    """What `kcomp pack` was asked, checked on creation (the options with a range or form carry their Spec, as
    `TrainOptions`'s); the time limit is parsed once (`limit`, seconds)."""

    none_power: float | None = option(Float(0))  # siim-covid19: as for `kcomp submit`
    test_images: int | None = option(Int(1, 10**9))  # hidden test images, for the time estimate
    time_limit: str = option(Text(), "9h")  # 9h, 90m, 1h30m or seconds
    half: bool = option(Flag(), False)  # weights stored as fp16
    # the wheels (paths are checked where they are read) and the paths in the notebook (by _check_options)
    base: str | Path | None = None  # what the notebook image has (default: the shipped snapshot)
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    python_version: str | None = None
    platform: str | None = None
    input_dir: str | None = None  # default: /kaggle/input/<competition>
    work: str = "/kaggle/working/kcomp"
    submission: str = "/kaggle/working/submission.csv"
    sample: str = "sample_submission.csv"  # inside the input dir ('' = none)

    def __post_init__(self) -> None:
        check_fields(self)
        _ = self.limit

    @functools.cached_property
    def limit(self) -> float:
        return parse_duration(self.time_limit)


def pack(inputs: list[str], *, competition: str, output: str, opts: PackOptions | None = None,
         **values: Any) -> dict[str, Any]:
    """Write the package to `output` (atomically: built beside it, then renamed) as `opts` (or the PackOptions
    fields given as keywords) say; returns the summary that `--json` prints."""
    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.competitions import get_competition

    check_outputs(dirs={"-o": output}, inputs=inputs, owns_dirs=True)
    if opts is None:
        values["find_links"] = tuple(values.get("find_links") or ())
        opts = PackOptions(**values)
    comp = get_competition(competition)
    _check_options(comp, competition, opts)
    runs, preds, thresholds = _classify(inputs, comp.task)
    base_list = wh.read_base(Path(opts.base) if opts.base else wh.DEFAULT_BASE)
    plan = Tracer(competition, runs).plan(preds, thresholds)
    # what the recorded chain reads is known only now: runs, inputs of each step, thresholds and stack's OOF files
    chain = [*plan.runs, *plan.statics.values(), *[s.source for s in plan.steps if s.source]]
    check_outputs(dirs={"-o": output}, inputs=chain, owns_dirs=True)
    out = _package_dir(output)
    paths = Paths(opts.input_dir or f"{KAGGLE_INPUT}/{getattr(comp, 'kaggle_slug', competition)}", opts.work,
                  opts.submission)
    options.validated("pack")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        summary = _write(tmp, plan, comp_name=competition, paths=paths, base=base_list, opts=opts)
        summary["estimate"] = est = estimate(plan.steps, test_images=opts.test_images, limit=opts.limit)
        write_manifest(tmp, {**summary, "base": str(opts.base or wh.DEFAULT_BASE.name)})
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from kcomp.pack.models import tree_bytes

    source = sum(tree_bytes(r) for r in plan.runs)
    size = tree_bytes(out)
    return {"package": output, **summary, "estimate": est, "bytes": size, "runs_bytes": source,
            "models_bytes": tree_bytes(out / "models"), "warnings": plan.warnings}


def _write(root: Path, plan: Plan, *, comp_name: str, paths: Paths, base: dict[str, str | None],
           opts: PackOptions) -> dict[str, Any]:
    import nbformat

    from kcomp import __version__
    from kcomp.artifacts import atomic_write_bytes
    from kcomp.pack.models import pack_run

    for run in plan.runs.values():
        pack_run(run, root / "models" / run.name, half=opts.half)
    for rel, src in plan.statics.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
    (root / "wheels").mkdir()
    kcomp_wheel = wh.build_kcomp_wheel(root / "wheels")
    pins, notes = wh.missing(wh.wheel_requires(kcomp_wheel), base)
    wh.fetch_wheels(pins, root / "wheels", find_links=list(opts.find_links), no_index=opts.no_index,
                    python_version=opts.python_version, platform=opts.platform)
    blocks = _blocks(plan, comp_name, opts.sample, opts.none_power)
    commands = [ln for b in blocks for ln in b.lines]
    package_id = content_id(files_of(root), commands)
    header = (f"# kcomp inference package {package_id} for {comp_name}: {len(plan.runs)} run(s), made by kcomp "
              f"{__version__} (`kcomp pack`).\n# Replays the recorded chain offline on the competition's data and "
              f"writes the submission.\n#\n# Here: bash predict.sh (set INPUT, WORK, OUT to override). On Kaggle: "
              f"the same cells in predict.ipynb.\n")
    sh = root / "predict.sh"
    atomic_write_bytes(sh, predict_sh(blocks, paths, header).encode())
    sh.chmod(0o755)
    nb = notebook(blocks, paths, package_id, header)
    nbformat.validate(nb)
    atomic_write_bytes(root / "predict.ipynb", nbformat.writes(nb).encode())
    return {"id": package_id, "competition": comp_name, "commands": commands,
            "runs": {r.name: {"source": str(r.source), "checkpoints": sorted(r.checkpoints | {"best"}),
                              "half": opts.half} for r in plan.runs.values()},
            "wheels": sorted(p.name for p in (root / "wheels").glob("*.whl")), "version_notes": notes,
            "input": paths.input, "submission": paths.out}


def _blocks(plan: Plan, comp: str, sample: str, none_power: float | None) -> list[Block]:
    def lines(kinds: tuple[str, ...]) -> list[str]:
        return [render(s.argv) for s in plan.steps if s.kind in kinds]

    submit = ["kcomp", "submit", comp, *plan.finals, "-o", Ref("OUT")]
    submit += ["--sample", Ref("INPUT", sample)] if sample else []
    submit += ["--thresholds", plan.thresholds] if plan.thresholds else []
    submit += ["--none-power", repr(none_power)] if none_power is not None else []
    blocks = [
        # --no-deps: pack chose the wheels against the image's list, and pip's resolver would stop at any conflict
        # among the image's own packages that kcomp's dependencies touch
        Block("Install kcomp and the wheels the image lacks, from the package only (no network)",
              ['python -m pip install --quiet --no-index --no-deps --no-warn-script-location "$PKG"/wheels/*.whl']),
        Block("Check the package: a changed, missing or extra file stops here", ['kcomp pack --verify "$PKG"']),
        Block("Index the competition's data as the runs' data was indexed", lines(("prep",))),
        Block("Predict the test rows: each recorded tta, with its options", lines(("tta",))),
        Block("Combine, as recorded", lines(("ensemble", "wbf", "stack"))),
        Block("Write the submission", [render(submit)]),
    ]
    return [b for b in blocks if b.lines]


def _classify(inputs: list[str], task: str) -> tuple[list[Path], list[Path], Path | None]:
    from kcomp.artifacts.thresholds import read_thresholds
    from kcomp.report.build import kind_of

    if not inputs:
        raise BadUsage("give the test predictions to replay (and their runs, thresholds), or --verify PKG")
    runs, preds, thresholds = [], [], []
    for text in inputs:
        p = Path(text)
        kind = kind_of(p)
        if kind == "run":
            runs.append(p if p.is_dir() else p.parent)
        elif kind == "thresholds":
            read_thresholds(p)
            thresholds.append(p)
        else:
            preds.append(p)
    if not preds:
        raise BadUsage("give the test predictions `kcomp submit` takes: pack replays the chain that made them")
    if len(thresholds) > 1:
        raise BadUsage(f"give at most one thresholds file, got {', '.join(map(str, thresholds))}")
    if not thresholds and task in THRESHOLDED:
        raise BadUsage(f"{task} submissions are cut at tuned thresholds: give the THRESHOLDS.json from "
                       f"`kcomp tune-threshold` among the inputs")
    return runs, preds, thresholds[0] if thresholds else None


def _check_options(comp: Any, name: str, opts: PackOptions) -> None:
    """Every option's error before anything is read or written."""
    import inspect

    sample, none_power = opts.sample, opts.none_power
    if sample and not _shell_safe(sample):
        raise BadUsage(f"--sample {sample}: give a file name relative to the input dir ([A-Za-z0-9._/-])")
    paths = {"--input": opts.input_dir, "--work": opts.work, "--submission": opts.submission}
    for flag, value in paths.items():  # they land in predict.sh inside double quotes
        if value is not None and (not value or any(c in value for c in '"$`\\\n')):
            raise BadUsage(f"{flag} {value!r}: give a path without quotes, $, backquotes or backslashes")
    for link in opts.find_links:
        if "://" not in link and not Path(link).is_dir():
            raise BadInput("--find-links: no such directory", path=link)
    params = inspect.signature(comp.submit).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if none_power is not None and not takes_any and "none_power" not in params:
        raise BadUsage(f"--none-power does not apply to competition {name}")


def _package_dir(output: str) -> Path:
    """A new or empty directory, or an earlier package (replaced whole). `check_outputs` has refused the rest: a
    file, stdout, an input, a directory holding an input or lying inside an input run."""
    out = Path(output).resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BadUsage(f"-o {output}: exists, is not empty and is not a kcomp package; give a new or empty directory")
    return out


def _replace(tmp: Path, out: Path) -> None:
    """Swap the finished package in; an earlier one at `out` goes only once the new one is complete."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


def _shell_safe(text: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9._/-]+", text)) and ".." not in text.split("/")


def verify(package: str) -> dict[str, Any]:
    from kcomp.pack.manifest import verify as check

    p = Path(package)
    if package in ("", "-"):
        raise BadInput("give the package directory to verify", path=package or "(empty)")
    return check(p)
