"""A miniature Understanding Clouds download: real file names and columns, 1400x2100 JPEGs, column-major RLE.

Each class is a large region with its own colour and texture on a dark noisy "ocean" (Fish: orange stripes,
Flower: green dots, Gravel: magenta speckle, Sugar: pale yellow), one class per quadrant-sized cell at a random
place, so a small Unet from random init can learn them on a CPU in two epochs at 128 px. About half of the
(image, class) pairs are empty, as in the real data, so the empty-mask baseline is a real bar. The test truth is
returned (and written next to, not inside, the raw dir) so tests can score a submission.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("Fish", "Flower", "Gravel", "Sugar")
COLOURS = {"Fish": (40, 140, 255), "Flower": (60, 220, 60), "Gravel": (230, 40, 220), "Sugar": (170, 250, 250)}  # BGR


@dataclass
class CloudsLayout:
    raw: Path
    truth_csv: Path  # Image_Label,EncodedPixels of the test images (full size, column-major)
    truth: dict[str, str]  # Image_Label -> RLE
    size: tuple[int, int]


def _name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        name = f"{int(rng.integers(0, 16**7)):07x}.jpg"
        if name not in used:
            used.add(name)
            return name


def _texture(cls: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    img = np.empty((h, w, 3), np.uint8)
    img[:] = COLOURS[cls]
    if cls == "Fish":
        for y in range(0, h, 48):
            img[y:y + 16] = (20, 90, 200)
    elif cls == "Flower":
        for _ in range(max(1, h * w // 9000)):
            cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), 14, (255, 255, 255), -1)
    elif cls == "Gravel":
        small = rng.integers(-60, 60, (max(1, h // 16), max(1, w // 16), 1)).astype(np.int16)
        img = np.clip(img + cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)[..., None], 0, 255
                      ).astype(np.uint8)
    return img


def _image(size: tuple[int, int], present: list[str], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """BGR image and full-size uint8 masks of the classes present, each class in its own cell of a 2x2 grid."""
    import cv2

    h, w = size
    small = rng.normal(70, 12, (h // 32 + 1, w // 32 + 1, 3)).clip(0, 255).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    img[..., 0] = np.maximum(img[..., 0], 90)  # a blue-grey ocean
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    order = rng.permutation(4)
    masks = {}
    for k, cls in enumerate(present):
        r, c = cells[order[k]]
        ch, cw = h // 2, w // 2
        rh, rw = int(ch * rng.uniform(0.55, 0.9)), int(cw * rng.uniform(0.55, 0.9))
        y0 = r * ch + int(rng.integers(0, ch - rh + 1))
        x0 = c * cw + int(rng.integers(0, cw - rw + 1))
        m = np.zeros((h, w), np.uint8)
        if rng.random() < 0.5:
            m[y0:y0 + rh, x0:x0 + rw] = 1
        else:
            cv2.ellipse(m, (x0 + rw // 2, y0 + rh // 2), (rw // 2, rh // 2), 0, 0, 360, 1, -1)
        tex = _texture(cls, h, w, rng)
        img[m > 0] = tex[m > 0]
        masks[cls] = m
    return img, masks


def make_clouds_layout(root: Path, *, n_train: int = 24, n_test: int = 6, size: tuple[int, int] = (1400, 2100),
                       seed: int = 0, p_present: float = 0.5) -> CloudsLayout:
    """Write root/{train.csv, train_images/, test_images/, sample_submission.csv} and root/../<name>_truth.csv."""
    import cv2

    from kcomp.formats.rle import encode

    rng = np.random.default_rng(seed)
    raw = Path(root)
    for sub in ("train_images", "test_images"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    names = [_name(rng, used) for _ in range(n_train + n_test)]
    train, test = sorted(names[:n_train]), sorted(names[n_train:])
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for split, group in (("train", train), ("test", test)):
        for name in group:
            present = [c for c in CLASSES if rng.random() < p_present] or [CLASSES[int(rng.integers(4))]]
            img, masks = _image(size, present, rng)
            cv2.imwrite(str(raw / f"{split}_images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            for c in CLASSES:
                rows[split].append((f"{name}_{c}", encode(masks[c], order="column") if c in masks else ""))
    _csv(raw / "train.csv", rows["train"])
    _csv(raw / "sample_submission.csv", [(label, "1 1") for label, _ in rows["test"]])
    truth_csv = raw.parent / f"{raw.name}_test_truth.csv"
    _csv(truth_csv, rows["test"])
    return CloudsLayout(raw, truth_csv, dict(rows["test"]), size)


def _csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("Image_Label,EncodedPixels\n" + "".join(f"{a},{b}\n" for a, b in rows))


def mean_dice(pred: dict[str, str], truth: dict[str, str], full: tuple[int, int], at: tuple[int, int] = (350, 525)
              ) -> float:
    """Kaggle's score: mean over the truth's (image, class) pairs of Dice (empty/empty = 1), predictions given at
    `at`, truths (full size) brought to `at` by nearest-neighbour sampling."""
    from kcomp.data.seg_dataset import sample_mask
    from kcomp.formats.rle import decode
    from kcomp.metrics._segmentation import dice_empty_one

    scores = [dice_empty_one(decode(pred[k], at, "column"), sample_mask(v, full, at, "column"))
              for k, v in truth.items()]
    return float(np.mean(scores))


def empty_baseline(truth: dict[str, str]) -> float:
    """Mean Dice of an all-empty submission: the share of empty truth masks."""
    return float(np.mean([not v for v in truth.values()]))
