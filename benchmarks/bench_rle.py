"""Benchmark kcomp.post.rle against the RLE kernels every Kaggle notebook copies, on Vesuvius and Clouds workloads.

Run: python benchmarks/bench_rle.py [--repeats 5] [--clouds-images 400] [--no-write]
Prints `name: ours X s, reference Y s, ratio Z` lines and appends them, with machine info, to benchmarks/RESULTS.md.
Both sides run in this process on the same inputs, best of --repeats; outputs are checked equal before timing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
from _results import append_section

from kcomp.post.rle import decode, encode

NOTE = ("Reference = the notebook kernels (row-major; column order applied to `mask.T`). The reference "
        "column decode returns a transposed view; ours returns a C-contiguous array.")
VESUVIUS = (8181, 6330)
CLOUDS = (350, 525)  # submission size; 4 classes per image


def rle_encode_ref(img):  # row-major
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def rle_decode_ref(mask_rle, shape):
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape)


def smooth_field(h: int, w: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Noise on a coarse grid, blurred and upsampled: features about `cell` pixels across."""
    small = cv2.GaussianBlur(rng.standard_normal((h // cell + 3, w // cell + 3), dtype=np.float32), (0, 0), 1.0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def vesuvius_masks(seed: int = 0) -> dict[str, np.ndarray]:
    """Two 8181x6330 ink masks: pen strokes (thin curved bands, ~12% ink; a real label or thresholded prediction
    has letters ~100-200 px tall with strokes ~30 px wide, i.e. 10^5 runs) and coarse blobs (a few thousand runs)."""
    rng = np.random.default_rng(seed)
    h, w = VESUVIUS
    f = smooth_field(h, w, 160, rng)
    strokes = np.abs(f) < np.quantile(np.abs(f[::16, ::16]), 0.12)
    f = smooth_field(h, w, 512, rng)
    blobs = f > np.quantile(f[::16, ::16], 0.85)
    return {"strokes": strokes.astype(np.uint8), "blobs": blobs.astype(np.uint8)}


def clouds_masks(images: int, seed: int = 0) -> list[np.ndarray]:
    """4 masks per image at 350x525: ~half empty (as in train.csv), the rest large cloud regions of 5-40%."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images * 4):
        if rng.random() < 0.45:
            out.append(np.zeros(CLOUDS, np.uint8))
        else:
            f = smooth_field(*CLOUDS, int(rng.integers(60, 200)), rng)
            out.append((f > np.quantile(f, 1 - rng.uniform(0.05, 0.4))).astype(np.uint8))
    return out


def timed(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def line(name: str, ours: float, ref: float) -> str:
    return f"{name}: ours {ours:.4f} s, reference {ref:.4f} s, ratio {ref / ours:.1f}"


def bench_vesuvius(repeats: int) -> list[str]:
    lines = []
    h, w = VESUVIUS
    for kind, m in vesuvius_masks().items():
        for order in ("row", "column"):
            t = m if order == "row" else m.T  # the reference kernels are row-major; column order = transpose
            s = rle_encode_ref(t)
            assert encode(m, order) == s
            assert np.array_equal(decode(s, (h, w), order), m)
            runs = len(s.split()) // 2
            name = f"vesuvius {kind} {h}x{w} ({runs} runs, {m.mean():.0%} ink) {order}"
            lines.append(line(f"{name} encode", timed(lambda m=m, o=order: encode(m, o), repeats),
                              timed(lambda t=t: rle_encode_ref(t), repeats)))
            ref_shape = (h, w) if order == "row" else (w, h)
            lines.append(line(f"{name} decode", timed(lambda s=s, o=order: decode(s, (h, w), o), repeats),
                              timed(lambda s=s: rle_decode_ref(s, ref_shape), repeats)))
            print(lines[-2], lines[-1], sep="\n", flush=True)
    return lines


def bench_clouds(images: int, repeats: int) -> list[str]:
    lines = []
    masks = clouds_masks(images)
    for order in ("column", "row"):
        ts = [m if order == "row" else m.T for m in masks]
        strings = [rle_encode_ref(t) for t in ts]
        assert [encode(m, order) for m in masks] == strings
        assert all(np.array_equal(decode(s, CLOUDS, order), m) for s, m in zip(strings, masks))
        runs = sum(len(s.split()) // 2 for s in strings) / len(strings)
        name = f"clouds {CLOUDS[0]}x{CLOUDS[1]} x {len(masks)} masks ({images} images x 4, {runs:.0f} runs/mask)"
        name += f" {order}"
        lines.append(line(f"{name} encode", timed(lambda o=order: [encode(m, o) for m in masks], repeats),
                          timed(lambda ts=ts: [rle_encode_ref(t) for t in ts], repeats)))
        ref_shape = CLOUDS if order == "row" else CLOUDS[::-1]
        lines.append(line(f"{name} decode", timed(lambda ss=strings, o=order: [decode(s, CLOUDS, o) for s in ss],
                                                  repeats),
                          timed(lambda ss=strings: [rle_decode_ref(s, ref_shape) for s in ss], repeats)))
        print(lines[-2], lines[-1], sep="\n", flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="best of N timings per side")
    ap.add_argument("--clouds-images", type=int, default=400, help="test images (x4 masks); the real test set has 3698")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    lines = bench_vesuvius(args.repeats) + bench_clouds(args.clouds_images, args.repeats)
    if not args.no_write:
        append_section("rle", lines, extra=f"best of {args.repeats}", note=NOTE)


if __name__ == "__main__":
    main()
