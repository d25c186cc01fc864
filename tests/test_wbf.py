"""Box fusion in pixel coordinates equals ensemble-boxes (the reference) run on normalised coordinates."""

from __future__ import annotations

import ensemble_boxes as eb
import numpy as np
import pandas as pd
import pytest

from kcomp.artifacts.predictions import read_predictions, write_predictions
from kcomp.post.wbf import fuse_boxes
from tests.conftest import run_cli


def _frame(rng: np.random.Generator, ids: list[str], sizes: dict[str, tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for i in ids:
        h, w = sizes[i]
        n = int(rng.integers(0, 12))
        xy = rng.uniform(0, 0.7, (n, 2))
        wh = rng.uniform(0.05, 0.3, (n, 2))
        boxes = [{"x1": float(a * w), "y1": float(b * h), "x2": float((a + c) * w), "y2": float((b + d) * h),
                  "score": float(s), "label": int(lab)}
                 for (a, b), (c, d), s, lab in zip(xy, wh, rng.uniform(0, 1, n), rng.integers(0, 2, n), strict=True)]
        rows.append({"id": i, "fold": -1, "height": h, "width": w, "boxes": boxes})
    return pd.DataFrame(rows)


def _reference(frames, img, method, **kw):
    h, w = frames[0].set_index("id").loc[img, ["height", "width"]]
    scale = np.array([w, h, w, h], dtype=float)
    bl, sl, ll = [], [], []
    for f in frames:
        b = f.set_index("id").loc[img, "boxes"]
        bl.append(np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in b]).reshape(-1, 4) / scale)
        sl.append(np.array([d["score"] for d in b]))
        ll.append(np.array([d["label"] for d in b]))
    fn = {"wbf": eb.weighted_boxes_fusion, "nms": eb.nms}[method]
    boxes, scores, labels = fn(bl, sl, ll, **kw)
    return np.asarray(boxes).reshape(-1, 4) * scale, scores, labels


@pytest.mark.parametrize("method,kw", [
    ("wbf", {"iou_thr": 0.55, "skip_box_thr": 0.01, "weights": [1, 2, 1]}),
    ("wbf", {"iou_thr": 0.6, "skip_box_thr": 0.2, "weights": None, "conf_type": "max"}),
    ("nms", {"iou_thr": 0.5, "weights": None}),
])
def test_fusion_matches_ensemble_boxes(method, kw):
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(20)]
    sizes = {i: (int(rng.integers(200, 900)), int(rng.integers(200, 900))) for i in ids}
    frames = [_frame(rng, ids, sizes) for _ in range(3)]
    ours = fuse_boxes(frames, method=method, **kw).set_index("id")
    ref_kw = {k: v for k, v in kw.items() if not (method == "nms" and k == "skip_box_thr")}
    for img in ids:
        boxes, scores, labels = _reference(frames, img, method, **ref_kw)
        got = ours.loc[img, "boxes"]
        assert len(got) == len(boxes)
        np.testing.assert_allclose([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in got], boxes.reshape(-1, 4),
                                   atol=1e-6)
        np.testing.assert_allclose([d["score"] for d in got], scores, atol=1e-6)
        assert [d["label"] for d in got] == [int(v) for v in labels]


def test_wbf_command_fuses_files_and_refuses_cls_predictions(tmp_path, demo_run):
    rng = np.random.default_rng(1)
    ids = ["a", "b", "c"]
    sizes = {i: (512, 640) for i in ids}
    paths = []
    for k in range(2):
        p = tmp_path / f"det{k}.parquet"
        write_predictions(_frame(rng, ids, sizes), p, task="det", kind="test", classes=["opacity", "other"],
                          values="boxes")
        paths.append(p)
    r = run_cli("wbf", *paths, "-o", tmp_path / "fused.parquet", "--iou", "0.55", "--json")
    assert r.code == 0, r.stderr
    fused = read_predictions(tmp_path / "fused.parquet")
    assert fused.task == "det" and fused.meta["fusion"]["iou"] == 0.55
    assert sorted(fused.df["id"]) == ids
    bad = run_cli("wbf", demo_run["test"], "-o", tmp_path / "x.parquet")
    assert bad.code == 2 and "wbf fuses det" in bad.last_error_line
    assert not (tmp_path / "x.parquet").exists()
