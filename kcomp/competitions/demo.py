"""A synthetic mini-competition in Cassava's raw format, generated on the fly: the quick start needs no download.

Each class is a shape (disc, square, triangle, cross, ring) with its own hue drawn on a noisy background, so a
small CNN from random init learns it in a few CPU epochs. Tests reuse `make_cls_layout` to build miniature
Cassava downloads at the real 800x600 size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kcomp import console
from kcomp.competitions import register_competition
from kcomp.competitions._cls_csv import prep_cls_layout, submit_argmax

CLASSES = ("disc", "square", "triangle", "cross", "ring")


def make_cls_layout(raw: Path, *, n_train: int = 300, n_test: int = 60, size: tuple[int, int] = (96, 128),
                    n_classes: int = 5, seed: int = 0, ext: str = ".jpg") -> Path:
    """Write train.csv, train_images/, test_images/, sample_submission.csv, label_num_to_disease_map.json."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("train_images", "test_images"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    lines, sample = ["image_id,label"], ["image_id,label"]
    for i in range(n_train + n_test):
        label = int(rng.integers(n_classes))
        img = (rng.normal(110, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 0)
        hue = int(180 * label / n_classes + rng.integers(-6, 7)) % 180
        colour = cv2.cvtColor(np.uint8([[[hue, 200, 230]]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
        r = int(min(h, w) * rng.uniform(0.18, 0.3))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        _draw(img, CLASSES[label % len(CLASSES)], (cx, cy), r, colour)
        name = f"{1000 + i}{ext}"
        split = "train_images" if i < n_train else "test_images"
        cv2.imwrite(str(raw / split / name), img)
        if i < n_train:
            lines.append(f"{name},{label}")
        else:
            sample.append(f"{name},0")
    (raw / "train.csv").write_text("\n".join(lines) + "\n")
    (raw / "sample_submission.csv").write_text("\n".join(sample) + "\n")
    names = {str(i): CLASSES[i % len(CLASSES)] + ("" if i < len(CLASSES) else f"_{i}") for i in range(n_classes)}
    (raw / "label_num_to_disease_map.json").write_text(json.dumps(names))
    return raw


def _draw(img: Any, shape: str, centre: tuple[int, int], r: int, colour: list[int]) -> None:
    import cv2
    import numpy as np

    cx, cy = centre
    if shape == "disc":
        cv2.circle(img, centre, r, colour, -1)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    elif shape == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], colour)
    elif shape == "cross":
        t = max(2, r // 3)
        cv2.rectangle(img, (cx - r, cy - t), (cx + r, cy + t), colour, -1)
        cv2.rectangle(img, (cx - t, cy - r), (cx + t, cy + r), colour, -1)
    else:
        cv2.circle(img, centre, r, colour, max(2, r // 3))


@register_competition("demo")
class Demo:
    """Synthetic 5-class shapes in Cassava's format, generated on the fly (RAW_DIR optional)"""

    task = "cls"
    id_column = "image_id"
    # `kcomp train` on demo data starts from random weights unless --pretrained: the quick start runs without
    # network, and a small CNN learns these shapes from scratch in a few CPU epochs
    pretrained = False

    def prep(self, raw: Path | None, out: Path, *, seed: int | None = None, size: int | None = None,
             workers: int | None = None) -> list[str]:
        if raw is None:
            raw = out / "raw"
        if not (raw / "train.csv").exists():
            console.log(f"demo: generating a synthetic competition in {raw}")
            make_cls_layout(raw, seed=int(seed or 0))
        return prep_cls_layout(raw, out, competition="demo", size=size, workers=workers)

    def submit(self, preds: list[Any], *, thresholds: dict[str, Any] | None) -> Any:
        return submit_argmax(preds)
