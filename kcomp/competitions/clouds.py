"""Understanding Clouds from Satellite Images (https://www.kaggle.com/competitions/understanding_cloud_organization).

Raw layout:
    train.csv               Image_Label,EncodedPixels; Image_Label = <image>.jpg_<Class>, 4 rows per image
    train_images/*.jpg      1400x2100 RGB
    test_images/*.jpg
    sample_submission.csv   Image_Label,EncodedPixels (4 rows per test image)
Classes Fish, Flower, Gravel, Sugar. RLE: `start length` pairs, 1-indexed, pixels numbered column-major (top to
bottom, then left to right), "" for an empty mask. Metric: mean Dice over (image, class) pairs, empty/empty = 1.
Submission masks are 350x525 (a quarter of the images' sides).

The index has one row per image with the four RLE strings as given (`mask_<Class>`; decoded lazily at the size a
model needs) and `labels`, the 0/1 vector of non-empty classes that `split` stratifies on. Every RLE is checked at
prep by parsing its numbers (pairs, sorted, disjoint, inside the image) without decoding it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp import console
from kcomp.artifacts._input import directory
from kcomp.competitions import register_competition
from kcomp.errors import BadInput, BadUsage

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from kcomp.artifacts.predictions import Predictions

COMPETITION = "clouds"
TASK = "seg"
CLASSES = ["Fish", "Flower", "Gravel", "Sugar"]
SUBMIT_SIZE = (350, 525)
RLE_ORDER = "column"
ID_COLUMN = "Image_Label"
RLE_COLUMN = "EncodedPixels"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def split_label(label: str, where: str) -> tuple[str, str]:
    """'0011165.jpg_Fish' -> ('0011165.jpg', 'Fish'); unknown classes name the value and where it is."""
    image, sep, cls = str(label).rpartition("_")
    if not sep or not image:
        raise BadInput(f"{where}: Image_Label {label!r} is not <image>_<Class>")
    if cls not in CLASSES:
        raise BadInput(f"{where}: unknown class {cls!r} in Image_Label {label!r}; expected one of "
                       f"{', '.join(CLASSES)}")
    return image, cls


def read_train_csv(path: Path) -> dict[str, dict[str, tuple[str, int]]]:
    """image -> class -> (RLE, CSV line number), in the file's image order; each image must have its 4 rows."""
    from kcomp.artifacts.submission import read_csv

    df = read_csv(path, [ID_COLUMN, RLE_COLUMN])
    if len(df) == 0:
        raise BadInput("has no rows", path=path)
    images: dict[str, dict[str, tuple[str, int]]] = {}
    for n, (label, rle) in enumerate(zip(df[ID_COLUMN], df[RLE_COLUMN], strict=True), start=2):
        image, cls = split_label(label, f"{path}: line {n}")
        per = images.setdefault(image, {})
        if cls in per:
            raise BadInput(f"line {n}: duplicate Image_Label {label!r} (first on line {per[cls][1]})", path=path)
        per[cls] = (str(rle).strip(), n)
    for image, per in images.items():
        missing = [c for c in CLASSES if c not in per]
        if missing:
            raise BadInput(f"image {image!r} has no row for class {', '.join(missing)} (every image needs the "
                           f"{len(CLASSES)} rows {', '.join(f'{image}_{c}' for c in CLASSES)})", path=path)
    return images


def _sizes(raw: Path, paths: list[str], workers: int) -> list[tuple[int, int]]:
    from concurrent.futures import ThreadPoolExecutor

    from kcomp.data.images import image_size

    out = []
    with console.progress(len(paths), "reading image headers") as bar, ThreadPoolExecutor(workers) as pool:
        for hw in pool.map(image_size, [raw / p for p in paths]):
            out.append(hw)
            bar.advance()
    return out


def prep_clouds(raw: Path | None, out: Path, *, size: int | None = None, workers: int | None = None) -> list[str]:
    """Validate train.csv against the images (classes, 4 rows each, files, RLE runs inside each image), then
    write `out/index.parquet` with train rows in train.csv order and test rows sorted by name."""
    import pandas as pd

    from kcomp.artifacts.index import write_index
    from kcomp.data.image_cache import add_image_cache
    from kcomp.formats.rle import check as check_rle

    if raw is None:
        raise BadUsage(f"prep {COMPETITION} needs RAW_DIR (the unpacked competition download)")
    raw = Path(raw)
    directory(raw, "raw directory")
    csv = raw / "train.csv"
    images = read_train_csv(csv)
    for image, per in images.items():
        if not (raw / "train_images" / image).is_file():
            line = min(n for _, n in per.values())
            raise BadInput(f"line {line}: image {image} not found in train_images/", path=csv)
    test_dir = raw / "test_images"
    test_ids = sorted(p.name for p in test_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if test_dir.is_dir() else []
    train_ids = list(images)
    paths = [f"train_images/{i}" for i in train_ids] + [f"test_images/{i}" for i in test_ids]
    sizes = _sizes(raw, paths, 8)
    rows: list[dict[str, Any]] = []
    with console.progress(len(train_ids), "checking masks", unit="img") as bar:
        for image, (h, w) in zip(train_ids, sizes, strict=False):
            row: dict[str, Any] = {"id": image, "path": f"train_images/{image}", "split": "train", "height": h,
                                   "width": w}
            for cls in CLASSES:
                rle, n = images[image][cls]
                try:
                    check_rle(rle, (h, w), where=f"line {n} ({image}_{cls}, image {h}x{w})")
                except BadInput as e:
                    raise BadInput(str(e), path=csv) from None
                row[f"mask_{cls}"] = rle
            row["labels"] = [int(bool(row[f"mask_{c}"])) for c in CLASSES]
            rows.append(row)
            bar.advance()
    for image, (h, w) in zip(test_ids, sizes[len(train_ids):], strict=True):
        rows.append({"id": image, "path": f"test_images/{image}", "split": "test", "height": h, "width": w,
                     **{f"mask_{c}": "" for c in CLASSES}, "labels": [0] * len(CLASSES)})
    df = pd.DataFrame(rows)
    for c in ("height", "width"):
        df[c] = df[c].astype("int64")
    out.mkdir(parents=True, exist_ok=True)
    cache = add_image_cache(df, raw, out, size, workers)
    path = write_index(df, out / "index.parquet", root=raw, competition=COMPETITION, task=TASK, classes=CLASSES,
                       rle_order=RLE_ORDER, submit_size=list(SUBMIT_SIZE), **cache)
    present = df[df["split"] == "train"]["labels"].apply(sum).sum()
    console.log(f"{COMPETITION}: {len(train_ids)} train, {len(test_ids)} test images; {present} of "
                f"{len(train_ids) * len(CLASSES)} train masks non-empty")
    return [path]


# ---------------------------------------------------------------------------------------------------- submit


def class_settings(thresholds: dict[str, Any] | None, size: tuple[int, int] = SUBMIT_SIZE
                   ) -> dict[str, tuple[float, int, float]]:
    """class -> (threshold, min_size, top) from THRESHOLDS.json (`classes.<name>`), defaults 0.5/0/0. Min sizes
    tuned on maps of another size (the file's `size`) are scaled by the area ratio to `size`."""
    from kcomp.post.tuned import seg_settings

    return seg_settings(thresholds, CLASSES, size)


def resize_maps(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) uint8 maps -> (C, *size), bilinear per class."""
    import cv2
    import numpy as np

    if m.shape[1:] == tuple(size):
        return m
    return np.stack([cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for c in m])


def submit_clouds(preds: list[Predictions], *, thresholds: dict[str, Any] | None) -> pd.DataFrame:
    """Each test image's maps at 350x525, thresholded, small masks removed, emptied under `top`, RLE column-major:
    rows `<image>_<Class>`, `EncodedPixels`."""
    import numpy as np
    import pandas as pd

    from kcomp.formats.rle import encode
    from kcomp.post.seg_threshold import postprocess
    from kcomp.artifacts.predictions import one_test_file

    p = one_test_file(preds, TASK)
    if sorted(p.classes) != sorted(CLASSES):
        raise BadInput(f"predicts classes {p.classes}; Clouds needs {', '.join(CLASSES)}", path=p.source)
    channel = {c: p.classes.index(c) for c in CLASSES}
    settings = class_settings(thresholds)
    labels, rles = [], []
    with p.maps() as maps, console.progress(len(p.df), "encoding masks", unit="img") as bar:
        for i, key in zip(p.df["id"].astype(str), p.df["map_key"].astype(str), strict=True):
            if key not in maps.files:
                raise BadInput(f"its maps file has no map {key!r} (for id {i!r})", path=p.source)
            m = maps[key]
            if m.ndim != 3 or m.shape[0] != len(p.classes) or m.dtype != np.uint8:
                raise BadInput(f"map of {i!r} has shape {m.shape} ({m.dtype}); expected ({len(p.classes)}, height, "
                               f"width) uint8", path=p.source)
            m = resize_maps(m, SUBMIT_SIZE)
            for c in CLASSES:
                thr, min_size, top = settings[c]
                labels.append(f"{i}_{c}")
                rles.append(encode(postprocess(m[channel[c]], thr, min_size, top), order=RLE_ORDER))
            bar.advance()
    return pd.DataFrame({ID_COLUMN: labels, RLE_COLUMN: rles})


@register_competition(COMPETITION)
class Clouds:
    """Understanding Clouds (seg, mean Dice): train.csv RLE + train_images/ -> Image_Label,EncodedPixels at 350x525"""

    task = TASK
    id_column = ID_COLUMN
    kaggle_slug = "understanding_cloud_organization"  # /kaggle/input/<slug> in a notebook (`kcomp pack`)

    def prep(self, raw: Path | None, out: Path, *, size: int | None = None, workers: int | None = None) -> list[str]:
        return prep_clouds(raw, Path(out), size=size, workers=workers)

    def submit(self, preds: list[Any], *, thresholds: dict[str, Any] | None) -> Any:
        return submit_clouds(preds, thresholds=thresholds)
