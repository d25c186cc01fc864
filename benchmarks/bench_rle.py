"""Benchmark kcomp.post.rle against the RLE kernels every Kaggle notebook copies, on Clouds and Vesuvius workloads.

Run: python benchmarks/bench_rle.py [--repeats 7] [--clouds-images 400] [--no-write]
Prints `rle encode|decode <case>: ours X ms, reference Y ms, ratio Z` lines plus the one-off numba compile time, and
appends them, with machine info, to benchmarks/RESULTS.md. Both sides run in this process on the same inputs,
timeit-style: each call's result is dropped before the next; a case's time is the sum over its masks of each call's
best of --repeats. Outputs are checked identical before timing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import cv2
import numpy as np
from _results import append_section

from kcomp.post.rle import decode, encode

NOTE = ("Reference = the notebook kernels `mask2rle` (`img.T.flatten()` for column order, `np.concatenate([[0], "
        "pixels, [0]])`, `np.where(...)`, `' '.join(str(x) ...)`) and `rle2mask` (split, slice-fill loop, "
        "`img.reshape((w, h)).T` for column order: a transposed view, where ours returns a C-contiguous array). "
        "Timeit-style: each call's result is dropped before the next; a case's time is the sum over its masks of "
        "each call's best of N (N passes through the list). Targets: Clouds sizes in column order, Vesuvius in row "
        "order; the other order of each is listed for completeness. Decoding an empty mask is allocating a zeroed "
        "array on both sides, so lists with empty masks also get a line for their non-empty masks alone; decode "
        "lines end with the cost of allocating the outputs alone (np.zeros, one byte per 4 KiB page written). "
        "Machine shared with other jobs: absolute times are noisy; the two sides of a line run back to back.")
VESUVIUS = (8181, 6330)
CLOUDS_SUBMISSION = (350, 525)  # masks are predicted and encoded at this size, 4 classes per image
CLOUDS_TRAIN = (1400, 2100)  # train.csv labels are decoded at the full image size


def mask2rle(img: np.ndarray, order: str = "row") -> str:
    """The Clouds / Vesuvius notebook encoder (Clouds numbers pixels column-major: `img.T.flatten()`)."""
    pixels = img.T.flatten() if order == "column" else img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def rle2mask(mask_rle: str, shape: tuple[int, int], order: str = "row") -> np.ndarray:
    """The notebook decoder: column order fills a (width, height) array and returns its transpose."""
    h, w = shape
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(h * w, dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape((w, h)).T if order == "column" else img.reshape(h, w)


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


def clouds_masks(images: int, shape: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """4 class masks per image. As in train.csv about half are empty; a few are full; the others hold a few large
    cloud regions (5-40% of the image), half of them unions of 1-4 rectangles (how the labels were drawn), half
    thresholded smooth blobs (how predictions look)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    scale = h / CLOUDS_SUBMISSION[0]
    out = []
    for _ in range(images * 4):
        u = rng.random()
        if u < 0.45:
            out.append(np.zeros(shape, np.uint8))
        elif u < 0.47:
            out.append(np.ones(shape, np.uint8))
        elif u < 0.735:
            m = np.zeros(shape, np.uint8)
            for _ in range(int(rng.integers(1, 5))):
                bh, bw = (rng.uniform(0.15, 0.6, 2) * shape).astype(int)
                y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
                m[y:y + bh, x:x + bw] = 1
            out.append(m)
        else:
            f = smooth_field(h, w, int(rng.integers(60, 200) * scale), rng)
            out.append((f > np.quantile(f[::4, ::4], 1 - rng.uniform(0.05, 0.4))).astype(np.uint8))
    return out


def best_calls(fn: Callable[[object], object], items: list, repeats: int) -> np.ndarray:
    """Each item's best time over `repeats` passes through all items (timeit-style: a result is dropped before the
    next call). Per call rather than per pass, so that the other jobs on a shared machine, which preempt long passes,
    cost neither side; items stay interleaved, so a call finds its input in cache no more than in a real loop."""
    best = np.full(len(items), np.inf)
    for _ in range(repeats):
        for i, x in enumerate(items):
            t0 = time.perf_counter()
            fn(x)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def touched_zeros(shape: tuple[int, int]) -> None:
    """What any decoder returning a fresh array pays at least: a zeroed array with every 4 KiB page written once."""
    np.zeros(shape, np.uint8).reshape(-1)[::4096] = 1


def bench_case(name: str, masks: list[np.ndarray], order: str, repeats: int) -> list[str]:
    """Encode and decode lines for `masks` in `order`; for a list holding empty masks also the non-empty ones alone
    (decoding an empty mask is allocating a zeroed array on both sides)."""
    shape = masks[0].shape
    strings = [mask2rle(m, order) for m in masks]
    assert [encode(m, order) for m in masks] == strings, name
    for s, m in zip(strings, masks):
        ours = decode(s, shape, order)
        assert ours.dtype == np.uint8 and np.array_equal(ours, rle2mask(s, shape, order)) and np.array_equal(ours, m)
    nonempty = np.array([bool(s) for s in strings])
    runs = sum(s.count(" ") + 1 for s in strings if s) // 2 / max(1, nonempty.sum())
    label = f"{name} {order} ({runs:.0f} runs per non-empty mask)"
    if len(masks) > 1:
        label = f"{name} {order} ({(~nonempty).sum()} empty, {runs:.0f} runs per non-empty mask)"
    lines = []
    for what, ours, ref, items in [
        ("encode", lambda m: encode(m, order), lambda m: mask2rle(m, order), masks),
        ("decode", lambda s: decode(s, shape, order), lambda s: rle2mask(s, shape, order), strings),
    ]:
        t_ours, t_ref = best_calls(ours, items, repeats), best_calls(ref, items, repeats)
        t_floor = best_calls(lambda _: touched_zeros(shape), items, repeats) if what == "decode" else None
        subsets = [(label, np.ones(len(items), bool))]
        if len(masks) > 1 and not nonempty.all():
            subsets.append((f"{name} {order}, its {nonempty.sum()} non-empty masks alone", nonempty))
        for text, sel in subsets:
            o, r = t_ours[sel].sum(), t_ref[sel].sum()
            lines.append(f"rle {what} {text}: ours {o * 1e3:.2f} ms, reference {r * 1e3:.2f} ms, ratio {r / o:.1f}")
            if t_floor is not None:
                lines[-1] += f" (allocating the outputs alone: {t_floor[sel].sum() * 1e3:.2f} ms)"
            print(lines[-1], flush=True)
    return lines


def compile_times() -> tuple[float, float]:
    """First encode + decode (both orders) in a fresh process, numba import included: with an empty numba cache
    (compiles every kernel) and with the on-disk cache (loads them)."""
    code = ("import time; t = time.perf_counter(); import numpy as np; from kcomp.post.rle import decode, encode; "
            "m = np.eye(9, 12, dtype=np.uint8); [decode(encode(m, o), m.shape, o) for o in ('row', 'column')]; "
            "print(time.perf_counter() - t)")
    out = []
    with tempfile.TemporaryDirectory() as empty:
        for env in ({**os.environ, "NUMBA_CACHE_DIR": empty}, {**os.environ, "NUMBA_CACHE_DIR": empty}):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out.append(float(r.stdout.strip()))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="best of N timings per side")
    ap.add_argument("--clouds-images", type=int, default=400,
                    help="images at 350x525 (x4 masks; the real test set has 3698); an eighth as many at 1400x2100")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    cold_s, cached_s = compile_times()
    compile_line = (f"rle numba first call (encode + decode, both orders) in a new process, numba import included: "
                    f"{cold_s:.1f} s with an empty cache (compile, once per install), {cached_s:.2f} s with the "
                    "on-disk cache; excluded from the times below")
    print(compile_line, flush=True)
    lines = [compile_line]
    n = args.clouds_images
    for shape, images in ((CLOUDS_SUBMISSION, n), (CLOUDS_TRAIN, max(1, n // 8))):
        masks = clouds_masks(images, shape)
        for order in ("column", "row"):
            lines += bench_case(f"clouds {shape[0]}x{shape[1]} x {len(masks)} masks", masks, order, args.repeats)
    for kind, m in vesuvius_masks().items():
        for order in ("row", "column"):
            lines += bench_case(f"vesuvius {kind} {m.shape[0]}x{m.shape[1]} ({m.mean():.0%} ink)", [m], order,
                                args.repeats)
    if not args.no_write:
        append_section("rle", lines, extra=f"best of {args.repeats}", note=NOTE)


if __name__ == "__main__":
    main()
