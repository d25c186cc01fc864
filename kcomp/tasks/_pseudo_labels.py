"""Per task, a row's pseudo-label confidence and its label columns written the way that task's index stores them
(`kcomp.tasks.pseudo` selects the rows and writes the table)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.index import IndexTable
    from kcomp.artifacts.predictions import Predictions


def decision_certainty(values: np.ndarray, threshold: float) -> np.ndarray:
    """|p - t| / (1 - t) above the threshold t, (t - p) / t below it: 0 at t, 1 at 0 or 1."""
    v = np.asarray(values, np.float64)
    above = (v - threshold) / max(1.0 - threshold, 1e-12)
    below = (threshold - v) / max(threshold, 1e-12)
    return np.clip(np.where(v >= threshold, above, below), 0.0, 1.0)


def map_confidence(prob: np.ndarray, threshold: float, inside: np.ndarray | None = None) -> float:
    """Mean decision certainty of a uint8 (probability x 255) map over its pixels that could be positive (p >= t/2),
    optionally only `inside` a region; 1 when none could. From a 256-bin histogram, so a whole fragment is cheap."""
    values = prob[inside] if inside is not None else prob.ravel()
    counts = np.bincount(values.astype(np.uint8, copy=False).ravel(), minlength=256)
    p = np.arange(256) / 255.0
    counts = counts * (p >= threshold / 2)
    total = counts.sum()
    return 1.0 if total == 0 else float((counts * decision_certainty(p, threshold)).sum() / total)


def index_rows(table: IndexTable, preds: Predictions, picked: np.ndarray) -> pd.DataFrame:
    """The index rows of the predictions' rows `picked`, as training rows (split train, no fold)."""
    by_id = table.df.set_index("id", drop=False)
    ids = preds.df["id"].to_numpy()[picked]
    missing = [i for i in ids if i not in by_id.index]
    if missing:
        raise BadInput(f"id {missing[0]!r} is not in the index {table.source}", path=preds.source)
    rows = by_id.loc[list(ids)].reset_index(drop=True)
    labelled = rows[rows["split"] != "test"]
    if len(labelled):
        raise BadInput(f"id {labelled['id'].iloc[0]!r} is a {labelled['split'].iloc[0]} row of {table.source}; "
                       "pseudo labels are for unlabelled (test) rows", path=preds.source)
    rows = rows.drop(columns=[c for c in ("fold",) if c in rows.columns])
    rows["split"] = "train"
    return rows


# ------------------------------------------------------------------------------------------------------------ cls

class _Cls:
    @staticmethod
    def confidence(p: Predictions, table: IndexTable, settings: Any, min_score: float) -> np.ndarray:
        return p.probs().max(1).astype(np.float64)

    @staticmethod
    def rows(p: Predictions, table: IndexTable, picked: np.ndarray, settings: Any, **opts: Any) -> pd.DataFrame:
        """The argmax class in the run's target column, as an index stores it (class index or name)."""
        target = p.meta.get("target") or "label"
        if target not in table.df.columns:
            raise BadInput(f"the predictions' target column {target!r} is not in the index {table.source}",
                           path=p.source)
        rows = index_rows(table, p, picked)
        probs = p.probs()[picked]
        top = probs.argmax(1) if len(picked) else np.zeros(0, np.int64)
        if table.df[target].dtype.kind in "iu":
            rows[target] = top.astype(np.int64)
        else:
            rows[target] = [p.classes[k] for k in top]
        if opts.get("soft"):
            rows["soft"] = list(probs.astype(np.float32))
        return rows


# ------------------------------------------------------------------------------------------------------------ seg

def _seg_map(maps: Any, key: str, n_classes: int, where: str) -> np.ndarray:
    if key not in maps.files:
        raise BadInput(f"its maps file has no map {key!r}", path=where)
    m = maps[key]
    if m.ndim != 3 or m.shape[0] != n_classes or m.dtype != np.uint8:
        raise BadInput(f"map {key!r} has shape {m.shape} ({m.dtype}); expected ({n_classes}, height, width) uint8",
                       path=where)
    return m


class _Seg:
    @staticmethod
    def _settings(cache: dict, thresholds: Any, classes: list[str], size: tuple[int, int]) -> list[tuple]:
        from kcomp.post.tuned import seg_settings

        if size not in cache:
            per = seg_settings(thresholds, classes, size)
            cache[size] = [per[c] for c in classes]
        return cache[size]

    @staticmethod
    def confidence(p: Predictions, table: IndexTable, settings: Any, min_score: float) -> np.ndarray:
        cache: dict = {}
        out = []
        with p.maps() as maps:
            for key in p.df["map_key"].astype(str):
                m = _seg_map(maps, key, len(p.classes), p.source)
                per = _Seg._settings(cache, settings, p.classes, m.shape[1:])
                out.append(min(map_confidence(m[c], s[0]) for c, s in enumerate(per)))
        return np.asarray(out, np.float64)

    @staticmethod
    def rows(p: Predictions, table: IndexTable, picked: np.ndarray, settings: Any, **opts: Any) -> pd.DataFrame:
        """Each class's post-processed mask brought to the image size (nearest) and RLE-encoded in the index's
        pixel order; `labels` = which classes are present (what `split` stratifies on)."""
        import cv2

        from kcomp.formats.rle import encode
        from kcomp.post.seg_threshold import postprocess
        from kcomp.tasks.seg import mask_column

        missing = [mask_column(c) for c in p.classes if mask_column(c) not in table.df.columns]
        if missing:
            raise BadInput(f"index {table.source} has no column {missing[0]} for class {missing[0][5:]!r}",
                           path=p.source)
        rows = index_rows(table, p, picked)
        order = table.meta.get("rle_order", "column")
        cache: dict = {}
        rles: list[list[str]] = [[] for _ in p.classes]
        with p.maps() as maps:
            for key, h, w in zip(p.df["map_key"].astype(str).to_numpy()[picked], rows["height"], rows["width"],
                                 strict=True):
                m = _seg_map(maps, key, len(p.classes), p.source)
                for c, (thr, min_size, top) in enumerate(_Seg._settings(cache, settings, p.classes, m.shape[1:])):
                    mask = postprocess(m[c], thr, min_size, top).view(np.uint8)
                    full = cv2.resize(mask, (int(w), int(h)), interpolation=cv2.INTER_NEAREST_EXACT)
                    rles[c].append(encode(full, order=order))
        for c, name in enumerate(p.classes):
            rows[mask_column(name)] = rles[c]
        rows["labels"] = [[int(bool(rles[c][i])) for c in range(len(p.classes))] for i in range(len(rows))]
        return rows


# ------------------------------------------------------------------------------------------------------------ ink

class _Ink:
    @staticmethod
    def _fragments(p: Predictions, table: IndexTable, picked: np.ndarray | None = None) -> Any:
        """(index row, its papyrus mask rows y0:y1, its map) per prediction row, one at a time."""
        from kcomp.data.layers import read_png_mask

        idx = np.arange(len(p.df)) if picked is None else picked
        rows = index_rows(table, p, idx)
        keys = p.df["map_key"].astype(str).to_numpy()[idx]
        with p.maps() as maps:
            for (_, row), key in zip(rows.iterrows(), keys, strict=True):
                if key not in maps.files:
                    raise BadInput(f"its maps file has no map {key!r}", path=p.source)
                h, w, y0, y1 = (int(row[c]) for c in ("height", "width", "y0", "y1"))
                prob = maps[key]
                mask = read_png_mask(table.file(row["mask"]), (h, w))[y0:y1]
                if prob.shape != mask.shape:
                    raise BadInput(f"map {key!r} is {prob.shape}; its fragment rows {y0}..{y1} are {mask.shape}",
                                   path=p.source)
                yield row, mask, prob

    @staticmethod
    def confidence(p: Predictions, table: IndexTable, settings: Any, min_score: float) -> np.ndarray:
        from kcomp.post.tuned import ink_settings

        thr, _ = ink_settings(settings)
        return np.asarray([map_confidence(prob, thr, mask) for _, mask, prob in _Ink._fragments(p, table)])

    @staticmethod
    def rows(p: Predictions, table: IndexTable, picked: np.ndarray, settings: Any, **opts: Any) -> pd.DataFrame:
        """The post-processed map as a full-fragment 0/255 PNG (rows outside y0:y1 empty) in `labels_dir`."""
        import pandas as pd

        from kcomp.post.ink_threshold import postprocess
        from kcomp.post.tuned import ink_settings

        thr, min_size = ink_settings(settings)
        labels_dir: Path = opts["labels_dir"]
        out, names = [], set()
        for row, mask, prob in _Ink._fragments(p, table, picked):
            label = np.zeros((int(row["height"]), int(row["width"])), np.uint8)
            label[int(row["y0"]):int(row["y1"])] = postprocess(prob, mask, thr, min_size) * np.uint8(255)
            name = _unique_png(str(row["id"]), names)
            _write_png(labels_dir / name, label)
            out.append({**row.to_dict(), "inklabels": name})
        return pd.DataFrame(out) if out else index_rows(table, p, picked)


def _unique_png(rid: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in rid).strip("._") or "_"
    name, k = f"{base}.png", 2
    while name in used:
        name, k = f"{base}-{k}.png", k + 1
    used.add(name)
    return name


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    from kcomp.artifacts import atomic_write_bytes

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise BadInput("could not encode the label PNG", path=path)
    atomic_write_bytes(path, buf.tobytes())


# ------------------------------------------------------------------------------------------------------------ det

def det_boxes(p: Predictions) -> list[np.ndarray]:
    """Each row's predicted boxes as a (k, 6) array [x1, y1, x2, y2, score, label] in original pixels, from the
    flat `Boxes` columns the reader built (no Python object per box)."""
    return p.boxes.rows()


class _Det:
    @staticmethod
    def confidence(p: Predictions, table: IndexTable, settings: Any, min_score: float) -> np.ndarray:
        return np.asarray([decision_certainty(b[:, 4], min_score).min(initial=1.0) for b in det_boxes(p)])

    @staticmethod
    def rows(p: Predictions, table: IndexTable, picked: np.ndarray, settings: Any, **opts: Any) -> pd.DataFrame:
        """Boxes scoring at least min_score, as the index's {x1, y1, x2, y2, label} records (label: class name)."""
        rows = index_rows(table, p, picked)
        boxes = det_boxes(p)
        names = p.classes

        def label(k: float) -> str:
            return names[int(k)] if 0 <= int(k) < len(names) else str(int(k))

        rows["boxes"] = [[{"x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]),
                           "label": label(b[5])} for b in boxes[i] if b[4] >= opts["min_score"]] for i in picked]
        return rows


HANDLERS: dict[str, Any] = {"cls": _Cls, "seg": _Seg, "ink": _Ink, "det": _Det}
