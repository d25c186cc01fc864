"""`kcomp pseudo` (test predictions -> training rows, per task, written as that task's index stores labels), and the
rows a fold trains and validates on with --drop / --relabel / --extra (`kcomp.data.training_rows.fold_rows`):
pseudo rows in every fold's training rows and no validation rows, validation rows never changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kcomp.artifacts.index import read_index
from kcomp.artifacts.label_issues import read_label_issues, write_label_issues
from kcomp.artifacts.predictions import read_predictions, write_predictions
from kcomp.artifacts.pseudo import absolute_rows, read_pseudo
from kcomp.data.training_rows import fold_rows
from kcomp.errors import BadInput, BadUsage
from kcomp.tasks.pseudo import make_pseudo, select
from tests.conftest import run_cli

# ------------------------------------------------------------------------------------------------------------ cls


def test_cls_pseudo_rows_are_the_index_test_rows_with_argmax_labels(demo_run: dict[str, Path], tmp_path: Path):
    out = tmp_path / "pseudo.parquet"
    r = run_cli("pseudo", demo_run["test"], "-o", out, "--top-frac", "0.5", "--soft", "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    preds = read_predictions(demo_run["test"])
    index = read_index(demo_run["index"])
    conf = preds.probs().max(1)
    pseudo = read_pseudo(out)
    df = pseudo.df
    assert summary == {"written": [str(out)], "rows": len(preds.df), "kept": len(df), "task": "cls",
                       "mean_confidence": pytest.approx(float(df["confidence"].mean()))}
    assert len(df) == int(np.ceil(0.5 * len(preds.df)))
    assert df["confidence"].min() >= np.sort(conf)[::-1][len(df) - 1] - 1e-7  # the most confident half
    test = index.df.set_index("id").loc[df["id"]]
    by_id = preds.df.set_index("id").loc[df["id"]]
    probs = np.stack(by_id["probs"].to_numpy())
    assert (df["label"].to_numpy() == probs.argmax(1)).all()
    np.testing.assert_allclose(df["confidence"], probs.max(1), atol=1e-6)
    np.testing.assert_allclose(np.stack(df["soft"].to_numpy()), probs, atol=1e-6)
    assert (df["split"] == "train").all() and "fold" not in df.columns
    assert (df["height"].to_numpy() == test["height"].to_numpy()).all()
    # the paths resolve, from the pseudo file's own location, to the index's test images
    assert [Path(p) for p in absolute_rows(pseudo)["path"]] == [index.file(p) for p in test["path"]]
    assert pseudo.task == "cls" and pseudo.classes == index.classes and pseudo.meta["top_frac"] == 0.5


def test_selection_keeps_the_most_confident_rows() -> None:
    conf = np.array([0.2, 0.9, 0.5, 0.9, 0.7])
    assert select(conf).tolist() == [0, 1, 2, 3, 4]
    assert select(conf, top_frac=0.4).tolist() == [1, 3]
    assert select(conf, min_conf=0.6).tolist() == [1, 3, 4]
    assert select(conf, top_frac=0.6, min_conf=0.8).tolist() == [1, 3]
    assert select(conf, top_frac=0.1).tolist() == [1]  # ceil: never nothing for a positive share


def test_pseudo_options_and_inputs_are_checked(demo_run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    cases = [
        (("--min-conf", "1.5"), "--min-conf 1.5: must be in [0, 1]"),
        (("--top-frac", "0"), "--top-frac 0.0: must be in (0, 1]"),
        (("--top-frac", "1.2"), "--top-frac 1.2: must be in (0, 1]"),
        (("--min-score", "-1"), "--min-score -1.0: must be in [0, 1]"),
        (("--thresholds", demo_run["oof"]), "--thresholds applies to seg and ink"),
        ((demo_run["test"],), "blend predictions of the same rows with `kcomp ensemble` first"),
    ]
    for args, message in cases:
        r = run_cli("pseudo", demo_run["test"], *args, "-o", out)
        assert r.code == 2 and message in r.last_error_line and "Traceback" not in r.stderr, (args, r.stderr)
    r = run_cli("pseudo", demo_run["oof"], "-o", out)
    assert r.code == 2 and "holds oof predictions, expected test" in r.last_error_line, r.stderr
    r = run_cli("pseudo", demo_run["test"], "-o", demo_run["test"])
    assert r.code == 2 and "is one of the inputs" in r.last_error_line, r.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------- fold rows (train wiring)


def test_pseudo_rows_train_in_every_fold_and_validate_in_none(demo_run: dict[str, Path], tmp_path: Path) -> None:
    from kcomp.tasks import get_task
    from kcomp.runs.config import resolve

    make_pseudo([str(demo_run["test"])], str(tmp_path / "pseudo.parquet"), min_conf=0.0)
    pseudo = read_pseudo(tmp_path / "pseudo.parquet")
    table = read_index(demo_run["folds"])
    folds = sorted(f for f in table.df["fold"].unique() if f >= 0)
    task = get_task("cls")
    cfg = resolve(task="cls", folds=str(demo_run["folds"]), img_size=32)
    setup = task.setup(table, cfg)
    for k in folds:
        rows = fold_rows(table, k, extra=[pseudo])
        expected_val = table.df[(table.df["split"] == "train") & (table.df["fold"] == k)].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows.val, expected_val)  # validation: exactly the folds file's, untouched
        assert set(pseudo.df["id"]) <= set(rows.train["id"]) and not set(pseudo.df["id"]) & set(rows.val["id"])
        own = table.df[(table.df["split"] == "train") & (table.df["fold"] >= 0) & (table.df["fold"] != k)]
        assert list(rows.train["id"]) == list(own["id"]) + list(pseudo.df["id"]) and rows.added == len(pseudo.df)
        added = rows.train.iloc[len(own):]
        assert (added["fold"] == -1).all() and (added["label"].to_numpy() == pseudo.df["label"].to_numpy()).all()
        # what training will read: every training row's file, the pseudo ones through the training table
        ds = task.dataset(rows.table, rows.train, cfg, setup, train=True)
        assert len(ds) == len(rows.train) and ds[len(ds) - 1][1] == pseudo.df["label"].iloc[-1]
        assert all(rows.table.file(p).is_file() for p in rows.train["path"])


def test_drop_and_relabel_change_training_rows_only(demo_run: dict[str, Path], tmp_path: Path) -> None:
    assert run_cli("clean", demo_run["oof"], "-o", tmp_path / "issues.parquet").code == 0
    issues = read_label_issues(tmp_path / "issues.parquet")
    table = read_index(demo_run["folds"])
    flagged = dict(zip(issues.df["id"], issues.df["suggested"], strict=True))
    assert flagged
    for k in sorted(f for f in table.df["fold"].unique() if f >= 0):
        plain = fold_rows(table, k)
        dropped = fold_rows(table, k, drop=issues)
        relabelled = fold_rows(table, k, relabel=issues)
        pd.testing.assert_frame_equal(dropped.val, plain.val)
        pd.testing.assert_frame_equal(relabelled.val, plain.val)
        in_train = [i for i in plain.train["id"] if i in flagged]
        assert sorted(dropped.dropped) == sorted(in_train) and len(dropped.train) == len(plain.train) - len(in_train)
        assert not set(dropped.train["id"]) & set(flagged)
        assert sorted(relabelled.relabelled) == sorted(in_train)
        got = relabelled.train.set_index("id")["label"]
        before = plain.train.set_index("id")["label"]
        for i in before.index:
            assert got[i] == (flagged[i] if i in flagged else before[i])


def test_fold_rows_refuse_mismatched_issues_and_pseudo(demo_run: dict[str, Path], tmp_path: Path) -> None:
    table = read_index(demo_run["folds"])
    train_id = table.df[table.df["split"] == "train"]["id"].iloc[0]

    def issues(ids: list, classes: list[str], name: str) -> object:
        df = pd.DataFrame({"id": ids, "fold": 0, "given": 0, "suggested": 1, "given_class": classes[0],
                           "suggested_class": classes[1], "quality": 0.1})
        write_label_issues(df, tmp_path / name, classes=classes, target="label")
        return read_label_issues(tmp_path / name)

    with pytest.raises(BadInput, match="id 'nope.jpg' is not a labelled train row"):
        fold_rows(table, 0, drop=issues(["nope.jpg"], table.classes, "a.parquet"))
    with pytest.raises(BadInput, match="classes .* differ from the folds file's"):
        fold_rows(table, 0, drop=issues([train_id], ["x", "y"], "b.parquet"))
    both = issues([train_id], table.classes, "c.parquet")
    with pytest.raises(BadUsage, match=f"id {train_id!r} is in both --drop"):
        fold_rows(table, 0, drop=both, relabel=both)
    make_pseudo([str(demo_run["test"])], str(tmp_path / "p.parquet"))
    pseudo = read_pseudo(tmp_path / "p.parquet")
    with pytest.raises(BadInput, match="is already a train row of .* or of another --extra file"):
        fold_rows(table, 0, extra=[pseudo, pseudo])
    with pytest.raises(BadInput, match="fold 7 leaves"):
        fold_rows(table, 7)


# ------------------------------------------------------------------------------------------------------------ seg


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not a.any() and not b.any() else 2 * (a & b).sum() / (a.sum() + b.sum())


def test_seg_pseudo_masks_are_rle_columns_at_the_thresholds_settings(tmp_path: Path) -> None:
    from kcomp.artifacts import write_json
    from kcomp.competitions import get_competition
    from kcomp.data.seg_dataset import sample_mask
    from kcomp.formats.rle import decode
    from tests.clouds_fixture import CLASSES, make_clouds_layout

    size = (140, 210)
    layout = make_clouds_layout(tmp_path / "raw", n_train=3, n_test=3, size=size, seed=5)
    get_competition("clouds").prep(layout.raw, tmp_path / "data")
    index = read_index(tmp_path / "data" / "index.parquet")
    test = index.rows("test")
    truth = {(label.rsplit("_", 1)[0], label.rsplit("_", 1)[1]): rle for label, rle in layout.truth.items()}
    maps = []
    for i in test["id"]:  # 200 (0.78) on the truth, 90 (0.35) elsewhere, at a quarter of the image
        maps.append(np.stack([np.where(sample_mask(truth[(i, c)], size, (70, 105)) > 0, 200, 90).astype(np.uint8)
                              for c in CLASSES]))
    df = pd.DataFrame({"id": list(test["id"]), "fold": -1, "map_key": list(test["id"]), "height": size[0],
                       "width": size[1], "map": maps})
    write_predictions(df, tmp_path / "test.parquet", task="seg", kind="test", classes=list(CLASSES),
                      index=str(tmp_path / "data" / "index.parquet"))
    thr = {"task": "seg", "size": [70, 105], "classes": {c: {"threshold": 0.3 if c == "Fish" else 0.5,
                                                              "min_size": 0, "top": 0.0} for c in CLASSES}}
    write_json(tmp_path / "thr.json", "thresholds", thr)
    r = run_cli("pseudo", tmp_path / "test.parquet", "--thresholds", tmp_path / "thr.json", "-o",
                tmp_path / "pseudo.parquet")
    assert r.code == 0, r.stderr
    pseudo = read_pseudo(tmp_path / "pseudo.parquet").df
    assert list(pseudo["id"]) == list(test["id"]) and set(index.df.columns) <= set(pseudo.columns)
    for row, m in zip(pseudo.itertuples(index=False), maps, strict=True):
        for c, name in enumerate(CLASSES):
            got = decode(getattr(row, f"mask_{name}"), size, order="column").astype(bool)
            if name == "Fish":  # 0.35 passes the tuned 0.3: the whole image
                assert got.all()
            else:  # at 0.5 the truth, brought to the image size
                assert _dice(got, sample_mask(truth[(row.id, name)], size, size).astype(bool)) > 0.95
            assert row.labels[c] == int(got.any())
        # confidence: the least over classes of the mean certainty over the pixels at or above t/2
        certs = []
        for c, name in enumerate(CLASSES):
            t = 0.3 if name == "Fish" else 0.5
            p = m[c].astype(np.float64) / 255
            p = p[p >= t / 2]
            d = np.where(p >= t, (p - t) / (1 - t), (t - p) / t)
            certs.append(d.mean() if len(d) else 1.0)
        assert row.confidence == pytest.approx(min(certs))


# ------------------------------------------------------------------------------------------------------------ ink


def test_ink_pseudo_labels_are_pngs_that_an_ink_dataset_reads(tmp_path: Path) -> None:
    from kcomp.artifacts import write_json
    from kcomp.artifacts.index import write_folds
    from kcomp.competitions import get_competition
    from kcomp.data.layers import read_png_mask
    from kcomp.tasks import get_task
    from tests.vesuvius_fixture import make_vesuvius_layout

    raw = make_vesuvius_layout(tmp_path / "raw", n_layers=4, seed=0)
    get_competition("vesuvius").prep(raw, tmp_path / "d")
    index = read_index(tmp_path / "d" / "index.parquet")
    test = index.rows("test")
    h, w = int(test["height"][0]), int(test["width"][0])
    ramp = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    df = pd.DataFrame({"id": list(test["id"]), "fold": -1, "map_key": list(test["id"]), "y0": 0, "y1": h,
                       "height": h, "width": w, "map": [ramp]})
    write_predictions(df, tmp_path / "ink.parquet", task="ink", kind="test", classes=["ink"],
                      index=str(tmp_path / "d" / "index.parquet"))
    write_json(tmp_path / "thr.json", "thresholds", {"task": "ink", "threshold": 0.6, "min_size": 0})
    out = tmp_path / "out" / "pseudo.parquet"
    r = run_cli("pseudo", tmp_path / "ink.parquet", "--thresholds", tmp_path / "thr.json", "-o", out, "--json")
    assert r.code == 0, r.stderr
    pseudo = read_pseudo(out)
    png = tmp_path / "out" / "pseudo_labels" / f"{test['id'][0]}.png"
    assert pseudo.df["inklabels"].tolist() == [png.name] and pseudo.meta["files"] == {"inklabels": "pseudo_labels"}
    mask = read_png_mask(index.file(test["mask"][0]), (h, w))
    expected = (ramp.astype(np.float64) / 255 >= 0.6) & mask
    assert (read_png_mask(png, (h, w)) == expected).all()
    # joined to a folds file's training rows, the ink task reads the PNG as the fragment's labels
    folds = tmp_path / "d" / "folds.parquet"
    write_folds(index, [0 if s == "train" and k % 2 == 0 else 1 if s == "train" else -1
                        for k, s in enumerate(index.df["split"])], folds)
    table = read_index(folds)
    rows = fold_rows(table, 0, extra=[pseudo])
    assert Path(rows.train["inklabels"].iloc[-1]) == png.resolve()
    fragments = get_task("ink").fragments(rows.table, rows.train, with_targets=True)
    assert (fragments[-1].labels == expected).all()


# ------------------------------------------------------------------------------------------------------------ det


def test_det_pseudo_boxes_above_the_score(tmp_path: Path) -> None:
    import cv2

    from kcomp.artifacts import write_index

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for name in ("a", "b"):
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.full((80, 100, 3), 40, np.uint8))
    index = pd.DataFrame({"id": ["a", "b"], "path": ["images/a.png", "images/b.png"], "split": "test",
                          "height": 800, "width": 1000, "boxes": [[], []], "group": ["s1", "s2"]})
    write_index(index, root / "index.parquet", root=root, competition="test", task="det", classes=["opacity"])
    boxes = [{"x1": 100.0, "y1": 200.0, "x2": 500.0, "y2": 600.0, "score": 0.9, "label": 0},
             {"x1": 700.0, "y1": 720.0, "x2": 950.0, "y2": 790.0, "score": 0.4, "label": 0}]
    preds = pd.DataFrame({"id": ["a", "b"], "fold": -1, "boxes": [boxes, []], "height": 800, "width": 1000})
    write_predictions(preds, tmp_path / "det.parquet", task="det", kind="test", classes=["opacity"],
                      index=str(root / "index.parquet"))
    written, summary = make_pseudo([str(tmp_path / "det.parquet")], str(tmp_path / "p.parquet"))
    df = read_pseudo(written).df.set_index("id")
    assert summary["kept"] == 2
    assert list(df.loc["a", "boxes"]) == [{"x1": 100.0, "y1": 200.0, "x2": 500.0, "y2": 600.0, "label": "opacity"}]
    assert list(df.loc["b", "boxes"]) == [] and df.loc["b", "group"] == "s2"
    # the least certain decision: the 0.4 box left out, (0.5 - 0.4) / 0.5; no boxes: nothing to decide
    assert df.loc["a", "confidence"] == pytest.approx(0.2) and df.loc["b", "confidence"] == 1.0
    with pytest.raises(BadUsage, match="--soft applies to cls"):
        make_pseudo([str(tmp_path / "det.parquet")], str(tmp_path / "q.parquet"), soft=True)
