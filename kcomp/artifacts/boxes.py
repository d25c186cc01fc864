"""Detection boxes of many images as flat columns, never as one Python object per box.

Image i's boxes are rows `offsets[i]:offsets[i + 1]` of `xyxy` (x1, y1, x2, y2), `score` and `label` (a class
index). Prediction files store them as the column `boxes: list<struct<x1, y1, x2, y2: double, score: double,
label: int64>>` (one list per image); `from_arrow` / `to_arrow` convert that column in C, so reading, fusing and
writing 1M boxes costs array operations, not 1M dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput

if TYPE_CHECKING:
    import pyarrow as pa

FIELDS = ("x1", "y1", "x2", "y2", "score", "label")
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class Boxes:
    """`len()` is the number of images; `n_boxes` the number of boxes. Arrays are not copied on slicing."""

    offsets: np.ndarray  # int64 (n_images + 1,): 0, then the running box count
    xyxy: np.ndarray  # float64 (n_boxes, 4)
    score: np.ndarray  # float64 (n_boxes,)
    label: np.ndarray  # int64 (n_boxes,)

    def __post_init__(self) -> None:
        o, n = self.offsets, len(self.score)
        if o.ndim != 1 or len(o) == 0 or o[0] != 0 or o[-1] != n or (len(o) > 1 and (np.diff(o) < 0).any()):
            raise ValueError("offsets must start at 0, never decrease and end at the number of boxes")
        if self.xyxy.shape != (n, 4) or self.label.shape != (n,) or self.score.shape != (n,):
            raise ValueError(f"xyxy {self.xyxy.shape}, score {self.score.shape}, label {self.label.shape}: "
                             f"expected ({n}, 4), ({n},), ({n},)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_boxes(self) -> int:
        return len(self.score)

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def image_index(self) -> np.ndarray:
        """The image (0..len-1) of each box."""
        return np.repeat(np.arange(len(self)), self.counts())

    def image(self, i: int) -> Boxes:
        """One image's boxes (views)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Boxes(np.array([0, b - a]), self.xyxy[a:b], self.score[a:b], self.label[a:b])

    def take(self, images: np.ndarray | Sequence[int]) -> Boxes:
        """The boxes of `images` (indices, any order, repeats allowed), in that order."""
        images = np.asarray(images, dtype=np.int64)
        counts = self.counts()[images]
        offsets = _offsets(counts)
        rows = np.repeat(self.offsets[:-1][images] - offsets[:-1], counts) + np.arange(offsets[-1])
        return Boxes(offsets, self.xyxy[rows], self.score[rows], self.label[rows])

    def select(self, keep: np.ndarray) -> Boxes:
        """The boxes where the mask `keep` (one bool per box) holds; every image stays, perhaps empty."""
        counts = np.bincount(self.image_index()[keep], minlength=len(self))
        return Boxes(_offsets(counts), self.xyxy[keep], self.score[keep], self.label[keep])

    def rows(self) -> list[np.ndarray]:
        """Per image a (k, 6) float64 array [x1, y1, x2, y2, score, label] (what the mAP metric takes)."""
        flat = np.column_stack([self.xyxy, self.score, self.label.astype(np.float64)])
        return np.split(flat, self.offsets[1:-1])

    def column(self) -> np.ndarray:
        """`rows()` as a 1-D object array, one cell per image, for a DataFrame column (equal shapes stay cells)."""
        out = np.empty(len(self), dtype=object)
        for i, r in enumerate(self.rows()):
            out[i] = r
        return out

    @classmethod
    def empty(cls, n_images: int) -> Boxes:
        return cls(np.zeros(n_images + 1, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))

    @classmethod
    def from_flat(cls, image: np.ndarray, n_images: int, xyxy: np.ndarray, score: np.ndarray, label: np.ndarray
                  ) -> Boxes:
        """Boxes given with their image (0..n_images-1, ascending)."""
        counts = np.bincount(np.asarray(image, dtype=np.int64), minlength=n_images)
        return cls(_offsets(counts), np.asarray(xyxy, np.float64).reshape(-1, 4), np.asarray(score, np.float64),
                   _labels(label))

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray]) -> Boxes:
        """The inverse of `rows()`: per image a (k, 6) [x1, y1, x2, y2, score, label] array."""
        arrays = [np.asarray(r, dtype=np.float64).reshape(-1, 6) for r in rows]
        flat = np.concatenate(arrays) if arrays else np.zeros((0, 6))
        return cls(_offsets([len(a) for a in arrays]), flat[:, :4], flat[:, 4].copy(), _labels(flat[:, 5]))

    @classmethod
    def concat(cls, parts: Sequence[Boxes]) -> Boxes:
        """The images of every part, end to end."""
        return cls(_offsets(np.concatenate([p.counts() for p in parts] or [np.zeros(0, np.int64)])),
                   np.concatenate([p.xyxy for p in parts] or [np.zeros((0, 4))]),
                   np.concatenate([p.score for p in parts] or [np.zeros(0)]),
                   np.concatenate([p.label for p in parts] or [np.zeros(0, np.int64)]))

    @classmethod
    def from_cells(cls, cells: Any) -> Boxes:
        """A DataFrame column of boxes, one cell per image: (k, 6) arrays as `rows()` gives, or lists of
        {x1, y1, x2, y2, score, label} dicts (None is no box); dicts are converted by pyarrow, in C."""
        cells = list(cells)
        if cells and all(isinstance(c, np.ndarray) and c.dtype != object for c in cells):
            return cls.from_rows(cells)
        import pyarrow as pa

        typ = pa.list_(pa.struct([(k, pa.float64()) for k in FIELDS]))
        try:
            arr = pa.array([[] if c is None else list(c) for c in cells], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise BadInput(f"boxes must be lists of {{{', '.join(FIELDS)}}} dicts of numbers: {e}") from None
        return cls.from_arrow(arr)

    @classmethod
    def from_arrow(cls, column: Any) -> Boxes:
        """A list<struct> column (list or large_list, chunked or not; any numeric field types) as Boxes. A null
        list is an image without boxes; a missing field or a null value is an error."""
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) or \
                not pa.types.is_struct(arr.type.value_type):
            raise BadInput(f"boxes column is {arr.type}, expected lists of {{{', '.join(FIELDS)}}} structs")
        struct = arr.flatten()  # honours slicing and null lists
        names = [struct.type.field(i).name for i in range(struct.type.num_fields)]
        missing = [k for k in FIELDS if k not in names]
        if missing:
            raise BadInput(f"a box lacks {', '.join(missing)} (fields: {', '.join(names)})")
        children = dict(zip(names, struct.flatten(), strict=True))  # struct-level nulls become child nulls
        cols = {}
        for k in FIELDS:
            c = children[k]
            if c.null_count:
                raise BadInput(f"a box lacks one of {', '.join(FIELDS)} (null {k})")
            if not (pa.types.is_floating(c.type) or pa.types.is_integer(c.type)):
                raise BadInput(f"box field {k} is {c.type}, expected numbers")
            try:
                cols[k] = c.cast(pa.int64() if k == "label" else pa.float64()).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid as e:
                raise BadInput(f"box labels must be class indices (whole numbers): {e}") from None
        counts = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
        xyxy = np.stack([cols[k] for k in FIELDS[:4]], axis=1) if len(struct) else np.zeros((0, 4))
        return cls(_offsets(counts), xyxy.astype(np.float64, copy=False), cols["score"], cols["label"])

    def to_arrow(self) -> pa.Array:
        """The on-disk column: list<struct<x1, y1, x2, y2, score: double, label: int64>>, one list per image."""
        import pyarrow as pa

        fields = [np.ascontiguousarray(self.xyxy[:, q]) for q in range(4)] + [self.score, self.label]
        struct = pa.StructArray.from_arrays([pa.array(f) for f in fields], names=list(FIELDS))
        if self.n_boxes > _INT32_MAX:
            return pa.LargeListArray.from_arrays(pa.array(self.offsets, pa.int64()), struct)
        return pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32()), struct)


def _offsets(counts: Any) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def _labels(label: Any) -> np.ndarray:
    """Class indices as int64; a label that is not a whole number is an error (no silent truncation)."""
    lab = np.asarray(label)
    if lab.dtype.kind == "f":
        ok = np.isfinite(lab) & (lab == np.trunc(lab))
        if not ok.all():
            raise BadInput(f"box label {lab[~ok][0]} is not a class index (a whole number)")
    return lab.astype(np.int64)
