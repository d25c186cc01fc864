"""A miniature SIIM-FISABIO-RSNA COVID-19 download, in the real layout, for tests (reused by end-to-end tests).

    make_siim_layout(raw) -> raw, holding
        train/<study>/<series>/<image>.dcm   real DICOM files (a bundled pydicom dataset with new pixel data and UIDs)
        test/<study>/<series>/<image>.dcm
        train_image_level.csv                 id=<image>_image, boxes (Python literal, '' for none), label,
                                              StudyInstanceUID
        train_study_level.csv                 id=<study>_study + the 4 one-hot columns
        sample_submission.csv                 id,PredictionString: test studies first, then test images

Ids are 12 hex digits like Kaggle's (the folder names; the DICOM UID tags hold derived valid UIDs).

What is in it, by position. Images are numbered k = 0, 1, ... over the train images, then the test images, in
the order of the CSV / the walk of the tree (study by study; the first `n_images - n_studies` studies of a split
have two images, the rest one; the second image of an even-numbered study is in its own series, of an odd one in
the same series):
- size (height, width) = `shapes[k % len(shapes)]`: by default 300x256, 256x320, 288x288 (boxes must be rescaled
  per axis);
- encoding = `encodings[k % len(encodings)]`: by default explicit VR little endian, RLE Lossless, implicit VR little
  endian, JPEG 2000 Lossless (falls back to RLE if no JPEG 2000 encoder is installed);
- MONOCHROME1 when k % 3 == 1 (pixel values stored inverted: the decoder must invert them back);
- a VOI window (WindowCenter/WindowWidth spanning the whole stored range) when k % 5 == 3, and a modality rescale
  (RescaleIntercept -1024) when k % 5 == 4: both are linear over the data, so the decoded picture is unchanged.
Study classes cycle over the train studies: study s is STUDY_COLUMNS[s % 4] (negative, typical, indeterminate,
atypical). Images of negative studies have no boxes (`none 1 0 0 1 1`); images of the other studies have 1-2 boxes
each, except that an image has none with probability `p_none`. Every box is drawn as a bright soft blob (+~1500 on a
12-bit scale) filling the box inside a dark lung field, so "bright blob where the box is" is learnable and survives
decoding (checkable after MONOCHROME1 inversion). Test images are drawn the same way (their boxes are not written).

Everything is deterministic in `seed`. Keep this signature stable: other tests build on it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STUDY_COLUMNS = ["Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance"]
SHAPES: tuple[tuple[int, int], ...] = ((300, 256), (256, 320), (288, 288))
ENCODINGS = ("explicit", "rle", "implicit", "jpeg2000")
TEMPLATE = "CT_small.dcm"  # bundled with pydicom: its header (patient, equipment...) is reused, pixels replaced
MAX_VALUE = 4095  # BitsStored 12, as many radiographs


def make_siim_layout(raw: Path, *, n_studies: int = 16, n_images: int = 24, n_test_studies: int = 4,
                     n_test_images: int = 6, shapes: Sequence[tuple[int, int]] = SHAPES,
                     encodings: Sequence[str] = ENCODINGS, p_none: float = 0.2, seed: int = 0) -> Path:
    """Write a SIIM-shaped raw dir under `raw` (see the module docstring for which image has which property)."""
    if n_images < n_studies or n_test_images < n_test_studies:
        raise ValueError("every study needs at least one image")
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    image_rows, study_rows, sample_rows, k = [], [], [], 0
    for split, n_st, n_im in (("train", n_studies, n_images), ("test", n_test_studies, n_test_images)):
        sample_images = []
        for s in range(n_st):
            study, series = _hex(rng, used), _hex(rng, used)
            cls = s % 4 if split == "train" else int(rng.integers(0, 4))
            n_here = 2 if s < n_im - n_st else 1
            for j in range(n_here):
                if j == 1 and s % 2 == 0:
                    series = _hex(rng, used)
                image = _hex(rng, used)
                h, w = shapes[k % len(shapes)]
                n_boxes = 0 if cls == 0 or rng.random() < p_none else int(rng.integers(1, 3))
                boxes = _boxes(h, w, n_boxes, rng)
                pixels = chest_image(h, w, boxes, rng)
                write_dicom(raw / split / study / series / f"{image}.dcm", pixels, k=k,
                            encoding=encodings[k % len(encodings)], uids=(study, series, image))
                k += 1
                if split == "train":
                    image_rows.append({"id": f"{image}_image", "boxes": _boxes_cell(boxes),
                                       "label": _label_cell(boxes), "StudyInstanceUID": study})
                else:
                    sample_images.append(image)
            if split == "train":
                study_rows.append({"id": f"{study}_study", **{c: int(i == cls) for i, c in enumerate(STUDY_COLUMNS)}})
            else:
                sample_rows.append({"id": f"{study}_study", "PredictionString": "negative 1 0 0 1 1"})
        sample_rows += [{"id": f"{i}_image", "PredictionString": "none 1 0 0 1 1"} for i in sample_images]
    _write_csv(raw / "train_image_level.csv", ["id", "boxes", "label", "StudyInstanceUID"], image_rows)
    _write_csv(raw / "train_study_level.csv", ["id", *STUDY_COLUMNS], study_rows)
    _write_csv(raw / "sample_submission.csv", ["id", "PredictionString"], sample_rows)
    return raw


def _hex(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        value = rng.bytes(6).hex()
        if value not in used:
            used.add(value)
            return value


def _boxes(h: int, w: int, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """1-2 boxes, each inside one lung field (left / right third of the chest)."""
    out = []
    for side in rng.permutation(2)[:n]:
        bw, bh = w * rng.uniform(0.14, 0.22), h * rng.uniform(0.18, 0.30)
        cx = w * (0.32 if side == 0 else 0.68) + rng.uniform(-0.04, 0.04) * w
        cy = h * rng.uniform(0.40, 0.60)
        out.append({"x": round(float(cx - bw / 2), 5), "y": round(float(cy - bh / 2), 5),
                    "width": round(float(bw), 5), "height": round(float(bh), 5)})
    return out


def chest_image(h: int, w: int, boxes: list[dict[str, float]], rng: np.random.Generator) -> np.ndarray:
    """HxW uint16 (0..4095), larger = brighter: body, dark lungs, bright spine, a bright blob filling each box."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 300.0, np.float32)
    body = ((yy - 0.55 * h) / (0.55 * h)) ** 2 + ((xx - 0.5 * w) / (0.46 * w)) ** 2 < 1
    img[body] = 2000.0
    for cx in (0.32, 0.68):
        lung = ((yy - 0.48 * h) / (0.32 * h)) ** 2 + ((xx - cx * w) / (0.15 * w)) ** 2 < 1
        img[lung] = 900.0
    img[np.abs(xx - 0.5 * w) < 0.04 * w] = 2600.0
    for b in boxes:
        cx, cy = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
        sx, sy = b["width"] / 2.5, b["height"] / 2.5
        img += 1500.0 * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
    img += rng.normal(0, 60, (h, w))
    return np.clip(img, 0, MAX_VALUE).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray, *, k: int, encoding: str, uids: tuple[str, str, str]) -> Path:
    """A bundled pydicom dataset with `pixels` (larger = brighter) as its image; see the module docstring for k."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_encoder
    from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless,
                             generate_uid)

    ds = pydicom.dcmread(get_testdata_file(TEMPLATE))
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in ds:
            delattr(ds, keyword)
    study, series, image = uids
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[study])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, series])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[study, series, image])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    mono1 = k % 3 == 1
    stored = (MAX_VALUE - pixels).astype(np.uint16) if mono1 else pixels
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME1" if mono1 else "MONOCHROME2", bits_stored=12,
                      generate_instance_uid=False)
    if k % 5 == 3:
        ds.WindowCenter, ds.WindowWidth = MAX_VALUE / 2, MAX_VALUE + 1
    elif k % 5 == 4:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "US"
    if encoding == "jpeg2000" and not get_encoder(JPEG2000Lossless).is_available:
        encoding = "rle"
    if encoding == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    elif encoding == "jpeg2000":
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    elif encoding == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif encoding != "explicit":
        raise ValueError(f"unknown encoding {encoding!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _boxes_cell(boxes: list[dict[str, float]]) -> str:
    return repr(boxes) if boxes else ""


def _label_cell(boxes: list[dict[str, float]]) -> str:
    if not boxes:
        return "none 1 0 0 1 1"
    return " ".join(f"opacity 1 {b['x']} {b['y']} {round(b['x'] + b['width'], 5)} {round(b['y'] + b['height'], 5)}"
                    for b in boxes)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
