"""Benchmark kcomp.post.ink_threshold against the naive per-threshold recompute at full resolution.

Run: python benchmarks/bench_ink_threshold.py [--no-full] [--no-write]
Prints `name: ours X s, reference Y s, ratio Z` lines, then the held-out (nested) tuner against the in-sample one
(`new X s, old Y s, ratio new/old`), and appends them, with machine info, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from _results import append_section

from kcomp.metrics._segmentation import fbeta_pixels
from kcomp.post.ink_threshold import downscale_maps, remove_small, search_threshold, tune
from kcomp.post.nested_threshold import tune_ink_nested

STEPS = 256
NAIVE_SAMPLE = 16  # thresholds timed before deciding whether to run all 256 or extrapolate
NAIVE_BUDGET_S = 40.0
MIN_SIZES = (0, 1000, 5000, 10000, 20000, 50000)


def synthetic_fragment(h: int, w: int, seed: int = 0, bias: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobby ink, a blurred-noise probability map correlated with it (logits shifted by `bias`) and a blobby
    papyrus mask (uint8/bool)."""
    rng = np.random.default_rng(seed)

    def blur(sigma: float) -> np.ndarray:
        return cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), sigma)

    label = blur(12) > 0.01
    logit = 2.5 * (label.astype(np.float32) - 0.5) + blur(3) * 8 + bias
    prob = np.round(255 / (1 + np.exp(-logit))).astype(np.uint8)
    mask = blur(40) > -0.005
    return prob, label, mask


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_search(frag, thresholds: np.ndarray) -> tuple[float, float, list[float]]:
    """Threshold the full-resolution map and score it with fbeta_pixels, once per threshold.

    Returns (one-off float conversion seconds, seconds for the threshold loop, scores)."""
    prob, label, mask = frag
    t0 = time.perf_counter()
    p = downscale_maps(prob, label, mask, 1)[0]
    t1 = time.perf_counter()
    scores = [fbeta_pixels(p >= t, label, mask) for t in thresholds]
    return t1 - t0, time.perf_counter() - t1, scores


def bench_fragment(name: str, frag) -> list[str]:
    h, w = frag[0].shape
    thresholds = np.arange(STEPS) / STEPS
    lines = []
    setup_s, loop_s, sample_scores = naive_search(frag, thresholds[::STEPS // NAIVE_SAMPLE])
    if setup_s + loop_s * STEPS / NAIVE_SAMPLE <= NAIVE_BUDGET_S:
        setup_s, loop_s, ref_scores = naive_search(frag, thresholds)
        ref_s = setup_s + loop_s
        ref_note = f"{STEPS} thresholds timed"
        check = list(zip(thresholds, ref_scores, strict=True))
    else:
        ref_s = setup_s + loop_s * STEPS / NAIVE_SAMPLE  # the one-off conversion is not multiplied
        ref_note = f"extrapolated linearly from {NAIVE_SAMPLE} timed thresholds"
        check = list(zip(thresholds[::STEPS // NAIVE_SAMPLE], sample_scores, strict=True))
    for ds in (1, 32):
        ours_s, (_, _, curve) = timed(lambda ds=ds: search_threshold([frag], downscale=ds, steps=STEPS))
        if ds == 1:  # the fast path must reproduce the naive curve exactly
            got = dict(curve)
            err = max(abs(got[float(t)] - s) for t, s in check)
            assert err < 1e-9, f"downscale-1 curve differs from the naive recompute by {err}"
        lines.append(f"search_threshold {name} {h}x{w} downscale {ds} ({STEPS} thresholds): ours {ours_s:.3f} s, "
                     f"reference {ref_s:.2f} s ({ref_note}), ratio {ref_s / ours_s:.0f}")

    # min-size search: ours labels once; the reference runs remove_small + fbeta_pixels per candidate size
    ours_s, res = timed(lambda: tune([frag], downscale=32, min_sizes=MIN_SIZES), repeat=1)

    def naive_tune():
        thr, _, _ = search_threshold([frag], downscale=32)
        p = downscale_maps(*frag, 1)[0] >= thr
        return max((fbeta_pixels(remove_small(p, s), frag[1], frag[2]), -s) for s in MIN_SIZES)

    ref_s, (ref_score, _) = timed(naive_tune, repeat=1)
    assert abs(ref_score - res.score) < 1e-12
    lines.append(f"tune {name} {h}x{w} downscale 32 + {len(MIN_SIZES)} min_sizes at full res: ours {ours_s:.3f} s, "
                 f"reference {ref_s:.2f} s (remove_small + fbeta_pixels per size), ratio {ref_s / ours_s:.1f}")
    return lines


def bench_nested(name: str, frags: list) -> str:
    """Held-out tuning (tune_ink_nested: per-fragment histograms summed per fold subset, each fragment labelled at
    the threshold of all folds and at the one tuned without it) against today's in-sample `tune`, one fragment per
    fold, alternated in one process. Both search the same min sizes. The fragments' probabilities are calibrated
    differently, so each fold's threshold differs from the all-fold one: the worst case, two labellings each."""
    old, new = [], []
    sizes = None
    for _ in range(3):
        t0 = time.process_time()
        ch = tune_ink_nested(frags, list(range(len(frags))))
        new.append(time.process_time() - t0)
        sizes = [o["min_size"] for o in ch.options]
        t0 = time.process_time()
        tune(frags, min_sizes=sizes)
        old.append(time.process_time() - t0)
    o, n = min(old), min(new)
    same = sum(f["threshold"] == ch.threshold for f in ch.heldout["folds"])
    h, w = frags[0][0].shape
    return (f"tune nested vs in-sample {name} {len(frags)} fragments {h}x{w}, one per fold, downscale 32 + "
            f"{len(sizes)} min sizes: new {n:.3f} s, old {o:.3f} s, ratio {n / o:.2f} (CPU s, best of 3 alternated; "
            f"{len(frags) - same} of {len(frags)} folds tuned a threshold other than the all-fold one, so their "
            f"fragments are labelled twice; "
            f"chose min size {ch.min_size} px, in-sample F0.5 {ch.score:.4f}, held-out {ch.heldout['score']:.4f} "
            f"± {ch.heldout['std']:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-full", action="store_true", help="skip the full 8181x6330 fragment")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    sizes = [("synthetic", 4000, 3000)] + ([] if args.no_full else [("full-size", 8181, 6330)])
    lines = []
    for name, h, w in sizes:
        for ln in bench_fragment(name, synthetic_fragment(h, w)):
            print(ln, flush=True)
            lines.append(ln)
    for name, h, w in sizes:
        ln = bench_nested(name, [synthetic_fragment(h, w, seed, bias) for seed, bias in enumerate((-0.6, 0.0, 0.6))])
        print(ln, flush=True)
        lines.append(ln)
    if not args.no_write:
        append_section("ink_threshold", lines)


if __name__ == "__main__":
    main()
