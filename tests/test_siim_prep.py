"""`kcomp prep siim-covid19`: the miniature download (tests/siim_fixture.py) -> cached PNGs + index, checked against
the CSVs and DICOM headers; resuming, --skip-bad, and the CSV/tree inconsistencies a user can hit."""

from __future__ import annotations

import ast
import csv
import shutil
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from kcomp.artifacts.index import read_index
from kcomp.competitions import get_competition, list_competitions
from kcomp.competitions.siim import INDEX_COLUMNS, STUDY_CLASSES, cached_png, prep_siim
from kcomp.errors import BadInput, BadUsage
from tests.conftest import run_cli
from tests.siim_fixture import STUDY_COLUMNS, make_siim_layout


@pytest.fixture(scope="module")
def siim_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_siim_layout(tmp_path_factory.mktemp("siim") / "raw", seed=5)


@pytest.fixture(scope="module")
def siim_data(siim_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("siim_data") / "data"
    r = run_cli("prep", "siim-covid19", siim_raw, "-o", out, "--workers", "2")
    assert r.code == 0, r.stderr
    assert r.stdout == f"{out / 'index.parquet'}\n"
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns or list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _dcm(raw: Path, image: str) -> Path:
    (path,) = raw.glob(f"*/*/*/{image}.dcm")
    return path


def _copy(raw: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(raw, tmp / "raw"))


def _small(tmp: Path) -> Path:
    return make_siim_layout(tmp / "raw", n_studies=3, n_images=4, n_test_studies=1, n_test_images=1, seed=2)


# -------------------------------------------------------------------------------------------------- the index


def test_registered():
    assert "siim-covid19" in list_competitions()
    comp = get_competition("siim-covid19")
    assert (comp.task, comp.id_column) == ("det", "id")


def test_index_columns_types_and_metadata(siim_data: Path, siim_raw: Path):
    t = read_index(siim_data / "index.parquet")
    df = t.df
    assert list(df.columns) == INDEX_COLUMNS
    assert (t.competition, t.task, t.classes) == ("siim-covid19", "det", ["opacity"])
    assert (t.meta["size"], t.meta["bits"], t.meta["raw"]) == (512, 8, str(siim_raw.resolve()))
    assert t.meta["study_classes"] == STUDY_CLASSES
    assert t.root == siim_data.resolve()
    assert list(df["split"]) == ["train"] * 24 + ["test"] * 6
    assert df["id"].is_unique and (df["group"] == df["study_id"]).all()
    assert df["study_id"][df["split"] == "train"].nunique() == 16
    assert df["study_id"][df["split"] == "test"].nunique() == 4
    assert str(df["height"].dtype) == "int64" and str(df["width"].dtype) == "int64"
    assert str(df["has_opacity"].dtype) == "Int64"
    train, test = t.rows("train"), t.rows("test")
    assert set(train["has_opacity"].astype(int)) == {0, 1}
    assert test["has_opacity"].isna().all() and test["study"].isna().all()
    assert all(len(b) == 0 for b in test["boxes"])
    assert set(train["study"]) == set(STUDY_CLASSES)
    for row in df.itertuples():
        assert row.path == f"images/{row.id}.png" and t.file(row.path).is_file()
        assert row.dicom == f"{row.split}/{row.study_id}/{row.series_id}/{row.id}.dcm"
        assert (siim_raw / row.dicom).is_file()


def test_sizes_boxes_and_study_labels_match_the_raw_files(siim_data: Path, siim_raw: Path):
    df = read_index(siim_data / "index.parquet").df.set_index("id")
    images = {r["id"].removesuffix("_image"): r for r in _rows(siim_raw / "train_image_level.csv")}
    studies = {r["id"].removesuffix("_study"): r for r in _rows(siim_raw / "train_study_level.csv")}
    assert set(images) == set(df.index[df["split"] == "train"])
    for image, row in df.iterrows():
        ds = pydicom.dcmread(siim_raw / row["dicom"], stop_before_pixels=True)
        assert (row["height"], row["width"]) == (ds.Rows, ds.Columns)
        if row["split"] == "test":
            continue
        want = ast.literal_eval(images[image]["boxes"]) if images[image]["boxes"] else []
        got = [dict(b) for b in row["boxes"]]
        assert got == [{"x1": b["x"], "y1": b["y"], "x2": b["x"] + b["width"], "y2": b["y"] + b["height"],
                        "label": "opacity"} for b in want]
        assert row["has_opacity"] == int(bool(want))
        assert (images[image]["label"] == "none 1 0 0 1 1") == (not want)
        one_hot = [int(studies[row["study_id"]][c]) for c in STUDY_COLUMNS]
        assert row["study"] == STUDY_CLASSES[one_hot.index(1)]
    # the fixture's sizes cycle 300x256, 256x320, 288x288: the index keeps each original size
    assert {(h, w) for h, w in zip(df["height"], df["width"])} == {(300, 256), (256, 320), (288, 288)}


def test_cached_pngs_are_square_and_monochrome1_stays_bright_where_the_box_is(siim_data: Path, siim_raw: Path):
    t = read_index(siim_data / "index.parquet")
    seen = {"MONOCHROME1": 0, "MONOCHROME2": 0}
    for row in t.rows("train").itertuples():
        png = cv2.imread(str(t.file(row.path)), cv2.IMREAD_UNCHANGED)
        assert png.shape == (512, 512) and png.dtype == np.uint8
        if not len(row.boxes):
            continue
        photometric = pydicom.dcmread(siim_raw / row.dicom, stop_before_pixels=True).PhotometricInterpretation
        seen[photometric] += 1
        sx, sy = 512 / row.width, 512 / row.height  # per axis: the PNG is stretched to a square
        for b in row.boxes:
            cx, cy = (b["x1"] + b["x2"]) / 2 * sx, (b["y1"] + b["y2"]) / 2 * sy
            blob = png[int(cy) - 3:int(cy) + 4, int(cx) - 3:int(cx) + 4].mean()
            assert blob > 150, (row.id, photometric, blob)
        assert png[:12, :12].mean() < 60, (row.id, photometric)  # the background outside the body stays dark
    assert seen["MONOCHROME1"] >= 2 and seen["MONOCHROME2"] >= 2


def test_bits_16_and_size_in_process(tmp_path: Path):
    raw = _small(tmp_path)
    written = prep_siim(raw, tmp_path / "data16", size=64, bits=16, workers=0)
    t = read_index(written[0])
    assert (t.meta["size"], t.meta["bits"]) == (64, 16)
    for p in t.df["path"]:
        png = cv2.imread(str(t.file(p)), cv2.IMREAD_UNCHANGED)
        assert png.shape == (64, 64) and png.dtype == np.uint16 and png.max() > 40000
        assert cached_png(t.file(p), 64, 16) and not cached_png(t.file(p), 64, 8)


# ------------------------------------------------------------------------------------------------- resuming


def _stamps(images: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(images.glob("*.png"))}


def test_second_run_reuses_the_cache_and_a_size_change_redecodes(tmp_path: Path):
    raw = _small(tmp_path)
    out = tmp_path / "data"
    assert run_cli("prep", "siim-covid19", raw, "-o", out, "--size", "96", "--workers", "2").code == 0
    first = _stamps(out / "images")
    index_bytes = (out / "index.parquet").read_bytes()
    assert len(first) == 5

    gone = sorted(first)[:2]
    for name in gone:
        (out / "images" / name).unlink()
    (out / "images" / sorted(first)[2]).write_bytes(b"\x89PNG\r\n")  # a damaged cache entry is redone too
    r = run_cli("prep", "siim-covid19", raw, "-o", out, "--size", "96", "--workers", "2")
    assert r.code == 0, r.stderr
    second = _stamps(out / "images")
    redone = {n for n in second if second[n] != first[n]}
    assert redone == {*gone, sorted(first)[2]}
    assert (out / "index.parquet").read_bytes() == index_bytes

    assert run_cli("prep", "siim-covid19", raw, "-o", out, "--size", "64", "--workers", "0").code == 0
    third = _stamps(out / "images")
    assert all(third[n] != second[n] for n in third)
    assert all(cached_png(out / "images" / n, 64, 8) for n in third)
    assert not list((out / "images").glob(".*.tmp"))


# -------------------------------------------------------------------------------------------------- bad files


def test_truncated_dicom_fails_before_writing_and_skip_bad_leaves_it_out(tmp_path: Path):
    raw = _small(tmp_path)
    image = _rows(raw / "train_image_level.csv")[0]["id"].removesuffix("_image")  # k=0: uncompressed
    bad = _dcm(raw, image)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 2000])
    out = tmp_path / "data"
    r = run_cli("prep", "siim-covid19", raw, "-o", out)
    assert r.code == 2
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"kcomp: error: 1 unreadable DICOM file(s) found before decoding (--skip-bad leaves "
                           f"them out): {bad}: truncated pixel data: ")
    assert line.endswith(f" of {300 * 256 * 2} bytes")  # k=0 is 300x256, 16-bit
    assert str(bad) in r.stderr and r.stdout == ""
    assert not out.exists(), "nothing written when a header check fails"

    r = run_cli("prep", "siim-covid19", raw, "-o", out, "--skip-bad")
    assert r.code == 0, r.stderr
    df = read_index(out / "index.parquet").df
    assert image not in set(df["id"]) and len(df) == 4


def test_decode_failure_keeps_the_cache_and_lists_every_bad_file(tmp_path: Path):
    """A corrupt compressed stream passes the header check and fails while decoding: the other PNGs stay."""
    from pydicom.encaps import encapsulate, generate_frames

    raw = _small(tmp_path)
    ids = [r["id"].removesuffix("_image") for r in _rows(raw / "train_image_level.csv")]
    rle = _dcm(raw, ids[1])  # k=1: RLE Lossless
    ds = pydicom.dcmread(rle)
    assert ds.file_meta.TransferSyntaxUID.name == "RLE Lossless"
    frame = bytearray(next(generate_frames(ds.PixelData)))
    frame[0] = 9
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(rle)
    text = _dcm(raw, ids[2])
    text.write_text("not a DICOM\n")
    out = tmp_path / "data"

    r = run_cli("prep", "siim-covid19", raw, "-o", out, "--workers", "2")
    assert r.code == 2 and len(r.stderr.splitlines()) == 1
    assert f"1 unreadable DICOM file(s) found before decoding (--skip-bad leaves them out): {text}: not a DICOM" \
        in r.stderr

    r = run_cli("prep", "siim-covid19", raw, "-o", out, "--workers", "2", "--skip-bad")
    assert r.code == 0, r.stderr
    df = read_index(out / "index.parquet").df
    assert set(df["id"]) == set(ids[:1] + ids[3:]) | {p.stem for p in raw.glob("test/*/*/*.dcm")}

    text.unlink()
    shutil.copy(_dcm(raw, ids[0]), text)  # a readable file again: only the RLE one is left bad
    (out / "index.parquet").unlink()
    r = run_cli("prep", "siim-covid19", raw, "-o", out, "--workers", "2")
    assert r.code == 2
    assert r.stderr.splitlines() == [
        f"kcomp: error: 1 unreadable DICOM file(s) while decoding; the other images stay cached (--skip-bad leaves "
        f"them out): {rle}: cannot decode pixel data (RLE Lossless, corrupt?): RuntimeError: Unable to decode as "
        "exceptions were raised by all available plugins:"]
    assert not (out / "index.parquet").exists()
    assert (out / "images" / f"{ids[2]}.png").is_file()


def test_many_bad_files_are_counted_and_the_first_few_named(tmp_path: Path):
    raw = _small(tmp_path)
    bad = sorted(raw.glob("*/*/*/*.dcm"))
    for p in bad:
        p.write_text("text\n")
    with pytest.raises(BadInput) as e:
        prep_siim(raw, tmp_path / "data", workers=0)
    msg = str(e.value)
    assert msg.startswith("5 unreadable DICOM file(s) found before decoding")
    assert msg.endswith("; and 2 more") and msg.count("not a DICOM file") == 3
    with pytest.raises(BadInput, match="no readable train image left to index"):
        prep_siim(raw, tmp_path / "data", workers=0, skip_bad=True)


# ------------------------------------------------------------------------------------------ CSV / tree checks


def _edit(raw: Path, name: str, fn) -> None:
    rows = _rows(raw / name)
    columns = list(rows[0])
    rows = fn(rows)
    _write_rows(raw / name, rows, columns)


def _prep_error(raw: Path, tmp: Path) -> str:
    with pytest.raises(BadInput) as e:
        prep_siim(raw, tmp / "data", workers=0)
    assert not (tmp / "data").exists()
    return str(e.value)


def test_study_with_two_or_no_classes(tmp_path: Path):
    raw = _small(tmp_path)
    sid = _rows(raw / "train_study_level.csv")[0]["id"]
    _edit(raw, "train_study_level.csv", lambda rows: [{**rows[0], "Atypical Appearance": "1"}, *rows[1:]])
    assert _prep_error(raw, tmp_path) == (f"{raw / 'train_study_level.csv'}: id {sid!r} has 2 classes marked "
                                          f"(Negative for Pneumonia, Atypical Appearance); expected exactly one")
    _edit(raw, "train_study_level.csv", lambda rows: [{**rows[0], **dict.fromkeys(STUDY_COLUMNS, "0")}, *rows[1:]])
    assert "has 0 classes marked (none)" in _prep_error(raw, tmp_path)
    _edit(raw, "train_study_level.csv", lambda rows: [{**rows[0], "Typical Appearance": "yes"}, *rows[1:]])
    assert "column 'Typical Appearance' has value 'yes'; expected 0 or 1" in _prep_error(raw, tmp_path)


def test_image_rows_that_do_not_match_the_tree(tmp_path: Path):
    raw = _small(tmp_path)
    csv_path = raw / "train_image_level.csv"
    rows = _rows(csv_path)
    _write_rows(csv_path, [*rows, {**rows[0], "id": "0123456789ab_image"}])
    assert _prep_error(raw, tmp_path) == (f"{csv_path}: id '0123456789ab_image' has no DICOM file "
                                          f"train/{rows[0]['StudyInstanceUID']}/*/0123456789ab.dcm")
    _write_rows(csv_path, [{**rows[0], "StudyInstanceUID": "ffffffffffff"}, *rows[1:]])
    assert "StudyInstanceUID 'ffffffffffff' but the file is train/" in _prep_error(raw, tmp_path)
    _write_rows(csv_path, [{**rows[0], "id": rows[0]["id"].removesuffix("_image")}, *rows[1:]])
    assert f"id {rows[0]['id'].removesuffix('_image')!r} should be <uid>_image" in _prep_error(raw, tmp_path)
    _write_rows(csv_path, [{**rows[0], "boxes": "[{'x': 1, 'y': 2}]"}, *rows[1:]])
    assert f"{csv_path}: id {rows[0]['id']!r}: boxes item 1 must be a dict with keys x, y, width, height" \
        in _prep_error(raw, tmp_path)
    _write_rows(csv_path, [{**rows[0], "boxes": "__import__('os').system('true')"}, *rows[1:]])
    assert "boxes is not a list of" in _prep_error(raw, tmp_path)
    _write_rows(csv_path, rows[1:])
    image = rows[0]["id"].removesuffix("_image")
    assert _prep_error(raw, tmp_path) == f"{_dcm(raw, image)}: train image has no row {image}_image in " \
                                         "train_image_level.csv"
    _write_rows(csv_path, [{k: v for k, v in r.items() if k != "label"} for r in rows], ["id", "boxes",
                                                                                          "StudyInstanceUID"])
    assert _prep_error(raw, tmp_path).startswith(f"{csv_path}: missing column(s) label")


def test_tree_problems(tmp_path: Path):
    raw = _small(tmp_path)
    (raw / "train_study_level.csv").unlink()
    assert _prep_error(raw, tmp_path) == f"{raw / 'train_study_level.csv'}: no such file"
    raw2 = make_siim_layout(tmp_path / "raw2", n_studies=2, n_images=2, n_test_studies=1, n_test_images=1)
    stray = next(raw2.glob("train/*/*/*.dcm"))
    shutil.copy(stray, raw2 / "train" / stray.parent.parent.name / "loose.dcm")
    assert "expected train/<StudyInstanceUID>/<SeriesInstanceUID>/<image_id>.dcm" in _prep_error(raw2, tmp_path)
    (raw2 / "train" / stray.parent.parent.name / "loose.dcm").unlink()
    test_file = next(raw2.glob("test/*/*/*.dcm"))
    shutil.copy(stray, test_file.parent / stray.name)
    assert f"image id {stray.stem!r} also at" in _prep_error(raw2, tmp_path)
    with pytest.raises(BadInput, match="raw directory not found"):
        prep_siim(tmp_path / "nowhere", tmp_path / "data")
    with pytest.raises(BadInput, match="no DICOM files found"):
        prep_siim(tmp_path, tmp_path / "data")


@pytest.mark.parametrize(("options", "message"), [
    ({"bits": 12}, "--bits 12: expected 8 or 16"),
    ({"size": 0}, "--size 0: must be at least 16"),  # prep's own rule, kcomp.options.COMMANDS["prep"]
    ({"workers": -1}, "--workers -1: must be at least 0"),
])
def test_bad_options(tmp_path: Path, options: dict, message: str):
    with pytest.raises(BadUsage, match=message):
        prep_siim(tmp_path, tmp_path / "data", **options)
    with pytest.raises(BadUsage, match="needs RAW_DIR"):
        prep_siim(None, tmp_path / "data")


# ------------------------------------------------------------------------------------------------------ submit


def test_submit_forwards_to_siim_submit(monkeypatch: pytest.MonkeyPatch):
    calls = []
    fake = ModuleType("kcomp.competitions.siim_submit")
    fake.submit_siim = lambda preds, **kw: calls.append((preds, kw)) or pd.DataFrame({"id": []})
    monkeypatch.setitem(sys.modules, "kcomp.competitions.siim_submit", fake)
    comp = get_competition("siim-covid19")
    comp.submit(["p"], thresholds={"t": 1})
    comp.submit(["q"], thresholds=None, sample="s.csv")
    assert calls == [(["p"], {"thresholds": {"t": 1}}), (["q"], {"thresholds": None, "sample": "s.csv"})]


# ----------------------------------------------------------------------------------------------------- fixture


def test_fixture_is_deterministic_and_has_the_documented_mix(tmp_path: Path):
    a = make_siim_layout(tmp_path / "a", n_studies=4, n_images=6, n_test_studies=1, n_test_images=2, seed=7)
    b = make_siim_layout(tmp_path / "b", n_studies=4, n_images=6, n_test_studies=1, n_test_images=2, seed=7)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert len([f for f in files_a if f.suffix == ".dcm"]) == 8
    ids = [r["id"].removesuffix("_image") for r in _rows(a / "train_image_level.csv")]
    ids += [r["id"].removesuffix("_image") for r in _rows(a / "sample_submission.csv") if r["id"].endswith("_image")]
    kinds = []
    for k, image in enumerate(ids):  # k as in the fixture's docstring
        ds = pydicom.dcmread(_dcm(a, image))
        kinds.append((ds.file_meta.TransferSyntaxUID.name, ds.PhotometricInterpretation))
        assert (ds.Rows, ds.Columns) == [(300, 256), (256, 320), (288, 288)][k % 3]
        assert ds.PhotometricInterpretation == ("MONOCHROME1" if k % 3 == 1 else "MONOCHROME2")
    assert [t for t, _ in kinds[:4]] == ["Explicit VR Little Endian", "RLE Lossless", "Implicit VR Little Endian",
                                         "JPEG 2000 Image Compression (Lossless Only)"]
