"""`kcomp report` (PNGs of the expected size, an index.html whose every link exists, the rich summary), the
`--json` shapes documented in docs/json.md, and the run logs (train.log, metrics.parquet, optional TensorBoard)."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
PLOT_SIZE = (800, 500)  # kcomp.report._plot.WIDTH x HEIGHT
METRICS_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_accuracy", "best", "seconds", "img_per_s"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]


def _check_page(out: Path) -> list[str]:
    """Every src/href of index.html is a relative path to a file inside `out`; returns them."""
    parser = _Links()
    parser.feed((out / "index.html").read_text())
    for link in parser.links:
        assert not re.match(r"^[a-z]+:", link) and not link.startswith("/") and ".." not in link.split("/"), link
        assert (out / link).is_file(), f"index.html links to missing {link}"
    return parser.links


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _check_plot(path: Path) -> None:
    img = _png(path)
    assert (img.shape[1], img.shape[0]) == PLOT_SIZE, f"{path.name} is {img.shape[1]}x{img.shape[0]}"
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20, f"{path.name} looks blank"


def _report(*args: str | Path) -> dict:
    r = run_cli("report", *args, "--json")
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


# --- runs and classification predictions (the session's demo run) ------------------------------------------------

def test_report_of_a_run_its_predictions_and_thresholds(demo_run: dict[str, Path], tmp_path: Path) -> None:
    from kcomp.artifacts import write_json
    from kcomp.artifacts.predictions import read_predictions
    from kcomp.tasks import get_task

    thr = tmp_path / "thr.json"
    write_json(thr, "thresholds", get_task("cls").tune_thresholds(read_predictions(demo_run["oof"])))
    out = tmp_path / "report"
    summary = _report(demo_run["run"], demo_run["oof"], demo_run["test"], thr, "-o", out, "--worst", "0")

    names = {Path(p).name for p in summary["written"]}
    assert names == {"run_loss.png", "run_metric.png", "run_lr.png", "oof_probs.png", "oof_confusion.png",
                     "test_probs.png", "index.html"}
    assert summary["report"] == str(out / "index.html") and summary["written"][-1] == summary["report"]
    for p in summary["written"][:-1]:
        _check_plot(Path(p))
    links = _check_page(out)
    assert sorted(set(links)) == sorted(n for n in names if n != "index.html")

    run, oof, test, thresholds = summary["sections"]
    assert [s["kind"] for s in summary["sections"]] == ["run", "predictions", "predictions", "thresholds"]
    assert run["facts"]["task"] == "cls" and run["facts"]["folds"] == [0, 1]
    assert run["facts"]["metric"] == "accuracy"
    assert [r["fold"] for r in run["rows"]] == [0, 1] and all(r["best_epoch"] == 1 for r in run["rows"])
    assert oof["facts"]["score"] == read_predictions(demo_run["oof"]).meta["score"]
    # the confusion counts behind the table: every OOF row once, recall = right / true per class
    assert sum(r["true"] for r in oof["rows"]) == sum(r["predicted"] for r in oof["rows"]) == oof["facts"]["rows"]
    right = sum(round(r["recall"] * r["true"]) for r in oof["rows"] if r["recall"] is not None)
    assert right / oof["facts"]["rows"] == pytest.approx(oof["facts"]["score"], abs=1e-6)
    assert "true" not in test["rows"][0] and any("no confusion matrix" in n for n in test["notes"])
    assert thresholds["images"] == [] and thresholds["notes"]  # argmax: a note instead of a curve
    html = (out / "index.html").read_text()
    assert "no threshold" in html and "confusion" in html


def test_a_single_input_gets_plain_names_and_stdout_lists_the_files(demo_run: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "r"
    r = run_cli("report", demo_run["run"], "-o", out)
    assert r.code == 0, r.stderr
    assert r.stdout.splitlines() == [str(out / n) for n in ("loss.png", "metric.png", "lr.png", "index.html")]
    _check_page(out)


def test_terminal_summary_is_a_table_per_section(demo_run: dict[str, Path], tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from kcomp.report.build import build_report
    from kcomp.report.terminal import renderables

    sections, _ = build_report([str(demo_run["oof"])], tmp_path / "r")
    console = Console(record=True, width=150, file=io.StringIO())
    for r in renderables(sections[0]):
        console.print(r)
    text = console.export_text()
    assert "oof predictions" in text and "recall" in text and "precision" in text
    assert all(name in text for name in sections[0].facts["classes"])


# --- thresholds of seg and ink: curves from the real tuners ---------------------------------------------------------

def _seg_thresholds(path: Path) -> dict:
    from kcomp.artifacts import write_json
    from kcomp.post.seg_threshold import tune_class

    rng = np.random.default_rng(0)
    truths = np.zeros((6, 20, 30), bool)
    truths[:3, 5:15, 5:20] = True
    classes = {}
    for c, name in enumerate(["Fish", "Flower"]):
        probs = np.clip(truths * (0.6 + 0.1 * c) * 255 + rng.integers(0, 90, truths.shape), 0, 255).astype(np.uint8)
        ch = tune_class(probs, truths, min_sizes=(0, 10))
        classes[name] = {"threshold": ch.threshold, "min_size": ch.min_size, "top": ch.top, "score": ch.score,
                         "curve": ch.curve}
    body = {"task": "seg", "method": "threshold+min_size+top", "metric": "dice",
            "score": float(np.mean([v["score"] for v in classes.values()])), "size": [20, 30], "oof": "oof.parquet",
            "classes": classes}
    write_json(path, "thresholds", body)
    return body


def _ink_thresholds(path: Path) -> dict:
    from kcomp.artifacts import write_json
    from kcomp.post.ink_threshold import tune

    rng = np.random.default_rng(1)
    label = np.zeros((64, 64), bool)
    label[10:40, 20:50] = True
    prob = np.clip(label * 150 + rng.integers(0, 100, label.shape), 0, 255).astype(np.uint8)
    best = tune([(prob, label, np.ones_like(label))], downscale=4, min_sizes=(0, 20))
    body = {"task": "ink", "method": "threshold+min_size", "threshold": best.threshold, "min_size": best.min_size,
            "downscale": best.downscale, "metric": "f05", "score": best.score, "oof": "oof.parquet",
            "curve": best.curve, "classes": {"ink": {"threshold": best.threshold, "min_size": best.min_size}}}
    write_json(path, "thresholds", body)
    return body


def test_threshold_curves_for_seg_and_ink(tmp_path: Path) -> None:
    seg = _seg_thresholds(tmp_path / "seg.json")
    ink = _ink_thresholds(tmp_path / "ink.json")
    out = tmp_path / "report"
    summary = _report(tmp_path / "seg.json", tmp_path / "ink.json", "-o", out)
    assert [Path(p).name for p in summary["written"]] == ["seg_threshold_curves.png", "ink_threshold_curves.png",
                                                          "index.html"]
    for p in summary["written"][:-1]:
        _check_plot(Path(p))
    _check_page(out)
    s_seg, s_ink = summary["sections"]
    assert [r["class"] for r in s_seg["rows"]] == ["Fish", "Flower"]
    assert s_seg["rows"][0]["threshold"] == seg["classes"]["Fish"]["threshold"]
    assert "curve" not in s_seg["rows"][0]  # hundreds of points belong in the picture, not the table
    assert s_ink["facts"]["score"] == pytest.approx(ink["score"]) and s_ink["facts"]["downscale"] == 4
    assert s_ink["rows"] == [{"class": "ink", "threshold": ink["threshold"], "min_size": ink["min_size"]}]


def test_curve_points_read_both_shapes() -> None:
    from kcomp.report.thresholds import _points

    assert _points([[0.5, 0.2], [0.1, 0.4]]) == [(0.1, 0.4), (0.5, 0.2)]
    assert _points([{"threshold": 0.3, "score": 0.7, "min_size": 5}]) == [(0.3, 0.7)]


# --- det boxes and seg overlays ---------------------------------------------------------------------------------

def _det_files(tmp_path: Path) -> Path:
    """A 1000x800 original whose cached copy is 100x80, true and predicted boxes in original pixels."""
    import cv2
    import pandas as pd

    from kcomp.artifacts import write_index
    from kcomp.artifacts.predictions import write_predictions

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for name in ("a", "b"):
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.full((80, 100, 3), 40, np.uint8))
    truth = [{"x1": 600.0, "y1": 100.0, "x2": 900.0, "y2": 700.0, "label": "opacity"}]
    index = pd.DataFrame({"id": ["b", "a"], "path": ["images/b.png", "images/a.png"], "split": ["train", "train"],
                          "height": [800, 800], "width": [1000, 1000], "boxes": [[], truth]})
    write_index(index, root / "index.parquet", root=root, competition="test", task="det", classes=["opacity"])
    boxes = [{"x1": 100.0, "y1": 200.0, "x2": 500.0, "y2": 600.0, "score": 0.9, "label": 0},
             {"x1": 700.0, "y1": 720.0, "x2": 950.0, "y2": 790.0, "score": 0.05, "label": 0}]  # below 0.1: hidden
    preds = pd.DataFrame({"id": ["b", "a"], "fold": [1, 0], "boxes": [[], boxes], "height": [800, 800],
                          "width": [1000, 1000]})
    out = tmp_path / "oof_det.parquet"
    write_predictions(preds, out, task="det", kind="oof", classes=["opacity"], index=str(root / "index.parquet"),
                      metric="map50", score=0.5)
    return out


def test_det_previews_scale_original_boxes_onto_the_cached_image(tmp_path: Path) -> None:
    preds = _det_files(tmp_path)
    out = tmp_path / "report"
    summary = _report(preds, "-o", out, "--previews", "1")
    section = summary["sections"][0]
    assert section["rows"] == [{"images": 2, "boxes": 2, "images_with_boxes": 1, "boxes_score_ge_0.1": 1}]
    assert [im["path"] for im in section["images"]] == ["box_scores.png", "boxes/a.png"]  # the image with boxes
    _check_plot(out / "box_scores.png")
    _check_page(out)
    img = _png(out / "boxes" / "a.png")
    assert img.shape == (80, 100, 3)
    red, green = (255, 64, 64), (64, 220, 64)
    # What the preview means: each box's outline lies where its original-pixel box lands on the 100x80 cache. A
    # label's font (which OpenCV releases render differently) may cover a few outline pixels, never most of them.
    assert _outline_share(img, (10, 20, 50, 60), red) > 0.75  # prediction: (100, 200)-(500, 600) / 10
    assert _outline_share(img, (60, 10, 90, 70), green) > 0.75  # truth: (600, 100)-(900, 700) / 10
    assert _outline_share(img, (70, 72, 95, 79), red) < 0.25  # the 0.05 box is not drawn
    assert _outline_share(img, (30, 30, 45, 50), red) == 0 and _outline_share(img, (30, 30, 45, 50), green) == 0


def _outline_share(img: np.ndarray, box: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> float:
    """The share of the pixels on a rectangle's four sides (x1, y1, x2, y2, inclusive) that have colour `rgb`."""
    x1, y1, x2, y2 = box
    sides = [img[y1, x1:x2 + 1], img[y2, x1:x2 + 1], img[y1:y2 + 1, x1], img[y1:y2 + 1, x2]]
    pixels = np.concatenate(sides)
    return float((pixels == np.array(rgb, np.uint8)).all(axis=1).mean())


def test_seg_previews_come_from_the_preview_module(tmp_path: Path) -> None:
    import cv2
    import pandas as pd

    from kcomp.artifacts import write_index
    from kcomp.artifacts.predictions import write_map_predictions

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    ids = ["x1.jpg", "x2.jpg", "x3.jpg"]
    for i in ids:
        cv2.imwrite(str(root / "images" / i), np.full((60, 90, 3), 120, np.uint8))
    index = pd.DataFrame({"id": ids, "path": [f"images/{i}" for i in ids], "split": "test", "height": 60,
                          "width": 90})
    write_index(index, root / "index.parquet", root=root, competition="test", task="seg", classes=["Fish", "Sugar"])
    maps = np.zeros((2, 30, 45), np.uint8)
    maps[0, 5:20, 5:20] = 230
    df = pd.DataFrame({"id": ids, "fold": -1, "map_key": ["m0", "m1", "m2"]})
    pred = tmp_path / "test_seg.parquet"
    write_map_predictions(df, pred, [(k, maps) for k in df["map_key"]], task="seg", kind="test",
                          classes=["Fish", "Sugar"], index=str(root / "index.parquet"))
    out = tmp_path / "report"
    summary = _report(pred, "-o", out, "--previews", "2")
    images = [im["path"] for im in summary["sections"][0]["images"]]
    assert images == ["previews/x1.png", "previews/x2.png"]
    assert sorted(_check_page(out)) == sorted(images * 2)  # each image is shown and linked
    img = _png(out / "previews" / "x1.png")  # its layout is kcomp.report.preview's (tested there)
    assert img.shape[0] >= 30 and img.shape[1] >= 45 and img.std() > 0


# --- bad input ----------------------------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(demo_run: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        ((tmp_path / "missing.parquet",), "no such file"),
        ((tmp_path,), "not a run directory"),
        ((demo_run["folds"],), "expected predictions"),
        ((demo_run["oof"], "--previews", "-1"), "--previews -1"),
    ]
    for args, message in cases:
        r = run_cli("report", *args, "-o", tmp_path / "out")
        assert r.code == 2, (args, r.stderr)
        assert message in r.last_error_line and "Traceback" not in r.stderr, r.stderr
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "config.json").write_text((demo_run["run"] / "config.json").read_text())
    r = run_cli("report", empty, "-o", tmp_path / "out")
    assert r.code == 2 and "no trained fold" in r.last_error_line


# --- --json: every command has it, and docs/json.md documents the shape ----------------------------------------

def _documented() -> dict[str, dict]:
    """docs/json.md: command -> the first JSON example under its `### kcomp <command>` heading."""
    text = (ROOT / "docs" / "json.md").read_text()
    out = {}
    for m in re.finditer(r"^### kcomp ([a-z-]+)\n(.*?)(?=^### |\Z)", text, re.S | re.M):
        block = re.search(r"```json\n(.*?)```", m[2], re.S)
        assert block, f"no JSON example for {m[1]}"
        out[m[1]] = json.loads(block[1])
    return out


def test_every_command_has_json_and_docs_show_its_shape() -> None:
    from typer.main import get_command

    from kcomp.commands.main import app

    commands = get_command(app).commands
    documented = _documented()
    assert sorted(documented) == sorted(commands)
    for name, cmd in commands.items():
        assert any("--json" in p.opts for p in cmd.params), f"kcomp {name} has no --json"
        assert "written" in documented[name]


JSON_CALLS = {
    "split": ("split", "{index}", "-o", "{tmp}/f.parquet", "--folds", "2"),
    "ensemble": ("ensemble", "{oof}", "{oof}", "-o", "{tmp}/e.parquet"),
    "tune-threshold": ("tune-threshold", "{oof}", "-o", "{tmp}/t.json"),
    "submit": ("submit", "demo", "{test}", "-o", "{tmp}/s.csv"),
    "stack": ("stack", "{oof}", "{oof}", "--test", "{test}", "{test}", "-o", "{tmp}/st.parquet", "--oof-output",
              "{tmp}/so.parquet", "--folds", "2"),
    "report": ("report", "{run}", "-o", "{tmp}/rep"),
    "clean": ("clean", "{oof}", "-o", "{tmp}/issues.parquet"),
    "pseudo": ("pseudo", "{test}", "-o", "{tmp}/pseudo.parquet"),
}


@pytest.mark.parametrize("name", sorted(JSON_CALLS))
def test_real_json_output_matches_the_documented_keys(name: str, demo_run: dict[str, Path], tmp_path: Path) -> None:
    """One line of JSON on stdout with exactly the documented keys (for the commands cheap to run here; oof, tta,
    train, wbf and prep are checked by their own tests' --json calls)."""
    documented = _documented()[name]
    values = {"tmp": tmp_path, **demo_run}
    r = run_cli(*(a.format(**values) for a in JSON_CALLS[name]), "--json")
    assert r.code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1, r.stdout
    got = json.loads(r.stdout)
    assert set(got) == set(documented), (sorted(got), sorted(documented))
    assert got["written"] and all(Path(p).exists() for p in got["written"]), got["written"]
    if name == "report":
        doc_run, got_run = documented["sections"][0], got["sections"][0]
        assert set(got_run) == set(doc_run) and set(got_run["facts"]) == set(doc_run["facts"])
        assert set(got_run["rows"][0]) == set(doc_run["rows"][0])


# --- run logs: train.log, metrics.parquet, optional TensorBoard -------------------------------------------------

def test_every_fold_has_a_readable_log_and_a_metrics_table(demo_run: dict[str, Path]) -> None:
    from kcomp.artifacts import paths, read_table

    for k in paths.trained_folds(demo_run["run"]):
        df, meta = read_table(paths.metrics(demo_run["run"], k), "metrics")
        assert list(df.columns) == METRICS_COLUMNS and meta["fold"] == k and meta["metric"] == "accuracy"
        lines = paths.train_log(demo_run["run"], k).read_text().splitlines()
        assert len(lines) == len(df) == 1
        assert lines[0].startswith(f"fold {k} epoch 1/1: train_loss ") and "val_accuracy" in lines[0]


class _FakeWriter:
    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.flushes = log_dir, [], 0

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.append((tag, value, global_step))

    def flush(self) -> None:
        self.flushes += 1


def test_tensorboard_writer_is_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import types

    from kcomp.runs import tensorboard

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    assert tensorboard.open_writer(tmp_path, 0) is None
    monkeypatch.setattr(tensorboard, "_WRITERS", {})
    tensorboard.log_epoch(tmp_path, 0, {"epoch": 1, "lr": 0.1})  # a no-op, not an error
    assert not (tmp_path / "fold0").exists()

    # with tensorboard importable, every numeric metrics column is a scalar at step = epoch (flags are not)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboard"
                        else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeWriter))
    monkeypatch.setattr(tensorboard, "_WRITERS", {})
    row = {"epoch": 2, "step": 20, "lr": 1e-3, "train_loss": 0.5, "val_dice": 0.7, "best": True, "seconds": 3.0,
           "img_per_s": 10.0}
    tensorboard.log_epoch(tmp_path, 1, row)
    tensorboard.log_epoch(tmp_path, 1, {**row, "epoch": 3})
    writer = tensorboard._WRITERS[str(tmp_path / "fold1")]
    assert writer.log_dir == str(tmp_path / "fold1" / "tb")
    assert writer.scalars[:6] == [("step", 20, 2), ("lr", 1e-3, 2), ("train_loss", 0.5, 2), ("val_dice", 0.7, 2),
                                  ("seconds", 3.0, 2), ("img_per_s", 10.0, 2)]
    assert len(writer.scalars) == 12 and writer.flushes == 2


def test_tensorboard_event_files_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kcomp.runs import tensorboard

    for epoch, acc in ((1, 0.5), (2, 0.75)):
        tensorboard.log_epoch(tmp_path, 0, {"epoch": epoch, "lr": 0.01, "train_loss": 1.0, "val_accuracy": acc})
    events = EventAccumulator(str(tmp_path / "fold0" / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val_accuracy")] == [(1, 0.5), (2, 0.75)]
