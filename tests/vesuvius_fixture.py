"""A miniature Vesuvius Ink Detection download, in the real layout, for tests (reused by end-to-end tests).

    make_vesuvius_layout(raw) -> raw, holding
        train/<name>/surface_volume/00.tif … NN.tif   uint16 HxW layers (two-digit names, as the real 00..64)
        train/<name>/mask.png                          papyrus: an irregular blob, 255 inside, 0 outside
        train/<name>/inklabels.png                     ink strokes and blobs (255) inside the mask
        train/<name>/ir.png                            infrared stand-in (kcomp ignores it)
        test/<name>/surface_volume/*.tif, mask.png
        sample_submission.csv                          Id,Predicted with the test fragment names

The ink is learnable: in the middle third of the layers ink pixels are brighter than bare papyrus (peaking at the
middle layer) with a fine striped texture, while the outer layers show no ink at all. The test fragments have ink
rendered the same way (no labels written). Everything is deterministic in `seed`.

Keep this signature stable: other tests build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

TRAIN_FRAGMENTS: Mapping[str, tuple[int, int]] = {"1": (96, 80), "2": (128, 96)}
TEST_FRAGMENTS: Mapping[str, tuple[int, int]] = {"a": (64, 72)}


def make_vesuvius_layout(raw: Path, *, fragments: Mapping[str, tuple[int, int]] = TRAIN_FRAGMENTS,
                         test: Mapping[str, tuple[int, int]] = TEST_FRAGMENTS, n_layers: int = 16,
                         seed: int = 0) -> Path:
    """Write a Vesuvius-shaped raw dir under `raw`: `fragments` / `test` map fragment name -> (height, width)."""
    raw = Path(raw)
    rng = np.random.default_rng(seed)
    for split, frags in (("train", fragments), ("test", test)):
        for name, (h, w) in frags.items():
            write_fragment(raw / split / str(name), (h, w), n_layers=n_layers, rng=rng, labels=split == "train")
    lines = ["Id,Predicted"] + [f"{name},1 1" for name in test]
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "sample_submission.csv").write_text("\n".join(lines) + "\n")
    return raw


def write_fragment(frag: Path, shape: tuple[int, int], *, n_layers: int, rng: np.random.Generator,
                   labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One fragment directory; returns (mask, ink) as bool HxW arrays."""
    import cv2
    import tifffile

    h, w = shape
    mask = papyrus_mask(shape, rng)
    ink = ink_blobs(shape, rng) & mask
    layers = render_layers(mask, ink, n_layers, rng)
    (frag / "surface_volume").mkdir(parents=True, exist_ok=True)
    for i, layer in enumerate(layers):
        tifffile.imwrite(frag / "surface_volume" / f"{i:02d}.tif", layer)
    cv2.imwrite(str(frag / "mask.png"), mask.astype(np.uint8) * 255)
    if labels:
        cv2.imwrite(str(frag / "inklabels.png"), ink.astype(np.uint8) * 255)
        ir = (layers[n_layers // 2] >> 8).astype(np.uint8)
        cv2.imwrite(str(frag / "ir.png"), ir)
    return mask, ink


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise with features about `scale` pixels across."""
    import cv2

    field = rng.normal(0, 1, shape).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), scale)
    return (field - field.mean()) / (field.std() + 1e-6)


def papyrus_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An irregular blob covering ~60% of the frame, with a ragged edge and bare borders."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.45, 0.55), w * rng.uniform(0.45, 0.55)
    r = np.sqrt(((yy - cy) / (0.44 * h)) ** 2 + ((xx - cx) / (0.42 * w)) ** 2)
    mask = r < 1.0 + 0.18 * _smooth_noise(shape, rng, max(2.0, min(h, w) / 12))
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = False, False, False, False
    return mask


def ink_blobs(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Letter-like strokes plus a few round blobs."""
    import cv2

    h, w = shape
    img = np.zeros(shape, np.uint8)
    n = max(4, (h * w) // 700)
    for _ in range(n):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(-w // 4, w // 4 + 1)), y0 + int(rng.integers(-h // 4, h // 4 + 1))
        cv2.line(img, (x0, y0), (x1, y1), 255, int(rng.integers(3, 7)))
    for _ in range(max(1, n // 3)):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, max(4, w // 10))), int(rng.integers(3, max(4, h // 10))))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return img > 0


def render_layers(mask: np.ndarray, ink: np.ndarray, n_layers: int, rng: np.random.Generator) -> np.ndarray:
    """(n_layers, H, W) uint16: papyrus ~18k, background ~3k, ink brighter + striped in the middle layers."""
    h, w = mask.shape
    base = np.where(mask, 18000.0, 3000.0) + 1500.0 * _smooth_noise((h, w), rng, 3.0)
    yy, xx = np.mgrid[0:h, 0:w]
    texture = 0.7 + 0.3 * np.sin((xx + yy) * 1.3)
    depth = np.exp(-0.5 * ((np.arange(n_layers) - (n_layers - 1) / 2) / max(1.0, n_layers / 8)) ** 2)
    depth[: n_layers // 3] = 0
    depth[n_layers - n_layers // 3:] = 0
    out = np.empty((n_layers, h, w), np.uint16)
    for i in range(n_layers):
        layer = base * (0.85 + 0.3 * i / max(1, n_layers - 1)) + rng.normal(0, 700, (h, w))
        layer += ink * (9000.0 * depth[i]) * texture
        out[i] = np.clip(layer, 0, 65535).astype(np.uint16)
    return out
