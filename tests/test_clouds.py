"""Clouds preset: raw layout -> index, bad train.csv through the CLI, maps -> 350x525 column-major submission,
OOF scoring and threshold tuning, overlay previews, and the issue's acceptance chain (fast variant + slow original)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kcomp.artifacts.index import read_index
from kcomp.artifacts.predictions import Predictions, read_predictions, write_predictions
from kcomp.competitions import get_competition
from kcomp.competitions.clouds import CLASSES, class_settings
from kcomp.errors import BadInput, BadUsage
from kcomp.formats.rle import decode
from kcomp.tasks import get_task
from kcomp.tasks.seg import truth_masks
from tests.clouds_fixture import CloudsLayout, empty_baseline, make_clouds_layout, mean_dice
from tests.conftest import run_chain, run_cli

SMALL = (140, 210)  # a tenth of the real side lengths: same layout, cheap to write and read


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> CloudsLayout:
    return make_clouds_layout(tmp_path_factory.mktemp("clouds") / "raw", n_train=9, n_test=3, size=SMALL, seed=3)


@pytest.fixture(scope="module")
def index(small: CloudsLayout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clouds_data")
    assert get_competition("clouds").prep(small.raw, out) == [str(out / "index.parquet")]
    return out / "index.parquet"


def _copy(raw: Path, tmp: Path) -> Path:
    dst = tmp / "raw"
    shutil.copytree(raw, dst)
    return dst


# ------------------------------------------------------------------------------------------------------ prep


def test_prep_writes_one_row_per_image_with_rle_kept_as_given(index: Path, small: CloudsLayout):
    t = read_index(index)
    assert (t.competition, t.task, t.classes) == ("clouds", "seg", CLASSES)
    assert t.meta["rle_order"] == "column" and t.meta["submit_size"] == [350, 525]
    df = t.df
    assert list(df.columns) == ["id", "path", "split", "height", "width", "mask_Fish", "mask_Flower",
                                "mask_Gravel", "mask_Sugar", "labels"]
    csv = pd.read_csv(small.raw / "train.csv", keep_default_na=False)
    train = df[df["split"] == "train"]
    assert list(train["id"]) == list(dict.fromkeys(csv["Image_Label"].str.rsplit("_", n=1).str[0]))
    given = dict(zip(csv["Image_Label"], csv["EncodedPixels"], strict=True))
    for r in train.itertuples():
        assert r.path == f"train_images/{r.id}" and (r.height, r.width) == SMALL
        assert [getattr(r, f"mask_{c}") for c in CLASSES] == [given[f"{r.id}_{c}"] for c in CLASSES]
        assert list(r.labels) == [int(bool(given[f"{r.id}_{c}"])) for c in CLASSES]
    test = df[df["split"] == "test"]
    sample = pd.read_csv(small.raw / "sample_submission.csv")
    assert sorted(test["id"]) == sorted(set(sample["Image_Label"].str.rsplit("_", n=1).str[0]))
    assert (test[[f"mask_{c}" for c in CLASSES]] == "").all().all()
    assert t.file(train["path"].iloc[0]).is_file()


def test_split_auto_is_multilabel_and_folds_keep_the_submit_size(index: Path, tmp_path: Path):
    r = run_cli("split", index, "-o", tmp_path / "folds.parquet", "--folds", "3")
    assert r.code == 0, r.stderr
    folds = read_index(tmp_path / "folds.parquet")
    assert folds.meta["strategy"] == "multilabel"
    assert folds.meta["submit_size"] == [350, 525] and folds.meta["rle_order"] == "column"
    assert sorted(folds.df[folds.df["split"] == "train"]["fold"].unique()) == [0, 1, 2]


def _mutate(raw: Path, fn) -> None:
    path = raw / "train.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(path, index=False)


def _set(column: str, value: str, row: int | None = None):
    """A mutation of train.csv: `column` of `row` (default: the first non-empty mask) set to `value`."""
    def fn(df: pd.DataFrame) -> None:
        r = int(np.flatnonzero(df["EncodedPixels"] != "")[0]) if row is None else row
        df.loc[r, column] = value(df) if callable(value) else value
        return df
    return fn


def _drop(row: int):
    return lambda df: df.drop(index=row)


BAD = {
    "odd count": (_set("EncodedPixels", "1 2 5"), "odd number of values"),
    "overlap": (_set("EncodedPixels", "10 5 12 3"), "overlaps or comes before run 10 5"),
    "out of range": (_set("EncodedPixels", "1 2 29400 2"), "runs past the end of the 140x210 image"),
    "not a number": (_set("EncodedPixels", "1 2 3 four"), "RLE length 'four' (pair 2) is not an integer"),
    "unknown class": (_set("Image_Label", lambda df: df.loc[1, "Image_Label"].rsplit("_", 1)[0] + "_Cumulus", 1),
                      "line 3: unknown class 'Cumulus'"),
    "no class": (_set("Image_Label", "0a1b2c3.jpg", 0), "is not <image>_<Class>"),
    "duplicate": (_set("Image_Label", lambda df: df.loc[0, "Image_Label"], 1), "line 3: duplicate Image_Label"),
    "missing row": (_drop(2), "has no row for class Gravel"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_train_csv_is_one_line_naming_it(small: CloudsLayout, tmp_path: Path, case: str):
    raw = _copy(small.raw, tmp_path)
    mutate, message = BAD[case]
    _mutate(raw, mutate)
    r = run_cli("prep", "clouds", raw, "-o", tmp_path / "d")
    assert r.code == 2, r.stderr
    assert "train.csv" in r.last_error_line and message in r.last_error_line, r.stderr
    if case in ("odd count", "overlap", "out of range", "not a number"):
        assert "line " in r.last_error_line and "jpg_" in r.last_error_line  # names the CSV line and its label
    assert not (tmp_path / "d" / "index.parquet").exists()


def test_missing_image_and_missing_csv(small: CloudsLayout, tmp_path: Path):
    raw = _copy(small.raw, tmp_path)
    victim = sorted((raw / "train_images").iterdir())[1]
    victim.unlink()
    r = run_cli("prep", "clouds", raw, "-o", tmp_path / "d")
    assert r.code == 2 and f"image {victim.name} not found in train_images/" in r.last_error_line, r.stderr
    (raw / "train.csv").unlink()
    with pytest.raises(BadInput, match="no such file"):
        get_competition("clouds").prep(raw, tmp_path / "d")
    with pytest.raises(BadUsage, match="needs RAW_DIR"):
        get_competition("clouds").prep(None, tmp_path / "d")


# ------------------------------------------------------------------------------------------------------ maps


def _truth_maps(index: Path, ids: list[str], size: tuple[int, int]) -> list[np.ndarray]:
    table = read_index(index)
    setup = get_task("seg").setup(table)
    rows = table.df.set_index("id").loc[ids].reset_index()
    return [truth_masks(rows.iloc[i], setup, size) * np.uint8(255) for i in range(len(rows))]


def _write(path: Path, index: Path, kind: str, ids: list[str], maps: list[np.ndarray]) -> Predictions:
    df = pd.DataFrame({"id": ids, "fold": 0 if kind == "oof" else -1, "map_key": ids,
                       "height": SMALL[0], "width": SMALL[1], "map": maps})
    write_predictions(df, path, task="seg", kind=kind, classes=CLASSES, index=str(index))
    return read_predictions(path)


def _test_truth_as_index(small: CloudsLayout, index: Path, tmp_path: Path) -> Path:
    """The index with the fixture's test truth filled in, so test maps can be made from it."""
    from kcomp.artifacts.index import write_index

    t = read_index(index)
    df = t.df.copy()
    for label, rle in small.truth.items():
        image, cls = label.rsplit("_", 1)
        df.loc[df["id"] == image, f"mask_{cls}"] = rle
    return Path(write_index(df, tmp_path / "truth_index.parquet", root=t.root, competition="clouds", task="seg",
                            classes=CLASSES, rle_order="column", submit_size=[350, 525]))


@pytest.mark.parametrize("size", [(350, 525), (70, 105)])
def test_perfect_test_maps_submit_the_truth_in_the_samples_order(small: CloudsLayout, index: Path, tmp_path: Path,
                                                                  size: tuple[int, int]):
    from kcomp.artifacts.submission import align_to_sample

    truth_index = _test_truth_as_index(small, index, tmp_path)
    ids = list(read_index(index).rows("test")["id"])[::-1]  # any order in; the sample's order out
    preds = _write(tmp_path / "test.parquet", index, "test", ids, _truth_maps(truth_index, ids, size))
    sub = get_competition("clouds").submit([preds], thresholds=None)
    sub = align_to_sample(sub, small.raw / "sample_submission.csv", "Image_Label")
    sample = pd.read_csv(small.raw / "sample_submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["Image_Label", "EncodedPixels"]
    assert list(sub["Image_Label"]) == list(sample["Image_Label"])
    for rle in sub["EncodedPixels"]:
        assert decode(rle, (350, 525), order="column").shape == (350, 525)
    got = mean_dice(dict(zip(sub["Image_Label"], sub["EncodedPixels"], strict=True)), small.truth, SMALL)
    assert got == 1.0 if size == (350, 525) else got > 0.95
    assert empty_baseline(small.truth) < 1.0


def test_thresholds_file_is_applied_and_checked(small: CloudsLayout, index: Path, tmp_path: Path):
    ids = list(read_index(index).rows("test")["id"])
    flat = [np.full((4, 35, 52), v, np.uint8) for v in (100, 200, 250)]
    preds = _write(tmp_path / "test.parquet", index, "test", ids, flat)
    comp = get_competition("clouds")
    default = comp.submit([preds], thresholds=None)  # 0.5: only the maps at 200 and 250 are masks
    assert [bool(r) for r in default["EncodedPixels"][::4]] == [False, True, True]
    thr = {"size": [35, 52], "classes": {c: {"threshold": 0.3, "min_size": 0, "top": 0.9} for c in CLASSES}}
    sub = comp.submit([preds], thresholds=thr)  # top 0.9 = 229.5: only the image at 250 keeps its masks
    assert [bool(r) for r in sub["EncodedPixels"][::4]] == [False, False, True]
    assert class_settings({"size": [70, 105], "classes": {"Fish": {"min_size": 10}}})["Fish"] == (0.5, 250, 0.0)
    for bad, message in [({"classes": {"Cumulus": {}}}, "unknown class 'Cumulus'"),
                         ({"classes": {"Fish": {"threshold": 1.5}}}, "threshold 1.5 must be in"),
                         ({"classes": {"Fish": {"min_size": "big"}}}, "must be numbers"),
                         ({"threshold": 0.5}, "no per-class settings")]:
        with pytest.raises(BadInput, match=message):
            comp.submit([preds], thresholds=bad)


def test_maps_of_the_wrong_shape_or_task_are_refused(index: Path, tmp_path: Path):
    ids = list(read_index(index).rows("test")["id"])
    preds = _write(tmp_path / "three.parquet", index, "test", ids, [np.zeros((3, 35, 52), np.uint8)] * len(ids))
    with pytest.raises(BadInput, match=r"has shape \(3, 35, 52\)"):
        get_competition("clouds").submit([preds], thresholds=None)
    oof = _write(tmp_path / "oof.parquet", index, "oof", ids, [np.zeros((4, 35, 52), np.uint8)] * len(ids))
    with pytest.raises(BadInput, match="expected test predictions of task seg"):
        get_competition("clouds").submit([oof], thresholds=None)
    r = run_cli("submit", "clouds", tmp_path / "three.parquet", "-o", tmp_path / "sub.csv")
    assert r.code == 2 and "expected (4, height, width)" in r.last_error_line, r.stderr


def test_oof_score_and_tuning_reach_one_on_perfect_maps(index: Path, tmp_path: Path):
    task = get_task("seg")
    table = read_index(index)
    ids = list(table.rows("train")["id"])
    maps = _truth_maps(index, ids, (35, 52))
    frame = pd.DataFrame({"id": ids, "map": maps})
    assert task.oof_score("dice", frame, table) == 1.0
    empty = pd.DataFrame({"id": ids, "map": [np.zeros_like(m) for m in maps]})
    labels = np.stack(table.rows("train")["labels"].to_numpy())
    assert task.oof_score("dice", empty, table) == pytest.approx(1 - labels.mean())
    body = task.tune_thresholds(_write(tmp_path / "oof.parquet", index, "oof", ids, maps),
                                thresholds=[0.4, 0.6], min_sizes=[0, 5], tops=[0.0, 0.5])
    assert body["score"] == 1.0 and body["size"] == [35, 52] and body["method"] == "threshold+min_size+top"
    assert set(body["classes"]) == set(CLASSES)
    for v in body["classes"].values():
        assert v["threshold"] in (0.4, 0.6) and v["min_size"] in (0, 5) and v["top"] in (0.0, 0.5)
        assert v["score"] == 1.0 and v["curve"]
    json.dumps(body)  # it goes into THRESHOLDS.json as is
    with pytest.raises(BadUsage, match="--downscale does not apply"):
        task.tune_thresholds(read_predictions(tmp_path / "oof.parquet"), downscale=32)


def test_previews_draw_each_image_with_its_masks(index: Path, tmp_path: Path):
    import cv2

    from kcomp.report.preview import write_previews

    ids = list(read_index(index).rows("train")["id"])[:3]
    preds = _write(tmp_path / "p.parquet", index, "oof", ids, _truth_maps(index, ids, (70, 105)))
    written = write_previews(preds, tmp_path / "prev", n=2)
    assert [Path(p).name for p in written] == [f"{Path(i).stem}.png" for i in ids[:2]]
    for p in written:
        img = cv2.imread(p)
        assert img is not None and img.shape[0] == 70 and img.shape[1] > 105 and img[:, :105].std() > 10


def test_ink_previews_are_heat_maps_over_the_papyrus(tmp_path: Path):
    import cv2

    from kcomp.report.preview import write_previews
    from tests.vesuvius_fixture import make_vesuvius_layout

    raw = make_vesuvius_layout(tmp_path / "raw", n_layers=2, seed=0)
    get_competition("vesuvius").prep(raw, tmp_path / "d")
    test = read_index(tmp_path / "d" / "index.parquet").rows("test")
    h, w = int(test["height"][0]), int(test["width"][0])
    ramp = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    df = pd.DataFrame({"id": list(test["id"]), "fold": -1, "map_key": list(test["id"]), "y0": 0, "y1": h,
                       "height": h, "width": w, "map": [ramp]})
    write_predictions(df, tmp_path / "ink.parquet", task="ink", kind="test", classes=["ink"],
                      index=str(tmp_path / "d" / "index.parquet"))
    [png] = write_previews(read_predictions(tmp_path / "ink.parquet"), tmp_path / "prev")
    img = cv2.imread(png)
    assert img.shape[0] == h and img[h // 2, w - 3].mean() > img[h // 2, 2].mean() + 60


def test_previews_are_for_dense_predictions(tmp_path: Path):
    from kcomp.report.preview import write_previews

    df = pd.DataFrame({"id": ["a"], "fold": [-1], "probs": [[0.2, 0.8]]})
    write_predictions(df, tmp_path / "cls.parquet", task="cls", kind="test", classes=["x", "y"])
    with pytest.raises(BadUsage, match="previews are for seg and ink"):
        write_previews(read_predictions(tmp_path / "cls.parquet"), tmp_path / "prev")


# ------------------------------------------------------------------------------------------------------ chains


def _chain(raw: Path, tmp: Path, train_opts: tuple, extra_tta: tuple = (), folds: int = 3) -> list[tuple]:
    d, run = tmp / "data", tmp / "run"
    return [
        ("prep", "clouds", raw, "-o", d),
        ("split", d / "index.parquet", "-o", tmp / "folds.parquet", "--folds", str(folds)),
        ("train", "seg", "--folds", tmp / "folds.parquet", "--arch", "unet", "--model", "resnet18", *train_opts,
         "--no-pretrained",
         "--fold", "all", "-o", run),
        ("oof", run, "-o", tmp / "oof.parquet", "--json"),
        ("tune-threshold", tmp / "oof.parquet", "-o", tmp / "thr.json"),
        ("tta", run, "-o", tmp / "test.parquet", *extra_tta),
        ("submit", "clouds", tmp / "test.parquet", "--thresholds", tmp / "thr.json", "--sample",
         raw / "sample_submission.csv", "-o", tmp / "sub.csv"),
    ]


def _check_submission(layout: CloudsLayout, tmp: Path) -> float:
    sample = pd.read_csv(layout.raw / "sample_submission.csv", keep_default_na=False)
    sub = pd.read_csv(tmp / "sub.csv", keep_default_na=False, dtype=str)
    assert list(sub.columns) == ["Image_Label", "EncodedPixels"]
    assert list(sub["Image_Label"]) == list(sample["Image_Label"])
    for rle in sub["EncodedPixels"]:
        assert decode(rle, (350, 525), order="column").shape == (350, 525)
    return mean_dice(dict(zip(sub["Image_Label"], sub["EncodedPixels"], strict=True)), layout.truth, layout.size)


def test_chain_artifacts_on_small_images(tmp_path: Path):
    """The acceptance chain at a fifth of the size, 2 folds, 64 px and one epoch: every artifact is right; the score
    is not checked (the slow test below does that on the real layout)."""
    layout = make_clouds_layout(tmp_path / "raw", n_train=8, n_test=3, size=(280, 420), seed=5)
    steps = _chain(layout.raw, tmp_path, ("--img-size", "64", "--epochs", "1", "--batch-size", "4", "--workers",
                                          "0"), ("--workers", "0", "--tta", "2", "--preview", tmp_path / "prev"),
                   folds=2)
    steps[3] = (*steps[3], "--workers", "0")
    outs = run_chain(steps, tmp_path)
    oof = json.loads(outs["oof"])
    assert oof["metric"] == "dice" and 0 <= oof["score"] <= 1
    preds = read_predictions(tmp_path / "test.parquet")
    assert preds.task == "seg" and preds.kind == "test" and preds.classes == CLASSES
    with preds.maps() as maps:
        m = maps[preds.df["map_key"].iloc[0]]
    assert m.shape == (4, 350, 525) and m.dtype == np.uint8
    thr = json.loads((tmp_path / "thr.json").read_text())
    assert set(thr["classes"]) == set(CLASSES) and thr["size"] == [350, 525]
    assert len(list((tmp_path / "prev").glob("*.png"))) == 3
    _check_submission(layout, tmp_path)


@pytest.mark.slow
def test_issue_chain_on_a_1400x2100_layout_beats_the_empty_baseline(tmp_path: Path):
    layout = make_clouds_layout(tmp_path / "raw", n_train=96, n_test=12, seed=11)
    outs = run_chain(_chain(layout.raw, tmp_path, ("--img-size", "128", "--epochs", "2")), tmp_path, timeout=1800)
    assert json.loads(outs["oof"])["score"] > 0
    score, baseline = _check_submission(layout, tmp_path), empty_baseline(layout.truth)
    assert score > baseline + 0.1, (score, baseline)
