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
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_fusion_matches_ensemble_boxes(method, kw, impl):
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(20)]
    sizes = {i: (int(rng.integers(200, 900)), int(rng.integers(200, 900))) for i in ids}
    frames = [_frame(rng, ids, sizes) for _ in range(3)]
    ours = fuse_boxes(frames, method=method, impl=impl, **kw).set_index("id")
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


# --- the fast WBF (kcomp.post._wbf_fast) against ensemble-boxes ---------------------------------------------------

import warnings  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kcomp.errors import BadInput, BadUsage  # noqa: E402
from kcomp.post import _wbf_fast  # noqa: E402

CONF_TYPES = ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]


def _both(boxes, scores, labels, **kw):
    with warnings.catch_warnings():  # ensemble-boxes warns about out-of-range / zero-area boxes; we clip silently
        warnings.simplefilter("ignore")
        ref = eb.weighted_boxes_fusion(boxes, scores, labels, **kw)
    return [np.asarray(r, dtype=float) for r in ref], _wbf_fast.weighted_boxes_fusion(boxes, scores, labels, **kw)


def _assert_same(ref, got, exact=True):
    """Same rows in the same order; bit for bit on numpy >= 2 (the contract is 1e-6)."""
    for r, g in zip(ref, got, strict=True):
        assert r.reshape(-1).shape == g.reshape(-1).shape
        np.testing.assert_allclose(g.reshape(-1), r.reshape(-1), atol=1e-6, rtol=0)
        if exact and int(np.__version__.split(".")[0]) >= 2:
            np.testing.assert_array_equal(g.reshape(-1), r.reshape(-1))


def _clustered(rng, n_models, max_boxes, *, tie_scores=False, grid=None, labels=(0,), spread=0.03):
    """Boxes jittered around a few objects so clusters form; optional score ties and coordinate grid."""
    centers = rng.uniform(-0.05, 0.85, (int(rng.integers(1, 5)), 2))
    boxes, scores, labs = [], [], []
    for _ in range(n_models):
        n = int(rng.integers(0, max_boxes + 1))
        xy = centers[rng.integers(0, len(centers), n)] + rng.normal(0, spread, (n, 2))
        b = np.concatenate([xy, xy + 0.15 + rng.normal(0, spread, (n, 2))], axis=1)
        boxes.append(np.round(b, grid) if grid is not None else b)
        scores.append(rng.choice([0.2, 0.5, 0.8], n) if tie_scores else rng.uniform(0, 1, n))
        labs.append(rng.choice(labels, n).astype(float))
    return boxes, scores, labs


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_fast_wbf_equals_ensemble_boxes_on_random_clusters(conf_type):
    rng = np.random.default_rng(CONF_TYPES.index(conf_type))
    for k in range(150):
        n_models = int(rng.integers(1, 12)) if k % 10 else 41  # > 8 models: numpy's blocked weight sums
        boxes, scores, labels = _clustered(rng, n_models, 30 if k % 3 else 5, tie_scores=k % 2 == 1,
                                           grid=1 if k % 4 == 0 else None, labels=(0, 1, 2) if k % 5 else (3,))
        weights = [None, list(rng.uniform(0.2, 3, n_models)), list(rng.integers(1, 4, n_models))][k % 3]
        kw = {"weights": weights, "iou_thr": float(rng.choice([0.3, 0.55, 0.8])),
              "skip_box_thr": float(rng.choice([0.0, 0.2, 0.5])), "conf_type": conf_type}
        _assert_same(*_both(boxes, scores, labels, **kw))


def test_fast_wbf_ties_in_long_groups_follow_numpy_argsort():
    """> 16 rows with equal scores: numpy's introsort (not a stable sort) decides their order in the reference."""
    rng = np.random.default_rng(7)
    for k in range(40):
        boxes, scores, labels = _clustered(rng, 8, 40, tie_scores=True, grid=1, spread=0.1)
        for conf_type in CONF_TYPES:
            _assert_same(*_both(boxes, scores, labels, iou_thr=0.5, conf_type=conf_type,
                                weights=[1, 2, 1, 1, 3, 1, 1, 1] if k % 2 else None))


@pytest.mark.parametrize("case", ["empty", "all_skipped", "single", "identical", "zero_area", "out_of_range",
                                  "odd_labels", "allows_overflow", "zero_scores"])
def test_fast_wbf_edge_cases(case):
    b = np.array([[0.1, 0.1, 0.4, 0.5]])
    kw: dict = {}
    if case == "empty":
        boxes, scores, labels = [np.zeros((0, 4)), np.zeros((0, 4))], [np.zeros(0)] * 2, [np.zeros(0)] * 2
    elif case == "all_skipped":
        boxes, scores, labels, kw = [b, b], [np.array([0.1]), np.array([0.2])], [np.zeros(1)] * 2, {"skip_box_thr": .3}
    elif case == "single":
        boxes, scores, labels = [b, np.zeros((0, 4))], [np.array([0.7]), np.zeros(0)], [np.ones(1), np.zeros(0)]
    elif case == "identical":
        boxes, scores, labels = [np.repeat(b, 5, 0)] * 3, [np.full(5, 0.6)] * 3, [np.zeros(5)] * 3
    elif case == "zero_area":
        boxes = [np.array([[0.2, 0.2, 0.2, 0.5], [0.1, 0.1, 0.4, 0.5], [0.3, 0.3, 0.6, 0.3]])]
        scores, labels = [np.array([0.9, 0.5, 0.8])], [np.zeros(3)]
    elif case == "out_of_range":  # swapped corners and coordinates outside [0, 1] are fixed the same way
        boxes = [np.array([[0.5, 0.6, 0.1, 0.2], [-0.2, 0.1, 0.3, 1.4], [1.2, 0.1, 1.5, 0.3]]), b]
        scores, labels = [np.array([0.9, 0.5, 0.8]), np.array([0.4])], [np.zeros(3), np.zeros(1)]
    elif case == "odd_labels":  # labels are truncated with int() in the reference
        boxes, scores = [np.repeat(b, 4, 0)] * 2, [np.array([0.9, 0.8, 0.7, 0.6])] * 2
        labels = [np.array([-1.5, -1.0, 2.7, 2.0]), np.array([0.0, -1.2, 2.2, 2.9])]
    elif case == "allows_overflow":
        boxes, scores, labels = [np.repeat(b, 3, 0)] * 2, [np.array([0.9, 0.8, 0.7])] * 2, [np.zeros(3)] * 2
        kw = {"allows_overflow": True}
    else:  # kept by skip_box_thr=0: two fused zero scores make a NaN box (0/0) that grabs the next match
        boxes = [np.array([[0.1, 0.1, 0.4, 0.5], [0.1, 0.1, 0.4, 0.5], [0.6, 0.6, 0.9, 0.9], [0.6, 0.6, 0.9, 0.9]])]
        scores, labels, kw = [np.array([0.0, 0.0, 0.5, 0.0])], [np.zeros(4)], {"skip_box_thr": 0.0}
    for conf_type in CONF_TYPES:
        ref, got = _both(boxes, scores, labels, conf_type=conf_type, **kw)
        _assert_same(ref, got)
    if case in ("empty", "all_skipped"):
        assert got[0].shape == (0, 4) and len(got[1]) == 0
    if case == "identical":  # one cluster of 15 identical boxes
        assert len(got[1]) == 1 and np.allclose(got[0], b)


_coord = st.sampled_from([0.0, 0.1, 0.12, 0.2, 0.3, 0.35, 0.5, 0.7, 1.0])
_box_row = st.tuples(_coord, _coord, st.floats(0.05, 0.5), st.floats(0.05, 0.5),
                     st.one_of(st.sampled_from([0.3, 0.5, 0.9]), st.floats(0.0, 1.0)), st.sampled_from([0, 1, 2]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lists=st.lists(st.lists(_box_row, max_size=12), min_size=1, max_size=6),
       conf_type=st.sampled_from(CONF_TYPES), iou_thr=st.sampled_from([0.2, 0.5, 0.55, 0.9, 1.0]),
       skip=st.sampled_from([0.0, 0.3, 0.5]), weighted=st.booleans())
def test_fast_wbf_property(lists, conf_type, iou_thr, skip, weighted):
    boxes = [np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows]).reshape(-1, 4) for rows in lists]
    scores = [np.array([r[4] for r in rows]) for rows in lists]
    labels = [np.array([r[5] for r in rows], dtype=float) for rows in lists]
    weights = [1.0 + 0.5 * i for i in range(len(lists))] if weighted else None
    _assert_same(*_both(boxes, scores, labels, weights=weights, iou_thr=iou_thr, skip_box_thr=skip,
                        conf_type=conf_type))


def _records(df):
    return {i: [tuple(d[k] for k in ("x1", "y1", "x2", "y2", "score", "label")) for d in b]
            for i, b in zip(df["id"], df["boxes"], strict=True)}


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_fuse_boxes_fast_and_reference_give_the_same_frame(conf_type, tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"img{i}" for i in range(15)]
    sizes = {i: (int(rng.integers(200, 900)), int(rng.integers(200, 900))) for i in ids}
    frames = [_frame(rng, ids, sizes) for _ in range(5)]
    frames[0].loc[3, "boxes"] = []  # an image with no boxes in some files
    frames[2] = frames[2].iloc[::-1].reset_index(drop=True)  # another id order
    p = tmp_path / "f.parquet"  # cells read back from parquet are numpy arrays of dicts
    write_predictions(frames[1], p, task="det", kind="test", classes=["a", "b"], values="boxes")
    frames[1] = read_predictions(p).df
    kw = {"iou_thr": 0.5, "skip_box_thr": 0.05, "weights": [1, 2, 1, 1.5, 1], "conf_type": conf_type}
    fast = fuse_boxes(frames, **kw)
    ref = fuse_boxes(frames, impl="reference", **kw)
    assert list(fast.columns) == list(ref.columns) and list(fast["id"]) == list(ref["id"])
    pd.testing.assert_frame_equal(fast.drop(columns="boxes"), ref.drop(columns="boxes"))
    a, b = _records(fast), _records(ref)
    assert sum(len(v) for v in a.values()) > 0
    for i in ids:
        assert [r[5] for r in a[i]] == [r[5] for r in b[i]]
        assert all(type(x) is type(y) for ra, rb in zip(a[i], b[i]) for x, y in zip(ra, rb))
        np.testing.assert_allclose(np.array(a[i]).reshape(-1, 6), np.array(b[i]).reshape(-1, 6), atol=1e-6, rtol=0)


def test_fuse_boxes_rejects_bad_options_and_boxes():
    rng = np.random.default_rng(4)
    frames = [_frame(rng, ["a"], {"a": (100, 100)}) for _ in range(2)]
    with pytest.raises(BadUsage, match="1 weight"):
        fuse_boxes(frames, weights=[1])
    with pytest.raises(BadUsage, match="positive"):
        fuse_boxes(frames, weights=[1, 0])
    with pytest.raises(BadUsage, match="impl"):
        fuse_boxes(frames, impl="turbo")
    frames[0].at[0, "boxes"] = [{"x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0, "score": 0.5}]
    with pytest.raises(BadInput, match="lacks one of"):
        fuse_boxes(frames)
