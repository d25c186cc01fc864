"""Box fusion (WBF, NMS, soft-NMS) equals ensemble-boxes, the reference: the kernels image by image, the `Boxes`
path for many images in pixels, and `kcomp wbf` end to end. Equality is bit for bit on numpy >= 2."""

from __future__ import annotations

import contextlib
import io
import warnings

import ensemble_boxes as eb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcomp.artifacts.boxes import Boxes
from kcomp.artifacts.predictions import read_predictions, write_predictions
from kcomp.errors import BadInput, BadUsage
from kcomp.post import _nms_fast, _wbf_fast
from kcomp.post.wbf import fuse_boxes
from tests.conftest import run_cli

CONF_TYPES = ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]
EXACT = int(np.__version__.split(".")[0]) >= 2


def _eb(fn, boxes, scores, labels, **kw):
    """ensemble-boxes on copies (it rescales weighted scores in place), quiet (it prints and warns about boxes it
    clips); its NMS and soft-NMS raise on an image without a box of positive area, which gets no boxes here."""
    boxes, scores, labels = [list(map(np.array, x)) for x in (boxes, scores, labels)]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            out = fn(boxes, scores, labels, **kw)
        except ValueError as e:
            assert fn is not eb.weighted_boxes_fusion and "at least one array" in str(e)
            out = (np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    return [np.asarray(r, dtype=float) for r in out]


def _assert_same(ref, got, exact=True):
    """Same rows in the same order; bit for bit on numpy >= 2 (the contract is 1e-6)."""
    for r, g in zip(ref, got, strict=True):
        assert r.reshape(-1).shape == g.reshape(-1).shape
        np.testing.assert_allclose(g.reshape(-1), r.reshape(-1), atol=1e-6, rtol=0)
        if exact and EXACT:
            np.testing.assert_array_equal(g.reshape(-1), r.reshape(-1))


def _lists(rng, n_images, n_lists, sizes, empty=(3,)):
    """`n_lists` Boxes of the same images in pixels, 0-12 boxes per image and list; images in `empty` have none."""
    out = []
    for _ in range(n_lists):
        rows = []
        for i in range(n_images):
            h, w = sizes[i]
            n = 0 if i in empty else int(rng.integers(0, 12))
            xy = rng.uniform(0, 0.7, (n, 2))
            wh = rng.uniform(0.05, 0.3, (n, 2))
            px = np.concatenate([xy, xy + wh], 1) * [w, h, w, h]
            rows.append(np.column_stack([px, rng.uniform(0, 1, n), rng.integers(0, 2, n)]))
        out.append(Boxes.from_rows(rows))
    return out


REF = {"wbf": eb.weighted_boxes_fusion, "nms": eb.nms, "soft_nms": eb.soft_nms}
CASES = [
    ("wbf", {"iou_thr": 0.55, "skip_box_thr": 0.01, "weights": [1, 2, 1]}),
    ("wbf", {"iou_thr": 0.6, "skip_box_thr": 0.2, "conf_type": "max"}),
    ("nms", {"iou_thr": 0.5, "weights": [1, 2, 1]}),
    ("nms", {"iou_thr": 0.3}),
    ("soft_nms", {"iou_thr": 0.5, "sigma": 0.3, "skip_box_thr": 0.05, "weights": [1, 2, 1]}),
]


def _ref_kw(method, kw):
    """fuse_boxes' options in ensemble-boxes' names: soft-NMS's thresh is skip_box_thr, NMS has none."""
    kw = dict(kw)
    if method != "wbf" and "skip_box_thr" in kw:
        skip = kw.pop("skip_box_thr")
        if method == "soft_nms":
            kw["thresh"] = skip
    return kw


@pytest.mark.parametrize("method,kw", CASES)
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_fuse_boxes_matches_ensemble_boxes_image_by_image(method, kw, impl):
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(200, 900)), int(rng.integers(200, 900))) for _ in range(20)]
    h, w = np.array(sizes).T
    lists = _lists(rng, 20, 3, sizes)
    fused = fuse_boxes(lists, h, w, method=method, impl=impl, **kw)
    assert len(fused) == 20 and len(fused.image(3).score) == 0  # no box in any list: none fused, no error
    assert fused.n_boxes > 20
    for i, (hi, wi) in enumerate(sizes):
        scale = np.array([wi, hi, wi, hi], dtype=float)
        parts = [b.image(i) for b in lists]
        ref = _eb(REF[method], [np.clip(p.xyxy / scale, 0, 1) for p in parts], [p.score for p in parts],
                  [p.label.astype(float) for p in parts], **_ref_kw(method, kw))
        got = fused.image(i)
        _assert_same([ref[0] * scale, ref[1], ref[2]], [got.xyxy, got.score, got.label.astype(float)])


@pytest.mark.parametrize("method", ["wbf", "nms", "soft_nms"])
def test_wbf_command_fuses_files_for_each_method(tmp_path, method, demo_run):
    rng = np.random.default_rng(1)
    ids = ["a", "b", "c", "d"]
    sizes = [(512, 640), (300, 200), (512, 640), (100, 900)]
    lists = _lists(rng, 4, 2, sizes, empty=(1,))
    paths = []
    for k, b in enumerate(lists):
        df = pd.DataFrame({"id": ids, "fold": -1, "height": [s[0] for s in sizes], "width": [s[1] for s in sizes]})
        order = [3, 2, 1, 0] if k else [0, 1, 2, 3]  # the second file lists the images in another order
        p = tmp_path / f"det{k}.parquet"
        write_predictions(df.iloc[order].reset_index(drop=True), p, task="det", kind="test", classes=["a", "b"],
                          boxes=b.take(order))
        paths.append(p)
    r = run_cli("wbf", *paths, "-o", tmp_path / "fused.parquet", "--iou", "0.5", "--method", method,
                "--weights", "1,2", "--json")
    assert r.code == 0, r.stderr
    fused = read_predictions(tmp_path / "fused.parquet")
    assert fused.task == "det" and fused.meta["fusion"]["method"] == method and list(fused.df["id"]) == ids
    h, w = np.array(sizes).T
    ref = fuse_boxes(lists, h, w, method=method, iou_thr=0.5, weights=[1, 2], impl="reference")
    assert fused.boxes.n_boxes > 0 and len(fused.boxes.image(1).score) == 0
    np.testing.assert_array_equal(fused.boxes.offsets, ref.offsets)
    _assert_same([ref.xyxy, ref.score, ref.label], [fused.boxes.xyxy, fused.boxes.score, fused.boxes.label])
    if method == "wbf":
        bad = run_cli("wbf", demo_run["test"], "-o", tmp_path / "x.parquet")
        assert bad.code == 2 and "wbf fuses det" in bad.last_error_line
        assert not (tmp_path / "x.parquet").exists()


# --- the kernels, one image at a time, against ensemble-boxes ----------------------------------------------------


def _both(boxes, scores, labels, **kw):
    return _eb(eb.weighted_boxes_fusion, boxes, scores, labels, **kw), \
        _wbf_fast.weighted_boxes_fusion(boxes, scores, labels, **kw)


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


# --- NMS and soft-NMS kernels against ensemble-boxes --------------------------------------------------------------


def _nms_both(which, boxes, scores, labels, **kw):
    ours = _nms_fast.nms if which == "nms" else _nms_fast.soft_nms
    return _eb(REF[which], boxes, scores, labels, **kw), ours(boxes, scores, labels, **kw)


def test_nms_and_soft_nms_equal_ensemble_boxes_on_random_clusters():
    """Clusters with many overlaps, equal scores (numba's sort order decides), coordinates on a grid (equal IoUs),
    weights, thresholds down to 0 and both soft-NMS methods."""
    rng = np.random.default_rng(5)
    for k in range(120):
        n_models = int(rng.integers(1, 10))
        boxes, scores, labels = _clustered(rng, n_models, 30 if k % 3 else 5, tie_scores=k % 2 == 1,
                                           grid=1 if k % 4 == 0 else None, labels=(0, 1, 2) if k % 5 else (3,),
                                           spread=0.05)
        weights = [None, list(rng.uniform(0.2, 3, n_models)), list(rng.integers(1, 4, n_models))][k % 3]
        thr = float(rng.choice([0.0, 0.3, 0.55, 1.0]))
        _assert_same(*_nms_both("nms", boxes, scores, labels, iou_thr=thr, weights=weights))
        kw = {"iou_thr": thr, "weights": weights, "thresh": float(rng.choice([0.0, 0.001, 0.2])),
              "sigma": float(rng.choice([0.1, 0.5, 2.0])), "method": 1 if k % 7 == 0 else 2}
        _assert_same(*_nms_both("soft_nms", boxes, scores, labels, **kw))


def test_nms_long_groups_with_ties_duplicates_and_edges():
    """Groups of 32+ boxes (ordered by the bucket sort unless scores tie): float32 scores, a few equal ones, -0.0
    beside 0.0, exact duplicates, boxes on the image's edges and spanning it, and tiny ones, at thresholds 0..1."""
    rng = np.random.default_rng(21)
    for k in range(60):
        n_models = int(rng.integers(4, 12))
        boxes, scores, labels = _clustered(rng, n_models, 40, spread=0.08, labels=(0, 1) if k % 2 else (2,),
                                           grid=2 if k % 3 == 0 else None)
        for m in range(n_models):
            s = scores[m].astype(np.float32).astype(float)
            if k % 4 == 1 and len(s) > 3:  # a few ties inside a long group
                s[rng.integers(0, len(s), 3)] = s[0]
            if k % 4 == 2 and len(s) > 2:
                s[:2] = [0.0, -0.0]
            scores[m] = s
        if k % 5 == 0:
            boxes[0] = np.concatenate([boxes[0], boxes[0][:5], [[0, 0, 1, 1], [0.99, 0.2, 1.0, 0.3],
                                                                 [0.5, 0.5, 0.5 + 1e-9, 0.5 + 1e-9]]])
            scores[0] = np.concatenate([scores[0], scores[0][:5], [0.5, 0.4, 0.3]])
            labels[0] = np.concatenate([labels[0], labels[0][:5], np.full(3, labels[0][0] if len(labels[0]) else 0)])
        thr = float(rng.choice([0.0, 0.2, 0.55, 0.9, 1.0]))
        weights = list(rng.uniform(0.5, 2, n_models)) if k % 3 == 2 else None
        _assert_same(*_nms_both("nms", boxes, scores, labels, iou_thr=thr, weights=weights))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lists=st.lists(st.lists(_box_row, max_size=12), min_size=1, max_size=6),
       method=st.sampled_from(["nms", "soft_nms"]), iou_thr=st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]),
       thresh=st.sampled_from([0.0, 0.001, 0.3]), weighted=st.booleans())
def test_nms_property(lists, method, iou_thr, thresh, weighted):
    """Lists may be empty, every one of them too (ensemble-boxes raises there; no boxes here)."""
    boxes = [np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows]).reshape(-1, 4) for rows in lists]
    scores = [np.array([r[4] for r in rows]) for rows in lists]
    labels = [np.array([r[5] for r in rows], dtype=float) for rows in lists]
    kw = {"iou_thr": iou_thr, "weights": [1.0 + 0.5 * i for i in range(len(lists))] if weighted else None}
    if method == "soft_nms":
        kw["thresh"] = thresh
    _assert_same(*_nms_both(method, boxes, scores, labels, **kw))


@pytest.mark.parametrize("method", ["nms", "soft_nms"])
def test_nms_many_images_in_small_pair_chunks(method, monkeypatch):
    """Images fused in one call equal image by image; soft-NMS's full computation (the lazy one's fallback) also
    when its overlapping pairs are taken a few groups at a time and one group has more pairs than a chunk holds."""
    monkeypatch.setattr(_nms_fast, "PAIR_CHUNK", 16)
    monkeypatch.setattr(_nms_fast, "soft_lazy", lambda *a: None)
    rng = np.random.default_rng(11)
    per_image = [_clustered(rng, 4, [0, 3, 25][i % 3], labels=(0, 1)) for i in range(12)]
    rows = []  # image, list, x1, y1, x2, y2, score, label
    for i, (b, s, lab) in enumerate(per_image):
        for m, (bm, sm, lm) in enumerate(zip(b, s, lab, strict=True)):
            rows += [(i, m, *bb, ss, ll) for bb, ss, ll in zip(bm, sm, lm, strict=True)]
    a = np.array(rows, dtype=float).reshape(-1, 8)
    fn = _nms_fast.nms_flat if method == "nms" else _nms_fast.soft_nms_flat
    fb, fs, fl, fi = fn(a[:, 2:6], a[:, 6], a[:, 7], a[:, 1].astype(int), a[:, 0].astype(int), 4)
    assert np.all(np.diff(fi) >= 0) and len(np.unique(fi)) > 4
    for i, (b, s, lab) in enumerate(per_image):
        ref = _eb(REF[method], b, s, lab)
        _assert_same(ref, [fb[fi == i], fs[fi == i], fl[fi == i]])


@pytest.mark.parametrize("lazy", [True, False])
def test_soft_nms_lazy_path_and_its_fallback_equal_ensemble_boxes(lazy, monkeypatch):
    """The lazy soft-NMS (only the pairs that can change the output, numpy's exp checked by a replay) is what runs
    on clustered boxes with distinct scores; the full computation it falls back to gives the same output."""
    from kcomp.post import _soft_lazy

    took = []
    real = _soft_lazy.soft_lazy
    monkeypatch.setattr(_nms_fast, "soft_lazy", lambda *a: took.append(real(*a)) or (took[-1] if lazy else None))
    rng = np.random.default_rng(3)
    for k in range(30):
        boxes, scores, labels = _clustered(rng, 8, 40, spread=0.06, labels=(0, 1))
        kw = {"iou_thr": 0.5, "sigma": [0.5, 0.1][k % 2], "thresh": [0.001, 0.3, 0.0][k % 3], "method": 1 + k % 2}
        _assert_same(*_nms_both("soft_nms", boxes, scores, labels, **kw))
    assert all(t is not None for t in took) and len(took) == 30


def test_fuse_boxes_rejects_bad_options():
    rng = np.random.default_rng(4)
    lists = _lists(rng, 2, 2, [(100, 100), (50, 80)], empty=())
    h, w = np.array([100, 50]), np.array([100, 80])
    with pytest.raises(BadUsage, match="1 weight"):
        fuse_boxes(lists, h, w, weights=[1])
    with pytest.raises(BadUsage, match="positive"):
        fuse_boxes(lists, h, w, weights=[1, 0])
    with pytest.raises(BadUsage, match="impl"):
        fuse_boxes(lists, h, w, impl="turbo")
    with pytest.raises(BadUsage, match="sigma"):
        fuse_boxes(lists, h, w, method="soft_nms", sigma=0)
    with pytest.raises(BadUsage, match="--method"):
        fuse_boxes(lists, h, w, method="nmw")
    nan = Boxes(lists[0].offsets, lists[0].xyxy.copy(), lists[0].score, lists[0].label)
    nan.xyxy[0, 0] = np.nan
    for method in ("wbf", "nms", "soft_nms"):
        with pytest.raises(BadInput, match="NaN"):
            fuse_boxes([nan, lists[1]], h, w, method=method)
    corner = Boxes(np.array([0, 1, 1]), np.array([[0.0, 3, 5, 5]]), np.array([0.5]), np.array([0]))
    for method in ("wbf", "nms", "soft_nms"):  # a 0 x 0 image: 0 / 0 is NaN on every path (NMS divides in its kernel)
        with pytest.raises(BadInput, match="NaN"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fuse_boxes([corner], np.array([0, 5]), np.array([0, 5]), method=method)
