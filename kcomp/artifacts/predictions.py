"""Prediction tables: `id`, `fold`, per-task values (class probabilities for cls), with what they mean in metadata.

Det boxes never pass through pandas: the `boxes` column is read by pyarrow into a flat `Boxes` container
(`Predictions.boxes`, one image per row of `df`, which then has no `boxes` column) and written back from it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from kcomp.artifacts._atomic import atomic_write, streamed_target
from kcomp.artifacts._input import regular_file
from kcomp.artifacts._meta import carried, plain
from kcomp.artifacts.boxes import Boxes
from kcomp.artifacts.index import check_integers
from kcomp.artifacts.tables import STDIO, read_arrow, require_columns, to_pandas, write_table
from kcomp.errors import BadInput, shown

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

    def maps(self) -> MapsFile:
        """Dense maps (uint8, prob*255) keyed by `map_key`, loaded one map at a time."""
        import zipfile

        path = maps_path(self.source, self.meta)
        try:
            return MapsFile(np.load(path, allow_pickle=False), path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise BadInput(f"not a readable .npz of maps (truncated or corrupt?): {e}", path=path) from None

    def index(self, why: str) -> Any:
        """The index these predictions were made from (metadata `index`, as recorded or beside this file), which
        holds what the predictions lack: true masks, boxes, image paths, study ids. `why` ends the error line."""
        from kcomp.artifacts.index import read_index

        p = index_path(self.source, self.meta)
        if p is None:
            raise BadInput(f"predictions lack the index metadata ({why})", path=self.source)
        return read_index(p)

    def probs(self) -> np.ndarray:
        if self.boxes is not None:
            raise BadInput("holds det boxes, not probabilities: boxes are fused with `kcomp wbf`", path=self.source)
        return np.stack(self.df["probs"].to_numpy()).astype(np.float32) if len(self.df) else np.zeros((0, 0))


class MapsFile:
    """An NpzFile of maps whose missing keys, unreadable entries and non-numeric arrays are bad input naming the
    .npz (a KeyError or a zip error deep inside tune-threshold or submit would be an 'internal error')."""

    def __init__(self, npz: Any, path: Path) -> None:
        self._npz, self.path = npz, path

    @property
    def files(self) -> list[str]:
        return self._npz.files

    @property
    def zip(self) -> Any:
        """The archive itself, to read a map's .npy header without the map (`tasks.seg._npz_shape`)."""
        return self._npz.zip

    def __contains__(self, key: str) -> bool:
        return key in self._npz.files

    def __getitem__(self, key: str) -> np.ndarray:
        import zipfile

        if key not in self._npz.files:
            raise BadInput(f"has no map {key!r} (a map_key of its predictions)", path=self.path)
        try:
            m = self._npz[key]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise BadInput(f"map {key!r} is not readable (truncated or corrupt?): {e}", path=self.path) from None
        if m.dtype != np.uint8 and m.dtype.kind != "f":
            raise BadInput(f"map {key!r} holds {m.dtype}, expected uint8 probability*255 (or floats)", path=self.path)
        return m

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def index_path(source: str, meta: dict[str, Any]) -> Path | None:
    """The index recorded in a predictions file's metadata: as recorded, or beside the predictions file."""
    ref = meta.get("index")
    if not ref or not isinstance(ref, str):
        return None
    p = Path(ref)
    if not p.is_absolute() and not p.is_file() and (Path(source).parent / p).is_file():
        p = Path(source).parent / p
    return p


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

    from kcomp.errors import BadUsage

    if str(path) == STDIO or streamed_target(Path(path)) is not None:
        raise BadUsage(f"{shown(path)}: dense predictions write their maps to an .npz beside the table, so -o must "
                       f"name a regular file, not stdout, a FIFO or a device")
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


def maps_path_of(source: str, meta: dict[str, Any]) -> Path | None:
    """Where a predictions file's dense maps are (beside it), if its metadata names them."""
    name = meta.get("maps_file")
    return Path(source).parent / name if isinstance(name, str) and name else None


def maps_path(source: str, meta: dict[str, Any]) -> Path:
    p = maps_path_of(source, meta)
    if p is None:
        raise BadInput("holds no dense maps (no maps_file in its metadata)", path=source)
    if not p.exists():
        raise BadInput(f"its maps file {shown(p)} is missing", path=source)
    return regular_file(p, "an .npz of maps")


def read_predictions(path: str | Path, *, kind: str | None = None) -> Predictions:
    """A predictions table whose metadata, ids and values were checked: what a reader may rely on. Det boxes are
    read by pyarrow into `Predictions.boxes` (df then has no `boxes` column)."""
    table, meta = read_arrow(path, "predictions")
    where = "<stdin>" if str(path) == STDIO else str(path)
    value_col = _check_header(table, meta, kind, where)
    boxes = None
    if value_col == "boxes":
        try:
            boxes = Boxes.from_arrow(table.column("boxes"))
        except BadInput as e:
            raise BadInput(str(e), path=where) from None
        table = table.drop_columns(["boxes"])
    df = to_pandas(table, where)
    if df["id"].isna().any():
        raise BadInput(f"column id is empty for {int(df['id'].isna().sum())} row(s)", path=where)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise BadInput(f"duplicate id {dup.iloc[0]!r}", path=where)
    preds = Predictions(df, meta, where, boxes)
    if boxes is not None:
        _check_boxes(boxes, df, where, n_classes=len(preds.classes))
    elif value_col == "map_key":
        if df["map_key"].isna().any():
            raise BadInput(f"column map_key is empty for {int(df['map_key'].isna().sum())} row(s)", path=where)
        _check_sizes(df, where)
        maps_path(where, meta)
    else:
        _check_probs(df, preds.classes, meta.get("values", "probabilities"), where)
        if "target" in df.columns:  # OOF: the true class of each row, an index into the classes
            check_integers(df, "target", where, low=0, high=len(preds.classes) - 1 if preds.classes else None)
    return preds


def _check_header(table: Any, meta: dict[str, Any], kind: str | None, where: str) -> str:
    """Task, kind, rows and the id and value columns, before any value is looked at; returns the value column."""
    if meta["task"] not in VALUE_COLUMNS:
        raise BadInput(f"predictions of unknown task {meta['task']!r}; expected one of {', '.join(VALUE_COLUMNS)}",
                       path=where)
    if meta["kind"] not in KINDS:
        raise BadInput(f"predictions of kind {meta['kind']!r}; expected oof or test", path=where)
    if table.num_rows == 0:
        raise BadInput("prediction file has no rows", path=where)
    value_col = VALUE_COLUMNS[meta["task"]]
    missing = [c for c in ("id", value_col) if c not in table.column_names]
    if missing:
        raise BadInput(f"missing column(s) {', '.join(missing)}", path=where)
    if kind is not None and meta["kind"] != kind:
        raise BadInput(f"holds {meta['kind']} predictions, expected {kind}", path=where)
    return value_col


PROB_TOLERANCE = 1e-4  # float32 sums and float16 storage round a probability a little past 0 or 1


def _check_probs(df: pd.DataFrame, classes: list[str], values: str, where: str) -> None:
    """`probs`: one vector of numbers per row, all as long as the classes in the metadata, finite, and (for
    probabilities) within [0, 1]."""
    cells = df["probs"].to_numpy()
    not_vector = next((i for i, c in enumerate(cells) if not isinstance(c, (list, tuple, np.ndarray))), None)
    if not_vector is not None:
        cell = plain(cells[not_vector])
        raise BadInput(f"probs for id {df['id'].iloc[not_vector]!r} is {cell!r:.40}, expected a list of class "
                       f"probabilities", path=where)
    widths = np.array([len(c) for c in cells])
    want = len(classes) or int(widths[0])
    if (widths != want).any() or want == 0:
        i = int(np.argmax(widths != want)) if want else 0
        expected = f"the {len(classes)} classes in its metadata" if classes else f"{want} like the first row"
        raise BadInput(f"probs for id {df['id'].iloc[i]!r} has {widths[i]} value(s), expected {expected}",
                       path=where)
    try:
        p = np.stack([np.asarray(c, dtype=np.float64) for c in cells])
    except (TypeError, ValueError):
        raise BadInput("probs holds values that are not numbers", path=where) from None
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise BadInput(f"NaN or inf in probs for id {df['id'].iloc[int(np.argmax(bad))]!r} "
                       f"({int(bad.sum())} row(s))", path=where)
    if values == "probabilities":
        out = ((p < -PROB_TOLERANCE) | (p > 1 + PROB_TOLERANCE)).any(axis=1)
        if out.any():
            i = int(np.argmax(out))
            raise BadInput(f"probs for id {df['id'].iloc[i]!r} has {p[i].min():g}..{p[i].max():g}; probabilities "
                           f"lie in [0, 1]", path=where)


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


def _check_sizes(df: pd.DataFrame, where: str) -> None:
    """The original image sizes det and dense predictions carry (boxes are in its pixels, maps resized to it)."""
    for col in ("height", "width"):
        if col not in df.columns:
            continue
        sizes = df[col].to_numpy()
        bad = [not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) or v < 1 for v in sizes]
        if any(bad):
            i = bad.index(True)
            raise BadInput(f"column {col} has value {plain(sizes[i])!r} for id {df['id'].iloc[i]!r}; image sizes are "
                           f">= 1 pixel", path=where)


def _check_boxes(boxes: Boxes, df: pd.DataFrame, where: str, *, n_classes: int) -> None:
    """Every check of a det file's box values, on the flat arrays (the one place for them): one box list per row,
    image sizes positive (boxes are in original pixels), then `check_box_values`."""
    require_columns(df, ["height", "width"], where)
    _check_sizes(df, where)
    if len(boxes) != len(df):
        raise BadInput(f"{len(boxes)} box lists for {len(df)} rows", path=where)
    check_box_values(boxes.xyxy, boxes.score, boxes.label, n_classes=n_classes,
                     box_ids=lambda j: df["id"].iloc[int(boxes.image_index()[j])], where=where)


def check_box_values(coords: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, n_classes: int,
                     box_ids: Callable[[int], Any], where: str) -> None:
    """Box values as flat arrays ((k, 4) x1 y1 x2 y2 in pixels, (k,) scores, (k,) labels; `box_ids(j)` is box j's
    image id, looked up only for the error line): finite coordinates, scores in [0, 1], labels that index the
    classes in the metadata."""
    def fail(mask: np.ndarray, what: str) -> None:
        j = int(np.argmax(mask))
        raise BadInput(f"id {box_ids(j)!r}: box {j_box(j)} has {what}", path=where)

    def j_box(j: int) -> str:
        return "[" + ", ".join(f"{v:g}" for v in (*coords[j], scores[j], labels[j])) + "]"

    if len(scores) == 0:
        return
    finite = np.isfinite(coords).all(axis=1) & np.isfinite(scores) & np.isfinite(labels)
    if not finite.all():
        fail(~finite, "NaN or inf")
    score_bad = (scores < 0) | (scores > 1 + PROB_TOLERANCE)
    if score_bad.any():
        fail(score_bad, "a score outside [0, 1]")
    label_bad = (labels % 1 != 0) | (labels < 0) | ((labels >= n_classes) if n_classes else False)
    if label_bad.any():
        fail(label_bad, f"label outside the classes 0..{n_classes - 1}" if n_classes else "a label that is not "
             "a class number")


# how `oof`/`tta` made a file (metadata keys): OOF and test predictions stacked together must agree on them
MADE_WITH = ("tta", "checkpoints", "out_size")


def check_made_alike(oof: Predictions, test: Predictions) -> None:
    """A level-2 model learns on OOF predictions and is applied to test predictions: made another way (other TTA
    views, checkpoints, map size), the test inputs follow a distribution it never saw."""
    if (oof.task, oof.classes) != (test.task, test.classes):
        raise BadInput(f"task {oof.task} with classes {oof.classes} differs from its test predictions "
                       f"{shown(test.source)} ({test.task}, {test.classes})", path=oof.source)
    for key in MADE_WITH:
        if key in oof.meta and key in test.meta and oof.meta[key] != test.meta[key]:
            raise BadInput(f"made with {key} {oof.meta[key]!r}, but its test predictions {shown(test.source)} with "
                           f"{key} {test.meta[key]!r}; make both the same way", path=oof.source)


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
