"""Prediction tables: `id`, `fold`, per-task values (class probabilities for cls), with what they mean in metadata.

Det boxes never pass through pandas: the `boxes` column is read by pyarrow into a flat `Boxes` container
(`Predictions.boxes`, one image per row of `df`, which then has no `boxes` column) and written back from it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.artifacts._atomic import atomic_write
from kcomp.artifacts._meta import carried
from kcomp.artifacts.boxes import FIELDS, Boxes
from kcomp.artifacts.tables import STDIO, read_arrow, require_columns, write_table
from kcomp.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("oof", "test")
# the column holding each task's predicted values
VALUE_COLUMNS = {"cls": "probs", "det": "boxes", "ink": "map_key", "seg": "map_key"}


@dataclass
class Predictions:
    df: pd.DataFrame
    meta: dict[str, Any]
    source: str
    boxes: Boxes | None = None  # det: image i's boxes are those of df row i

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def carried_meta(self) -> dict[str, Any]:
        """Metadata a file derived from this one (ensemble, stack, wbf) keeps."""
        return carried(self.meta)

    def maps(self) -> Any:
        """Dense maps (uint8, prob*255) keyed by `map_key`; an NpzFile loads one map at a time."""
        import zipfile

        path = maps_path(self.source, self.meta)
        try:
            return np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise BadInput(f"not a readable .npz of maps (truncated or corrupt?): {e}", path=path) from None

    def index(self, why: str) -> Any:
        """The index these predictions were made from (metadata `index`, as recorded or beside this file), which
        holds what the predictions lack: true masks, boxes, image paths, study ids. `why` ends the error line."""
        from kcomp.artifacts.index import read_index

        ref = self.meta.get("index")
        if not ref:
            raise BadInput(f"predictions lack the index metadata ({why})", path=self.source)
        p = Path(ref)
        if not p.is_absolute() and not p.is_file() and (Path(self.source).parent / p).is_file():
            p = Path(self.source).parent / p
        return read_index(p)

    def probs(self) -> np.ndarray:
        if self.boxes is not None:
            raise BadInput("holds det boxes, not probabilities: boxes are fused with `kcomp wbf`", path=self.source)
        return np.stack(self.df["probs"].to_numpy()).astype(np.float32) if len(self.df) else np.zeros((0, 0))


def write_predictions(df: pd.DataFrame, path: str | Path, *, task: str, kind: str, classes: list[str],
                      boxes: Boxes | None = None, **meta: Any) -> str:
    """Det: `boxes` (one image per row of `df`), else df's `boxes` column (cells as `Boxes.from_cells` takes)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if task == "det" or boxes is not None:
        if boxes is None:
            boxes = Boxes.from_cells(df["boxes"])
        if len(boxes) != len(df):
            raise ValueError(f"{len(boxes)} images of boxes for {len(df)} rows")
        meta.setdefault("values", "boxes")
        return write_table(df.drop(columns="boxes", errors="ignore"), path, "predictions",
                           arrays={"boxes": boxes.to_arrow()}, task=task, kind=kind, classes=classes, **meta)
    meta.setdefault("values", "probabilities")
    if "map" in df.columns:
        maps = zip(df["map_key"], df["map"], strict=True)
        return write_map_predictions(df.drop(columns=["map"]), path, maps, task=task, kind=kind, classes=classes,
                                     **meta)
    return write_table(df, path, "predictions", task=task, kind=kind, classes=classes, **meta)


def write_map_predictions(df: pd.DataFrame, path: str | Path, maps: Iterable[tuple[Any, np.ndarray]], *, task: str,
                          kind: str, classes: list[str], **meta: Any) -> str:
    """Dense maps go to an .npz beside the table, one map at a time (memory stays at one map however many rows),
    and before the table, so a table never points at a missing or half-written npz."""
    import zipfile

    if str(path) == STDIO:
        from kcomp.errors import BadUsage

        raise BadUsage("dense predictions (maps) cannot be written to stdout; give -o PATH")
    npz = _npz_name(path)
    with atomic_write(Path(path).parent / npz) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
        for key, m in maps:
            with zf.open(f"{key}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.ascontiguousarray(m), allow_pickle=False)
    meta.update(maps_file=npz, values="uint8 probability*255 maps")
    return write_table(df, path, "predictions", task=task, kind=kind, classes=classes, **meta)


def _npz_name(path: str | Path) -> str:
    p = Path(path)
    return p.with_suffix(".npz").name if p.suffix == ".parquet" else p.name + ".npz"


def maps_path(source: str, meta: dict[str, Any]) -> Path:
    if "maps_file" not in meta:
        raise BadInput("holds no dense maps (no maps_file in its metadata)", path=source)
    p = Path(source).parent / meta["maps_file"]
    if not p.is_file():
        raise BadInput(f"its maps file {p} is missing", path=source)
    return p


def read_predictions(path: str | Path, *, kind: str | None = None) -> Predictions:
    table, meta = read_arrow(path, "predictions")
    where = "<stdin>" if str(path) == STDIO else str(path)
    if table.num_rows == 0:
        raise BadInput("prediction file has no rows", path=where)
    value_col = VALUE_COLUMNS.get(meta.get("task", ""), "probs")
    missing = [c for c in ("id", value_col) if c not in table.column_names]
    if missing:
        raise BadInput(f"missing column(s) {', '.join(missing)}", path=where)
    boxes = None
    if value_col == "boxes":
        try:
            boxes = Boxes.from_arrow(table.column("boxes"))
        except BadInput as e:
            raise BadInput(str(e), path=where) from None
        table = table.drop_columns(["boxes"])
    df = table.to_pandas()
    if kind is not None and meta.get("kind") != kind:
        raise BadInput(f"holds {meta.get('kind')} predictions, expected {kind}", path=where)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise BadInput(f"duplicate id {dup.iloc[0]!r}", path=where)
    preds = Predictions(df, meta, where, boxes)
    if boxes is not None:
        _check_boxes(boxes, df, where)
        return preds
    if value_col == "map_key":
        maps_path(where, meta)
        return preds
    widths = {len(p) for p in df["probs"]}
    if len(widths) != 1:
        raise BadInput(f"rows have probability vectors of different lengths {sorted(widths)}", path=where)
    p = preds.probs()
    bad = ~np.isfinite(p).all(axis=tuple(range(1, p.ndim)))
    if bad.any():
        raise BadInput(f"NaN or inf in probs for id {df['id'].iloc[int(np.argmax(bad))]!r} "
                       f"({int(bad.sum())} row(s))", path=where)
    return preds


def one_test_file(preds: list[Predictions], task: str) -> Predictions:
    """The single test prediction file of `task` a one-file preset submits; several files are blended first."""
    from kcomp.errors import BadUsage

    if len(preds) != 1:
        raise BadUsage(f"expected one prediction file, got {len(preds)} (combine them with `kcomp ensemble`)")
    p = preds[0]
    if p.task != task or p.kind != "test":
        raise BadInput(f"holds {p.kind} predictions of task {p.task}; expected test predictions of task {task}",
                       path=p.source)
    return p


def check_compatible(preds: list[Predictions]) -> None:
    """Files combined by ensemble/stack must describe the same rows with the same meaning."""
    first = preds[0]
    for other in preds[1:]:
        for key in ("task", "kind"):
            if other.meta.get(key) != first.meta.get(key):
                raise BadInput(f"{key} {other.meta.get(key)!r} differs from {first.meta.get(key)!r} of {first.source}",
                               path=other.source)
        if other.classes != first.classes:
            raise BadInput(f"classes differ from those of {first.source}", path=other.source)
        a, b = set(first.df["id"]), set(other.df["id"])
        if a != b:
            extra = sorted(b - a) or sorted(a - b)
            raise BadInput(f"ids differ from {first.source} ({len(a ^ b)} not shared, e.g. {extra[0]!r})",
                           path=other.source)


def aligned(preds: list[Predictions]) -> list[np.ndarray]:
    """Each file's probabilities in the first file's id order."""
    order = preds[0].df["id"]
    out = []
    for p in preds:
        pos = {v: i for i, v in enumerate(p.df["id"])}
        out.append(p.probs()[[pos[v] for v in order]])
    return out


def aligned_boxes(preds: list[Predictions]) -> list[Boxes]:
    """Each det file's boxes in the first file's id order (ids checked by `check_compatible`)."""
    import pandas as pd

    order = preds[0].df["id"]
    out = []
    for p in preds:
        if p.boxes is None:
            raise BadInput(f"holds {p.task} predictions, not boxes", path=p.source)
        pos = pd.Index(p.df["id"]).get_indexer(order)
        if (pos < 0).any():
            raise BadInput(f"lacks id {order.iloc[int(np.argmax(pos < 0))]!r} of {preds[0].source}", path=p.source)
        out.append(p.boxes if (pos == np.arange(len(pos))).all() else p.boxes.take(pos))
    return out


def _check_boxes(boxes: Boxes, df: pd.DataFrame, where: str) -> None:
    """Every check of a det file's box values, on the flat arrays (the one place for them)."""
    require_columns(df, ["height", "width"], where)
    if len(boxes) != len(df):
        raise BadInput(f"{len(boxes)} box lists for {len(df)} rows", path=where)
    bad = ~(np.isfinite(boxes.xyxy).all(axis=1) & np.isfinite(boxes.score))
    if bad.any():
        k = int(np.argmax(bad))
        image = int(np.searchsorted(boxes.offsets, k, side="right")) - 1
        shown = " ".join(f"{f}={v}" for f, v in zip(FIELDS, [*boxes.xyxy[k].tolist(), float(boxes.score[k])]))
        raise BadInput(f"id {df['id'].iloc[image]!r}: NaN or inf in box {shown}", path=where)


def pair_by_runs(oofs: list[Predictions], tests: list[Predictions]) -> tuple[list[Predictions], list[Predictions]]:
    """Order test files to match OOF files made by the same runs (falling back to the order given), so
    `--test B A` cannot silently pair model A's OOF with model B's test predictions."""
    from kcomp.errors import BadUsage

    if len(oofs) != len(tests):
        raise BadUsage(f"got {len(oofs)} OOF file(s) and {len(tests)} test file(s); give one of each per model")
    keys = [tuple(p.meta.get("runs") or ()) for p in tests]
    if all(keys) and len(set(keys)) == len(keys):
        by_runs = dict(zip(keys, tests, strict=True))
        if all(tuple(o.meta.get("runs") or ()) in by_runs for o in oofs):
            return oofs, [by_runs[tuple(o.meta["runs"])] for o in oofs]
    return oofs, tests

