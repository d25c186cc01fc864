"""The `Boxes` container of det predictions: round trips through files, slicing per image, files written before it
existed, and malformed box columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kcomp.artifacts.boxes import FIELDS, Boxes
from kcomp.artifacts.predictions import read_predictions, write_predictions
from kcomp.artifacts.tables import write_table
from kcomp.errors import BadInput
from tests.conftest import run_cli


def _random(rng: np.random.Generator, n_images: int, empty: tuple[int, ...] = (1,)) -> Boxes:
    rows = []
    for i in range(n_images):
        n = 0 if i in empty else int(rng.integers(1, 6))
        xy = rng.uniform(0, 300, (n, 2))
        rows.append(np.column_stack([xy, xy + rng.uniform(5, 80, (n, 2)), rng.uniform(0, 1, n),
                                     rng.integers(0, 3, n)]))
    return Boxes.from_rows(rows)


def _same(a: Boxes, b: Boxes) -> None:
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.label.dtype == np.int64 and a.xyxy.dtype == np.float64


def _frame(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "fold": -1, "height": 400, "width": 500})


def test_boxes_round_trip_through_a_predictions_file(tmp_path):
    boxes = _random(np.random.default_rng(0), 6, empty=(0, 4))
    ids = [f"im{i}" for i in range(6)]
    write_predictions(_frame(ids), tmp_path / "p.parquet", task="det", kind="test", classes=["a", "b", "c"],
                      boxes=boxes)
    back = read_predictions(tmp_path / "p.parquet")
    _same(back.boxes, boxes)
    assert "boxes" not in back.df.columns and list(back.df["id"]) == ids
    # the on-disk layout is the one det files always had, so other readers see dicts as before
    assert str(pq.read_schema(tmp_path / "p.parquet").field("boxes").type) == \
        "list<element: struct<x1: double, y1: double, x2: double, y2: double, score: double, label: int64>>"
    cell = pd.read_parquet(tmp_path / "p.parquet")["boxes"].iloc[2]
    assert [list(d.values()) for d in cell] == [[*b[:4], b[4], int(b[5])] for b in boxes.rows()[2]]


def test_boxes_slicing_taking_and_joining():
    boxes = _random(np.random.default_rng(1), 5)
    rows = boxes.rows()
    assert len(boxes) == 5 and boxes.n_boxes == sum(len(r) for r in rows) and len(rows[1]) == 0
    for i in range(5):
        np.testing.assert_array_equal(Boxes.from_rows([rows[i]]).xyxy, boxes.image(i).xyxy)
    picked = boxes.take([4, 1, 4, 0])
    _same(picked, Boxes.from_rows([rows[4], rows[1], rows[4], rows[0]]))
    _same(Boxes.concat([boxes.take([0, 1]), boxes.take([2, 3, 4])]), boxes)
    high = boxes.select(boxes.score > 0.5)
    _same(high, Boxes.from_rows([r[r[:, 4] > 0.5] for r in rows]))
    _same(Boxes.from_arrow(boxes.to_arrow()), boxes)
    _same(Boxes.from_cells(boxes.column()), boxes)
    col = Boxes.from_rows([np.ones((2, 6))] * 3).column()  # equal shapes stay one cell per image
    assert col.shape == (3,) and col[0].shape == (2, 6)
    assert len(Boxes.empty(3)) == 3 and Boxes.empty(3).n_boxes == 0


def _dicts(boxes: Boxes, label_type: type = int) -> list[list[dict]]:
    return [[{"x1": r[0], "y1": r[1], "x2": r[2], "y2": r[3], "score": r[4], "label": label_type(r[5])} for r in img]
            for img in boxes.rows()]


def test_det_files_written_before_the_container_are_read(tmp_path):
    """Files as kcomp wrote them before boxes were columns: `write_predictions` handed a frame of dict lists to
    `write_table`, i.e. pandas -> pyarrow; older writers may have stored labels as doubles, large lists, null
    lists (no box) or several row groups."""
    boxes = _random(np.random.default_rng(2), 7, empty=(0, 5))
    ids = [f"im{i}" for i in range(7)]
    old = tmp_path / "old.parquet"
    write_table(_frame(ids).assign(boxes=_dicts(boxes)), old, "predictions", task="det", kind="test",
                classes=["a", "b", "c"], values="probabilities")
    _same(read_predictions(old).boxes, boxes)

    meta = pq.read_schema(old).metadata
    struct = pa.struct([(k, pa.float64()) for k in FIELDS])  # label as a double
    cells = _dicts(boxes, float)
    cells[5] = None
    table = pa.table({"id": ids, "height": [400] * 7, "width": [500] * 7,
                      "boxes": pa.array(cells, type=pa.large_list(struct))}).replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "variant.parquet", row_group_size=3)
    _same(read_predictions(tmp_path / "variant.parquet").boxes, boxes)

    r = run_cli("wbf", old, tmp_path / "variant.parquet", "-o", tmp_path / "fused.parquet", "--method", "nms")
    assert r.code == 0, r.stderr
    assert read_predictions(tmp_path / "fused.parquet").boxes.n_boxes > 0


@pytest.mark.parametrize("mutate,match", [
    (lambda c: [[{k: v for k, v in b.items() if k != "score"} for b in img] for img in c], "lacks score"),
    (lambda c: [[{**b, "label": 1.5} for b in img] for img in c], "whole numbers"),
    (lambda c: [[{**b, "x2": float("nan")} for b in img] for img in c], "NaN or inf"),
    (lambda c: [[{**b, "score": float("inf")} for b in img] for img in c], "NaN or inf"),
    (lambda c: [[{**b, "y1": None} for b in img] for img in c], "lacks one of"),
    (lambda c: [[{**b, "x1": "12"} for b in img] for img in c], "field x1 is string"),
    (lambda c: [str(img) for img in c], "expected lists of"),
])
def test_malformed_box_columns_are_bad_input(tmp_path, mutate, match):
    cells = mutate(_dicts(_random(np.random.default_rng(3), 3)))
    p = tmp_path / "bad.parquet"
    write_table(_frame(["a", "b", "c"]), p, "predictions", arrays={"boxes": pa.array(cells)}, task="det",
                kind="test", classes=["x"])  # pyarrow keeps NaN (pandas would have made it null)
    with pytest.raises(BadInput, match=match) as e:
        read_predictions(p)
    assert str(p) in str(e.value)


def test_writer_takes_dicts_or_rows_and_checks_them(tmp_path):
    boxes = _random(np.random.default_rng(4), 3)
    for cells in (_dicts(boxes), boxes.column()):
        write_predictions(_frame(["a", "b", "c"]).assign(boxes=cells), tmp_path / "p.parquet", task="det",
                          kind="oof", classes=["x", "y", "z"])  # labels 0..2
        _same(read_predictions(tmp_path / "p.parquet").boxes, boxes)
    with pytest.raises(BadInput, match="lists of"):
        Boxes.from_cells([[{"x1": "a"}]])
    with pytest.raises(BadInput, match="not a class index"):
        Boxes.from_rows([np.array([[0, 0, 1, 1, 0.5, 0.5]])])
    with pytest.raises(ValueError, match="offsets"):
        Boxes(np.array([0, 2]), np.zeros((1, 4)), np.zeros(1), np.zeros(1, np.int64))
