"""Issue 22: tuned post-processing that holds on unseen data. `tune-threshold` reports a held-out score per fold
(tuned on the other folds), chooses min sizes / tops by it (least aggressive within one SE) and never lets
post-processing chosen in-sample cost held-out score. Checked on the Vesuvius and Clouds fixtures through the CLI,
against brute-force recomputations with the library's own post-processing and metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kcomp.artifacts.index import read_index
from kcomp.artifacts.predictions import read_predictions, write_predictions
from kcomp.competitions import get_competition
from kcomp.metrics._segmentation import fbeta_pixels
from kcomp.post import heldout
from kcomp.post.ink_threshold import postprocess, search_threshold
from kcomp.post.seg_threshold import mean_dice_after, tune_class
from kcomp.tasks import get_task
from tests.clouds_fixture import make_clouds_layout
from tests.conftest import run_cli
from tests.vesuvius_fixture import make_vesuvius_layout

HIGH, LOW = 200, 20  # predicted ink / background, uint8


# ------------------------------------------------------------------------------------------------ the rule


def test_rule_takes_the_least_aggressive_option_within_one_se_of_the_best() -> None:
    # options (keys = aggressiveness): 0 plain, 1 mild, 2 strong; fold scores (3 folds)
    held = np.array([[0.70, 0.74, 0.80], [0.70, 0.72, 0.78], [0.70, 0.73, 0.79]])
    sel = heldout.select(held, [0, 1, 2], 2, str, "F")
    assert sel.best == 2 and sel.index == 2 and sel.rule == heldout.RULE  # se(best) 0.006: only the best
    noisy = np.array([[0.70, 0.74, 0.90], [0.70, 0.72, 0.60], [0.70, 0.73, 0.80]])
    sel = heldout.select(noisy, [0, 1, 2], 2, str, "F")
    assert sel.best == 2 and sel.index == 0  # best 0.767 +- se 0.088 reaches down to the plain threshold
    worse = np.array([[0.70, 0.60], [0.72, 0.50]])
    sel = heldout.select(worse, [0, 5], 1, lambda o: f"option {o}", "F")
    assert sel.index == 0 and "in-sample tuning alone would choose option 1" in sel.warnings[0]


def test_folds_from_the_fold_column() -> None:
    f, note = heldout.fold_groups(np.array([2, 0, 2, 5]), 4)
    assert (f.labels, f.rows, f.group.tolist(), note) == ([0, 2, 5], [1, 2, 1], [1, 0, 1, 2], "")
    one, note = heldout.fold_groups([3, 3], 2, "oof.parquet")
    assert one.k == 1 and "oof.parquet holds one fold (3): no held-out estimate" in note
    _, note = heldout.fold_groups(None, 2, "oof.parquet")
    assert "no fold column" in note
    with pytest.raises(Exception, match="fold column must hold integers"):
        heldout.fold_groups(np.array([0.5, 1.0]), 2)


# ------------------------------------------------------------------------------------------------ ink


@pytest.fixture(scope="module")
def ink_oof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three fragment groups, one per fold, with OOF maps built so that in-sample tuning overfits: fragment 1
    (large: it dominates the pooled pixels) has its ink predicted whole plus 3x3 noise blobs, fragments 2 and 3
    have their ink predicted only as separate 3x3 dots. A min size above 9 px cleans fragment 1 and erases the
    ink of the other two."""
    import cv2

    root = tmp_path_factory.mktemp("nested_ink")
    raw = make_vesuvius_layout(root / "raw", fragments={"1": (256, 256), "2": (96, 96), "3": (96, 96)},
                               test={"a": (32, 32)}, n_layers=2, seed=5)
    get_competition("vesuvius").prep(raw, root / "d")
    table = read_index(root / "d" / "index.parquet")
    rows = table.rows("train")
    frags = get_task("ink").fragments(table, rows, with_targets=True)
    rng = np.random.default_rng(0)
    maps = []
    for f in frags:
        prob = np.full(f.mask.shape, LOW, np.uint8)
        if f.id == "1":
            prob[f.labels] = HIGH
            free = cv2.erode(f.mask.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            free &= ~cv2.dilate(f.labels.view(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            ys, xs = np.nonzero(free[::5, ::5])
            for j in rng.permutation(len(ys))[: int(0.3 * f.labels.sum() / 9)]:
                prob[5 * ys[j] - 1:5 * ys[j] + 2, 5 * xs[j] - 1:5 * xs[j] + 2] = HIGH
        else:
            ys, xs = np.nonzero(f.labels[1::5, 1::5])
            for y, x in zip(5 * ys + 1, 5 * xs + 1, strict=True):
                prob[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = HIGH
        maps.append(prob)
    df = pd.DataFrame({"id": rows["id"], "fold": [0, 1, 2], "map_key": rows["id"], "y0": rows["y0"],
                       "y1": rows["y1"], "height": rows["height"], "width": rows["width"], "map": maps})
    return _write_ink(df, root / "oof.parquet", root / "d" / "index.parquet")


def _write_ink(df: pd.DataFrame, path: Path, index: Path) -> Path:
    return Path(write_predictions(df, path, task="ink", kind="oof", classes=["ink"], index=str(index)))


def _fragments(oof: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    p = read_predictions(oof)
    table = p.index("truth")
    frags = get_task("ink").fragments(table, table.rows("train"), with_targets=True)
    maps = np.load(oof.with_suffix(".npz"))
    return [(maps[f.id], f.labels, f.mask) for f in frags]


def _heldout_by_hand(frags: list, min_size: int) -> list[float]:
    """Per fold (one fragment each): threshold searched on the other two, F0.5 of postprocess on this one."""
    out = []
    for k, (prob, label, mask) in enumerate(frags):
        t, _, _ = search_threshold([f for j, f in enumerate(frags) if j != k], downscale=1)
        out.append(fbeta_pixels(postprocess(prob, mask, t, min_size), label, mask))
    return out


def test_ink_heldout_choice_holds_where_the_in_sample_choice_fails(ink_oof: Path, tmp_path: Path) -> None:
    r = run_cli("tune-threshold", ink_oof, "-o", tmp_path / "thr.json", "--downscale", "1", "--json")
    assert r.code == 0, r.stderr
    body = json.loads((tmp_path / "thr.json").read_text())
    summary = json.loads(r.stdout)
    assert summary["rule"] == body["rule"] == heldout.RULE
    assert summary["heldout"] == {k: body["heldout"][k] for k in ("score", "std", "se")} | {"folds": 3}
    frags = _fragments(ink_oof)
    by_size = {o["min_size"]: o for o in body["options"]}
    assert 0 in by_size and body["mask_area"] == int(np.median([m.sum() for _, _, m in frags]))
    for size, opt in by_size.items():  # every option's held-out mean, recomputed with postprocess + fbeta_pixels
        assert opt["heldout"] == pytest.approx(np.mean(_heldout_by_hand(frags, size)), abs=1e-12)
        assert size == round(opt["min_size_fraction"] * body["mask_area"]) or size == 0
    plain = by_size[0]["heldout"]
    chosen = body["heldout"]["score"]
    assert chosen >= plain - 0.01  # the acceptance bar
    assert [f["score"] for f in body["heldout"]["folds"]] == pytest.approx(_heldout_by_hand(frags, body["min_size"]))
    # the layout fools in-sample tuning: it removes the 9 px blobs and with them the other fragments' ink
    naive = body["in_sample_choice"]
    assert naive["min_size"] > 9 and naive["score"] > by_size[0]["in_sample"] + 0.05
    assert naive["heldout"] < chosen - 0.2
    assert body["min_size"] == 0 and "in-sample tuning alone would choose min size" in r.stderr
    assert f"{naive['heldout']:.4f} < {plain:.4f}" in r.stderr
    assert body["score"] == pytest.approx(by_size[0]["in_sample"]) and body["classes"]["ink"]["min_size"] == 0


def test_ink_min_size_grid_scales_with_the_mask_area() -> None:
    from kcomp.post.nested_threshold import tune_ink_nested

    rng = np.random.default_rng(1)
    small = []
    for _ in range(3):
        label = np.zeros((64, 64), bool)
        label[10:30, 10:50] = True
        small.append((np.where(label, HIGH, LOW).astype(np.uint8) | rng.integers(0, 2, label.shape, np.uint8),
                      label, np.ones_like(label)))
    big = [tuple(np.kron(a, np.ones((2, 2), a.dtype)) for a in f) for f in small]  # 4x the area
    a = tune_ink_nested(small, [0, 1, 2], downscale=1, fractions=(0, 0.01, 0.05))
    b = tune_ink_nested(big, [0, 1, 2], downscale=1, fractions=(0, 0.01, 0.05))
    assert (a.mask_area, b.mask_area) == (64 * 64, 128 * 128)
    assert [o["min_size"] for o in a.options] == [0, 41, 205]  # round(fraction * median mask area)
    assert [o["min_size"] for o in b.options] == [0, 164, 819]


def test_ink_one_fold_falls_back_to_the_plain_threshold(ink_oof: Path, tmp_path: Path) -> None:
    maps = np.load(ink_oof.with_suffix(".npz"))
    df = pd.read_parquet(ink_oof).assign(fold=0)
    df["map"] = [maps[k] for k in df["map_key"]]
    one = _write_ink(df, tmp_path / "oof.parquet", ink_oof.parent / "d" / "index.parquet")
    body = get_task("ink").tune_thresholds(read_predictions(one), downscale=1)
    assert body["heldout"] is None and body["rule"] == heldout.RULE_ONE_FOLD and body["min_size"] == 0
    assert "holds one fold (0): no held-out estimate" in body["warnings"][0]  # printed on stderr by the command
    assert body["in_sample_choice"]["min_size"] > 0  # what in-sample tuning would have chosen, recorded


# ------------------------------------------------------------------------------------------------ clouds


SIZE = (140, 210)
MAP = (35, 52)
GRID = {"thresholds": (0.3, 0.5, 0.7), "min_sizes": (0, 2, 5, 12, 40), "tops": (0.0, 0.7)}


# per class: (most noise blobs per image, largest blob side, a faint 8x8 blob on images where the class is empty)
NOISE = {0: (1, 2, False), 1: (6, 3, False), 2: (2, 2, True), 3: (3, 3, True)}


@pytest.fixture(scope="module")
def clouds_oof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OOF maps of the Clouds fixture in 3 folds (one fold of a single image): each class's truth at 0.75-1 with
    a blurred edge, plus per class (`NOISE`) square noise blobs at 0.9 and faint (0.6) blobs that only a top
    threshold removes, so min sizes and tops matter by different amounts per class."""
    import cv2

    root = tmp_path_factory.mktemp("nested_clouds")
    layout = make_clouds_layout(root / "raw", n_train=13, n_test=1, size=SIZE, seed=11)
    get_competition("clouds").prep(layout.raw, root / "d")
    table = read_index(root / "d" / "index.parquet")
    rows = table.rows("train")
    setup = get_task("seg").setup(table)
    from kcomp.tasks.seg import truth_masks

    rng = np.random.default_rng(2)
    maps = []
    for i in range(len(rows)):
        truth = truth_masks(rows.iloc[i], setup, MAP).astype(np.float32)
        m = np.empty(truth.shape, np.uint8)
        for c, (most, side, faint) in NOISE.items():
            p = cv2.GaussianBlur(truth[c] * 0.75, (0, 0), 1.0) + rng.uniform(0, 0.25, MAP)
            for _ in range(int(rng.integers(0, most + 1))):
                y, x = int(rng.integers(0, MAP[0] - 3)), int(rng.integers(0, MAP[1] - 3))
                s = int(rng.integers(1, side + 1))
                p[y:y + s, x:x + s] = 0.9
            if faint and not truth[c].any():
                y, x = int(rng.integers(0, MAP[0] - 8)), int(rng.integers(0, MAP[1] - 8))
                p[y:y + 8, x:x + 8] = 0.6
            m[c] = np.rint(np.clip(p, 0, 1) * 255)
        maps.append(m)
    folds = [0] * 6 + [1] * 6 + [2]
    df = pd.DataFrame({"id": rows["id"], "fold": folds, "map_key": rows["id"], "height": SIZE[0],
                       "width": SIZE[1], "map": maps})
    return Path(write_predictions(df, root / "oof.parquet", task="seg", kind="oof", classes=setup["classes"],
                                  index=str(root / "d" / "index.parquet")))


def test_clouds_heldout_dice_per_class_and_min_sizes_by_the_rule(clouds_oof: Path, tmp_path: Path) -> None:
    from kcomp.artifacts import write_json

    # in-process (the ink test runs the command): the task's body is what the command writes
    write_json(tmp_path / "thr.json", "thresholds", get_task("seg").tune_thresholds(read_predictions(clouds_oof),
                                                                                   **GRID))
    body = json.loads((tmp_path / "thr.json").read_text())
    oof = pd.read_parquet(clouds_oof)
    maps = np.load(clouds_oof.with_suffix(".npz"))
    table = read_index(clouds_oof.parent / "d" / "index.parquet")
    setup = get_task("seg").setup(table)
    rows = table.df.set_index("id").loc[oof["id"]].reset_index()
    from kcomp.tasks.seg import truth_mask

    folds = oof["fold"].to_numpy()
    per_fold = []
    for c, name in enumerate(setup["classes"]):
        choice = body["classes"][name]
        held = choice["heldout"]
        assert set(held) == {"score", "std", "se", "folds"}
        assert [(f["fold"], f["rows"]) for f in held["folds"]] == [(0, 6), (1, 6), (2, 1)]  # a one-image fold too
        per_fold.append([f["score"] for f in held["folds"]])
        # the rule, from the file's own per-option figures
        opts = choice["options"]
        best = max(opts, key=lambda o: o["heldout"])
        within = [o for o in opts if o["heldout"] >= best["heldout"] - best["heldout_se"]]
        least = min(within, key=lambda o: (o["top"] > 0, o["min_size"], o["top"]))
        assert (choice["min_size"], choice["top"]) == (least["min_size"], least["top"]), name
        assert choice["rule"] == heldout.RULE and held["score"] == pytest.approx(least["heldout"])
        plain = next(o for o in opts if (o["min_size"], o["top"]) == (0, 0.0))
        assert held["score"] >= plain["heldout"]  # post-processing kept only where it beats the plain threshold
        # every option's held-out Dice by brute force: tune_class on the other folds, mean_dice_after on this one
        probs = np.stack([maps[k][c] for k in oof["map_key"]])
        truths = np.stack([truth_mask(rows.iloc[i], setup, c, MAP) for i in range(len(rows))]).astype(bool)
        for o in opts[:: 3]:
            scores = []
            for k in (0, 1, 2):
                ch = tune_class(probs[folds != k], truths[folds != k], thresholds=GRID["thresholds"],
                                min_sizes=(o["min_size"],), tops=(o["top"],))
                scores.append(mean_dice_after(probs[folds == k], truths[folds == k], ch))
            assert o["heldout"] == pytest.approx(np.mean(scores), abs=1e-12), (name, o)
    assert body["heldout"]["score"] == pytest.approx(np.mean(per_fold))
    # the layout makes the rule matter: some class keeps a smaller min size than in-sample tuning alone would
    assert any(c["min_size"] < c["in_sample_choice"]["min_size"] for c in body["classes"].values())
    assert body["score"] == pytest.approx(np.mean([v["score"] for v in body["classes"].values()]))
    # `report` draws in-sample and held-out together and tables the held-out Dice per class
    from kcomp.report.thresholds import report_thresholds

    section = report_thresholds(str(tmp_path / "thr.json"), tmp_path, "")
    assert section.facts["heldout"] == pytest.approx(body["heldout"]["score"])
    assert [row["heldout"] for row in section.rows] == [body["classes"][n]["heldout"]["score"]
                                                        for n in setup["classes"]]
    assert "held-out (dashed" in section.images[0].caption and (tmp_path / section.images[0].path).is_file()
