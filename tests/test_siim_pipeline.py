"""SIIM-COVID19 end to end: `submit siim-covid19` row by row on hand-made predictions, the whole chain
prep -> split -> train det/cls -> tta -> wbf -> submit on a miniature DICOM download (fast variant), and the
issue's acceptance chain scored against held-out truth (slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kcomp.artifacts.index import write_index
from kcomp.artifacts.predictions import write_predictions
from kcomp.formats.prediction_string import parse_prediction_string
from tests.conftest import run_chain, run_cli
from tests.siim_fixture import make_siim_layout

STUDY_ORDER = ["negative", "typical", "indeterminate", "atypical"]
TRAINED_ORDER = ["atypical", "indeterminate", "negative", "typical"]  # `train cls --target study` sorts them


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread in the CLI subprocesses: on a shared 2-core machine two spinning OpenMP threads run
    effdet many times slower than one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def held_out_layout(root: Path, *, n_studies: int, n_images: int, hold: slice, seed: int = 0
                    ) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A miniature download whose test studies are train studies moved aside, so their truth is known: returns
    (raw dir, held-out rows of train_image_level.csv, held-out rows of train_study_level.csv)."""
    raw = make_siim_layout(root, n_studies=n_studies, n_images=n_images, n_test_studies=0, n_test_images=0,
                           seed=seed)
    images = pd.read_csv(raw / "train_image_level.csv", dtype=str, keep_default_na=False)
    studies = pd.read_csv(raw / "train_study_level.csv", dtype=str, keep_default_na=False)
    held = [s[: -len("_study")] for s in studies["id"].iloc[hold]]
    test_images = images[images["StudyInstanceUID"].isin(held)]
    test_studies = studies[studies["id"].isin([f"{s}_study" for s in held])]
    for s in held:
        (raw / "test").mkdir(exist_ok=True)
        shutil.move(raw / "train" / s, raw / "test" / s)
    images[~images["id"].isin(test_images["id"])].to_csv(raw / "train_image_level.csv", index=False)
    studies[~studies["id"].isin(test_studies["id"])].to_csv(raw / "train_study_level.csv", index=False)
    sample = pd.DataFrame({"id": list(test_studies["id"]) + list(test_images["id"]),
                           "PredictionString": ["negative 1 0 0 1 1"] * len(test_studies)
                           + ["none 1 0 0 1 1"] * len(test_images)})
    sample.to_csv(raw / "sample_submission.csv", index=False)
    test_studies = test_studies.astype({c: int for c in test_studies.columns if c != "id"})
    return raw, test_images.reset_index(drop=True), test_studies.reset_index(drop=True)


def baseline(sample: pd.DataFrame) -> pd.DataFrame:
    """Every image `none 1`, every study the four classes at 0.25."""
    uniform = " ".join(f"{c} 0.25 0 0 1 1" for c in STUDY_ORDER)
    return sample.assign(PredictionString=[uniform if i.endswith("_study") else "none 1 0 0 1 1"
                                           for i in sample["id"]])


def check_format(sub: pd.DataFrame, sample: pd.DataFrame) -> None:
    assert list(sub.columns) == ["id", "PredictionString"]
    assert list(sub["id"]) == list(sample["id"])
    for i, text in zip(sub["id"], sub["PredictionString"], strict=True):
        preds = parse_prediction_string(text, where=i)
        if i.endswith("_study"):
            assert [p.label for p in preds] == STUDY_ORDER
            assert all((p.x1, p.y1, p.x2, p.y2) == (0, 0, 1, 1) and 0 <= p.conf <= 1 for p in preds)
            assert sum(p.conf for p in preds) == pytest.approx(1, abs=1e-5)
        else:
            assert preds[-1].label == "none" and (preds[-1].x1, preds[-1].x2) == (0, 1)
            assert all(p.label == "opacity" and p.x2 > p.x1 and p.y2 > p.y1 for p in preds[:-1])


# ------------------------------------------------------------------------------ submit on hand-made predictions


def _hand_made(tmp_path: Path) -> dict[str, Path]:
    """An index of 2 test studies (3 images) and det / study / has_opacity prediction files over them."""
    rows = [("i1", "s1", 100, 200), ("i2", "s1", 300, 300), ("i3", "s2", 50, 80)]
    df = pd.DataFrame({"id": [r[0] for r in rows], "study_id": [r[1] for r in rows],
                       "path": [f"images/{r[0]}.png" for r in rows], "split": "test",
                       "height": [r[2] for r in rows], "width": [r[3] for r in rows], "boxes": [[], [], []],
                       "study": [None] * 3, "group": [r[1] for r in rows]})
    idx = Path(write_index(df, tmp_path / "index.parquet", root=tmp_path, competition="siim-covid19", task="det",
                           classes=["opacity"]))
    box = {"x1": -5.0, "y1": 10.04, "x2": 250.0, "y2": 60.0, "score": 0.5, "label": 0}  # spills past i1's right edge
    det = pd.DataFrame({"id": ["i1", "i2", "i3"], "fold": -1, "height": [100, 300, 50], "width": [200, 300, 80],
                        "boxes": [[box, {**box, "x1": 20.0, "x2": 30.0, "score": 0.8}], [], [{**box, "y2": 40.0}]]})
    paths = {"det": tmp_path / "det.parquet", "study": tmp_path / "study.parquet",
             "opacity": tmp_path / "opacity.parquet", "sample": tmp_path / "sample.csv"}
    write_predictions(det, paths["det"], task="det", kind="test", classes=["opacity"], index=str(idx))
    study_p = [[0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.1, 0.4], [0.7, 0.1, 0.1, 0.1]]  # atypical, indet., neg., typical
    write_predictions(pd.DataFrame({"id": ["i1", "i2", "i3"], "fold": -1, "probs": study_p}), paths["study"],
                      task="cls", kind="test", classes=TRAINED_ORDER, target="study", index=str(idx))
    write_predictions(pd.DataFrame({"id": ["i1", "i2", "i3"], "fold": -1,
                                    "probs": [[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]]}), paths["opacity"],
                      task="cls", kind="test", classes=["0", "1"], target="has_opacity", index=str(idx))
    pd.DataFrame({"id": ["s2_study", "s1_study", "i1_image", "i2_image", "i3_image"],
                  "PredictionString": "none 1 0 0 1 1"}).to_csv(paths["sample"], index=False)
    return paths


def _rows(path: Path) -> dict[str, list]:
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {i: parse_prediction_string(t) for i, t in zip(sub["id"], sub["PredictionString"], strict=True)}


def test_submit_rows_from_det_and_study_files(tmp_path):
    p = _hand_made(tmp_path)
    r = run_cli("submit", "siim-covid19", p["study"], p["det"], "--sample", p["sample"], "-o", tmp_path / "s.csv")
    assert r.code == 0, r.stderr
    sub = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    assert list(sub["id"]) == ["s2_study", "s1_study", "i1_image", "i2_image", "i3_image"]
    rows = _rows(tmp_path / "s.csv")
    # study = mean over its images, in the competition's class order whatever order training used
    s1 = {q.label: q.conf for q in rows["s1_study"]}
    assert [q.label for q in rows["s1_study"]] == STUDY_ORDER
    assert s1 == pytest.approx({"negative": 0.2, "typical": 0.4, "indeterminate": 0.2, "atypical": 0.2})
    assert {q.label: q.conf for q in rows["s2_study"]}["atypical"] == pytest.approx(0.7)
    # image rows: boxes best first, clipped to the image, one decimal; none = 1 - best box score
    i1 = rows["i1_image"]
    assert [q.label for q in i1] == ["opacity", "opacity", "none"]
    assert (i1[0].conf, i1[0].x1, i1[0].x2) == (0.8, 20, 30)
    assert (i1[1].x1, i1[1].y1, i1[1].x2, i1[1].y2) == (0, 10, 200, 60)
    assert i1[2].conf == pytest.approx(0.2)
    assert [(q.label, q.conf) for q in rows["i2_image"]] == [("none", 1.0)]  # no box: none 1


def test_submit_with_a_has_opacity_file_and_none_power(tmp_path):
    p = _hand_made(tmp_path)
    files = [p["det"], p["study"], p["opacity"]]
    assert run_cli("submit", "siim-covid19", *files, "--sample", p["sample"], "-o", tmp_path / "a.csv").code == 0
    r = run_cli("submit", "siim-covid19", *files, "--none-power", "0.5", "--sample", p["sample"],
                "-o", tmp_path / "b.csv")
    assert r.code == 0, r.stderr
    a, b = _rows(tmp_path / "a.csv"), _rows(tmp_path / "b.csv")
    assert a["i1_image"][-1].conf == pytest.approx(0.2) and a["i2_image"][-1].conf == pytest.approx(0.9)
    assert a["i1_image"][0].conf == pytest.approx(0.8)  # no fusion without --none-power
    assert b["i1_image"][0].conf == pytest.approx(0.8 * 0.8 ** 0.5, abs=1e-6)  # x (1 - p_none)^k
    assert b["i3_image"][0].conf == pytest.approx(0.5 * 0.5 ** 0.5, abs=1e-6)
    assert b["i1_image"][-1].conf == pytest.approx(0.2)


def _image_row_one_box_at_a_time(boxes, h, w, p_op, power):
    """What an image row means, box by box with `Pred`s: positive scores, best first (ties in file order), each
    box clipped to the image and rounded to 1 decimal, empty ones dropped, then `none`."""
    from kcomp.formats.prediction_string import Pred, format_prediction_string

    boxes = sorted([b for b in boxes if b[4] > 0], key=lambda b: -b[4])
    factor = 1.0 if p_op is None or not power else p_op ** power
    p_none = 1.0 - (max((b[4] for b in boxes), default=0.0) if p_op is None else p_op)
    preds = []
    for x1, y1, x2, y2, s, _ in boxes:
        x1, x2 = sorted(round(min(max(v, 0.0), w), 1) for v in (x1, x2))
        y1, y2 = sorted(round(min(max(v, 0.0), h), 1) for v in (y1, y2))
        if x2 > x1 and y2 > y1:
            preds.append(Pred("opacity", s * factor, x1, y1, x2, y2))
    return format_prediction_string([*preds, Pred("none", p_none, 0, 0, 1, 1)])


@pytest.mark.parametrize("power", [None, 0.0, 0.3])
def test_image_rows_from_arrays_equal_box_by_box(power):
    from kcomp.artifacts.boxes import Boxes
    from kcomp.artifacts.predictions import Predictions
    from kcomp.competitions.siim_submit import image_rows

    rng = np.random.default_rng(7)
    sizes = rng.integers(50, 3000, (60, 2))
    rows = []
    for k, (h, w) in enumerate(sizes):
        n = int(rng.integers(0, 12))
        xy = rng.uniform(-0.2, 1.1, (n, 2)) * [w, h]
        b = np.concatenate([xy, xy + rng.uniform(-0.05, 0.5, (n, 2)) * [w, h]], 1)
        b[::3] = np.round(b[::3], 2) + 0.05  # x.x5: round() and np.round disagree on some
        s = rng.choice([0.0, 0.3, 0.9, -0.1], n) if k % 2 else rng.uniform(-0.1, 1, n)
        rows.append(np.column_stack([b, s, np.zeros(n)]))
    ids = [f"i{k}" for k in range(len(rows))]
    det = Predictions(pd.DataFrame({"id": ids, "height": sizes[:, 0], "width": sizes[:, 1]}), {}, "det.parquet",
                      Boxes.from_rows(rows))
    p_op = None if power is None else dict(zip(ids, rng.uniform(0, 1, len(ids)).tolist(), strict=True))
    got = image_rows(det, p_op, power or 0.0)
    want = [(f"{i}_image", _image_row_one_box_at_a_time(r.tolist(), h, w, None if p_op is None else p_op[i], power))
            for i, r, (h, w) in zip(ids, rows, sizes.tolist(), strict=True)]
    assert got == want


@pytest.mark.parametrize("case", ["no_study", "power_without_opacity", "power_elsewhere", "two_det"])
def test_submit_usage_errors(tmp_path, case):
    p = _hand_made(tmp_path)
    args = {"no_study": ["siim-covid19", p["det"]],
            "power_without_opacity": ["siim-covid19", p["det"], p["study"], "--none-power", "0.3"],
            "power_elsewhere": ["cassava", p["study"], "--none-power", "0.3"],
            "two_det": ["siim-covid19", p["det"], p["det"], p["study"]]}[case]
    r = run_cli("submit", *args, "-o", tmp_path / "x.csv")
    assert r.code == 2, r.stderr
    assert {"no_study": "study", "power_without_opacity": "has_opacity", "power_elsewhere": "does not apply",
            "two_det": "two det"}[case] in r.last_error_line
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------------------------------ the pipeline


def _chain(raw: Path, tmp_path: Path, *, size: int, det_img: int, det_epochs: int, cls_epochs: int, folds: int,
           tta: int) -> list[tuple]:
    d = tmp_path / "data"
    fast = ("--batch-size", "4", "--workers", "0", "--no-pretrained")
    return [
        ("prep", "siim-covid19", raw, "-o", d, "--size", str(size), "--workers", "0"),
        ("split", d / "index.parquet", "--strategy", "group", "--folds", str(folds), "-o", tmp_path / "folds.parquet"),
        ("train", "det", "--folds", tmp_path / "folds.parquet", "--model", "tf_efficientdet_d0", "--img-size",
         str(det_img), "--epochs", str(det_epochs), "--fold", "all", *fast, "-o", tmp_path / "det"),
        ("tta", tmp_path / "det", "-o", tmp_path / "det_test.parquet", "--tta", str(tta), "--workers", "0"),
        ("wbf", tmp_path / "det_test.parquet", "-o", tmp_path / "det_wbf.parquet"),
        ("train", "cls", "--folds", tmp_path / "folds.parquet", "--target", "study", "--model", "resnet18",
         "--img-size", "64", "--epochs", str(cls_epochs), "--fold", "all", "--lr", "3e-3", *fast,
         "-o", tmp_path / "study"),
        ("tta", tmp_path / "study", "-o", tmp_path / "study_test.parquet", "--tta", "2", "--workers", "0"),
        ("submit", "siim-covid19", tmp_path / "det_wbf.parquet", tmp_path / "study_test.parquet", "--sample",
         raw / "sample_submission.csv", "-o", tmp_path / "sub.csv"),
    ]


def test_siim_chain_runs_and_submits_the_samples_rows(tmp_path):
    raw, _, _ = held_out_layout(tmp_path / "raw", n_studies=12, n_images=15, hold=slice(0, 2))
    run_chain(_chain(raw, tmp_path, size=128, det_img=128, det_epochs=1, cls_epochs=1, folds=2, tta=2), tmp_path)
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str, keep_default_na=False)
    check_format(sub, sample)
    from kcomp.artifacts.predictions import read_predictions

    det = read_predictions(tmp_path / "det_test.parquet")
    index = pd.read_parquet(tmp_path / "data" / "index.parquet").set_index("id")
    for i, h, w, boxes in zip(det.df["id"], det.df["height"], det.df["width"], det.boxes.rows(), strict=True):
        assert (h, w) == tuple(index.loc[i, ["height", "width"]])  # ORIGINAL DICOM size, not the 128 px cache
        for x1, y1, x2, y2, _, _ in boxes:
            assert -1e-3 <= x1 < x2 <= w + 1e-3 and -1e-3 <= y1 < y2 <= h + 1e-3


@pytest.mark.slow
def test_siim_acceptance_beats_the_all_none_uniform_baseline(tmp_path):
    from kcomp.metrics._detection import siim_map_from_frames

    raw, truth_images, truth_studies = held_out_layout(tmp_path / "raw", n_studies=32, n_images=48,
                                                       hold=slice(8, 16))
    run_chain(_chain(raw, tmp_path, size=256, det_img=256, det_epochs=2, cls_epochs=6, folds=3, tta=2), tmp_path)
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str, keep_default_na=False)
    check_format(sub, sample)
    ours = siim_map_from_frames(sub, truth_images, truth_studies)
    base = siim_map_from_frames(baseline(sample), truth_images, truth_studies)
    print("acceptance mAP", ours, "baseline", base)
    assert ours["map"] > base["map"] + 0.05, (ours, base)
    assert np.isfinite(ours["map"])
