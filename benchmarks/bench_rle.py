"""Benchmark kcomp.formats.rle against the RLE kernels every Kaggle notebook copies, on Clouds and Vesuvius workloads.

Run: python benchmarks/bench_rle.py [--repeats 7] [--clouds-images 400] [--no-write]
Prints `rle encode|decode|decode_resized <case>: ours X ms, reference Y ms, ratio Z` lines plus the one-off numba
compile time, and appends them, with machine info, to benchmarks/RESULTS.md. Both sides run in this process on the
same inputs, timeit-style: each call's result is dropped before the next; a case's time is the sum over its masks of
each call's best of --repeats. Outputs are checked identical (values, shape, dtype, memory layout) before timing.
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

from kcomp.formats.rle import decode, decode_resized, encode

NOTE = ("Reference = the notebook kernels `mask2rle` (`img.T.flatten()` for column order, `np.concatenate([[0], "
        "pixels, [0]])`, `np.where(...)`, `' '.join(str(x) ...)`) and `rle2mask` (split, slice-fill loop, "
        "`img.reshape((w, h)).T` for column order). Both decoders return the same layout: C-contiguous in row "
        "order, in column order the transpose of a C-contiguous (width, height) array (F-contiguous); the "
        "`c_contiguous=True` lines time ours returning a C-contiguous array in column order, against the same "
        "reference (still its F view). Timeit-style: each call's result is dropped before the next; a case's time "
        "is the sum over its masks of each call's best of N (N passes through the list). Targets: Clouds sizes in "
        "column order, Vesuvius in row order; the other order of each is listed for completeness. Decoding an empty "
        "mask is allocating a zeroed array on both sides, so lists with empty masks also get a line for their "
        "non-empty masks alone. Decode lines end with two floors. F: what any decoder returning a fresh numpy array "
        "pays, np.zeros of the output with one byte written in each 4 KiB page that holds ink (pages a decoder must "
        "write; np.zeros clears reused heap memory itself, fresh pages are cleared by the OS when first written, "
        "2 MiB at a time with transparent huge pages). W: writing every byte of an array allocated once and reused "
        "(ndarray.fill), what a decoder into a caller's buffer would pay at least. Reference / F and reference / W "
        "are the best ratios these allow; times above F are each decoder's own work (a negative one is noise: "
        "ours within it of F). decode_resized = the mask "
        "sampled at a smaller size (cv2.resize INTER_NEAREST_EXACT of the decode), reference = rle2mask + "
        "cv2.resize (given the F view in column order, cv2 copies it to C first). Machine shared with other jobs: "
        "absolute times are noisy; the two sides of a line run back to back.")
VESUVIUS = (8181, 6330)
CLOUDS_SUBMISSION = (350, 525)  # masks are predicted and encoded at this size, 4 classes per image
CLOUDS_TRAIN = (1400, 2100)  # train.csv labels are decoded at the full image size
CLOUDS_SAMPLED = ((384, 384), (350, 525))  # train.csv labels at a model's input size, and at the submission size
PAGE = 4096


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


def ink_pages(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Flat byte offsets, one per 4 KiB page of a fresh (h*w) array that a decoder filling runs in memory order
    writes (the runs are contiguous in the flat array in both orders: see rle2mask)."""
    v = np.array(rle.split(), np.int64)
    if v.size == 0:
        return np.zeros(0, np.int64)
    starts, ends = v[0::2] - 1, v[0::2] - 1 + v[1::2]
    first, count = starts // PAGE, (ends - 1) // PAGE - starts // PAGE + 1
    pages = np.arange(count.sum()) + np.repeat(first - (np.cumsum(count) - count), count)  # first..last of each
    return np.unique(pages) * PAGE


def touched_zeros(shape: tuple[int, int], offsets: np.ndarray) -> None:
    """What any decoder returning a fresh array pays at least: np.zeros, and one write in each page it must set."""
    np.zeros(shape[0] * shape[1], np.uint8)[offsets] = 1


def timed_lines(what: str, text: str, t_ours: np.ndarray, t_ref: np.ndarray, subsets: list,
                floors: tuple[np.ndarray, np.ndarray] | None = None, extra: str = "") -> list[str]:
    """One line per (label suffix, selection) of items: totals and ratio; for decode also the floors F (fresh
    array) and W (reused array) with the best ratio each allows, and both sides' time above F (see NOTE)."""
    lines = []
    for suffix, sel in subsets:
        o, r = t_ours[sel].sum(), t_ref[sel].sum()
        line = f"rle {what} {text}{suffix}: ours {o * 1e3:.2f} ms, reference {r * 1e3:.2f} ms, ratio {r / o:.1f}"
        if floors is not None:
            f, w = (t[sel].sum() for t in floors)
            line += (f" (fresh-array floor F {f * 1e3:.2f} ms, so at most {r / f:.1f}; writing a reused array W "
                     f"{w * 1e3:.2f} ms, so at most {r / w:.1f}; above F: ours {(o - f) * 1e3:.2f} ms, reference "
                     f"{(r - f) * 1e3:.2f} ms)")
        lines.append(line + extra)
        print(lines[-1], flush=True)
    return lines


def bench_case(name: str, masks: list[np.ndarray], order: str, repeats: int) -> list[str]:
    """Encode and decode lines for `masks` in `order`; for a list holding empty masks also the non-empty ones alone
    (decoding an empty mask is allocating a zeroed array on both sides); in column order also decode with
    c_contiguous=True."""
    shape = masks[0].shape
    strings = [mask2rle(m, order) for m in masks]
    assert [encode(m, order) for m in masks] == strings, name
    for s, m in zip(strings, masks):
        ours, ref = decode(s, shape, order), rle2mask(s, shape, order)
        assert ours.dtype == ref.dtype == np.uint8 and ours.shape == ref.shape and ours.strides == ref.strides
        assert np.array_equal(ours, ref) and np.array_equal(ours, m)
        c = decode(s, shape, order, c_contiguous=True)
        assert c.flags.c_contiguous and c.dtype == np.uint8 and np.array_equal(c, m)
    nonempty = np.array([bool(s) for s in strings])
    runs = sum(s.count(" ") + 1 for s in strings if s) // 2 / max(1, nonempty.sum())
    label = f"{name} {order} ({runs:.0f} runs per non-empty mask)"
    if len(masks) > 1:
        label = f"{name} {order} ({(~nonempty).sum()} empty, {runs:.0f} runs per non-empty mask)"
    subsets = [("", np.ones(len(masks), bool))]
    if len(masks) > 1 and not nonempty.all():
        subsets.append((f", its {nonempty.sum()} non-empty masks alone", nonempty))
    lines = timed_lines("encode", label, best_calls(lambda m: encode(m, order), masks, repeats),
                        best_calls(lambda m: mask2rle(m, order), masks, repeats), subsets)
    pages = [(shape, ink_pages(s, shape)) for s in strings]
    t_ref = best_calls(lambda s: rle2mask(s, shape, order), strings, repeats)
    reused = np.empty(shape, np.uint8)
    floors = (best_calls(lambda x: touched_zeros(*x), pages, repeats),
              best_calls(lambda _: reused.fill(0), strings, repeats))
    variants = [("", {})] + ([(" c_contiguous=True", {"c_contiguous": True})] if order == "column" else [])
    for suffix, kw in variants:
        t_ours = best_calls(lambda s, kw=kw: decode(s, shape, order, **kw), strings, repeats)
        lines += timed_lines("decode", label.replace(f" {order} ", f" {order}{suffix} ", 1), t_ours, t_ref,
                             subsets, floors)
    return lines


def bench_resized(name: str, masks: list[np.ndarray], order: str, size: tuple[int, int], repeats: int
                  ) -> list[str]:
    """decode_resized against the reference decode + cv2.resize INTER_NEAREST_EXACT (what sample_mask did), with
    ours decode (c_contiguous=True, as cv2 wants) + cv2.resize for comparison."""
    shape = masks[0].shape
    strings = [mask2rle(m, order) for m in masks]
    dsize = (size[1], size[0])

    def ref(s: str) -> np.ndarray:
        return cv2.resize(rle2mask(s, shape, order), dsize, interpolation=cv2.INTER_NEAREST_EXACT)

    def ours_then_cv2(s: str) -> np.ndarray:
        return cv2.resize(decode(s, shape, order, c_contiguous=True), dsize, interpolation=cv2.INTER_NEAREST_EXACT)

    for s in strings:
        got = decode_resized(s, shape, size, order)
        assert got.dtype == np.uint8 and got.flags.c_contiguous and np.array_equal(got, ref(s)), name
    nonempty = np.array([bool(s) for s in strings])
    subsets = [("", np.ones(len(masks), bool))]
    if not nonempty.all():
        subsets.append((f", its {nonempty.sum()} non-empty masks alone", nonempty))
    t_ours = best_calls(lambda s: decode_resized(s, shape, size, order), strings, repeats)
    t_ref = best_calls(ref, strings, repeats)
    t_mid = best_calls(ours_then_cv2, strings, repeats)
    lines = []
    for suffix, sel in subsets:
        lines += timed_lines("decode_resized", f"{name} {order} to {size[0]}x{size[1]}", t_ours, t_ref,
                             [(suffix, sel)], extra=f" (our decode + cv2.resize: {t_mid[sel].sum() * 1e3:.2f} ms)")
    return lines


def compile_times() -> tuple[float, float]:
    """First encode, decode (both layouts) and decode_resized (both orders) in a fresh process, numba import
    included: with an empty numba cache (compiles every kernel) and with the on-disk cache (loads them)."""
    code = ("import time; t = time.perf_counter(); import numpy as np; from kcomp.formats.rle import *; "
            "m = np.eye(9, 12, dtype=np.uint8); [(decode(encode(m, o), m.shape, o), decode(encode(m, o), m.shape, o, "
            "c_contiguous=True), decode_resized(encode(m, o), m.shape, (5, 7), o)) for o in ('row', 'column')]; "
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
    compile_line = (f"rle numba first call (encode, decode in both layouts, decode_resized; both orders) in a new "
                    f"process, numba import included: {cold_s:.1f} s with an empty cache (compile, once per install), "
                    f"{cached_s:.2f} s with the on-disk cache; excluded from the times below")
    print(compile_line, flush=True)
    lines = [compile_line]
    n = args.clouds_images
    for shape, images in ((CLOUDS_SUBMISSION, n), (CLOUDS_TRAIN, max(1, n // 8))):
        masks = clouds_masks(images, shape)
        name = f"clouds {shape[0]}x{shape[1]} x {len(masks)} masks"
        for order in ("column", "row"):
            lines += bench_case(name, masks, order, args.repeats)
        if shape == CLOUDS_TRAIN:
            for size in CLOUDS_SAMPLED:
                lines += bench_resized(name, masks, "column", size, args.repeats)
    for kind, m in vesuvius_masks().items():
        for order in ("row", "column"):
            lines += bench_case(f"vesuvius {kind} {m.shape[0]}x{m.shape[1]} ({m.mean():.0%} ink)", [m], order,
                                args.repeats)
    if not args.no_write:
        append_section("rle", lines, extra=f"best of {args.repeats}", note=NOTE)


if __name__ == "__main__":
    main()
