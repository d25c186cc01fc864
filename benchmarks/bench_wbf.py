"""Benchmark kcomp's box fusion (WBF, NMS, soft-NMS on `Boxes` columns) against ensemble-boxes, the reference.

Two in-memory workloads of 40 box lists per image (5 models x 8 TTA views), boxes in pixels as `kcomp wbf` sees them:
- clustered: ~100 boxes per list and image; a few objects per image, each predicted by every list as 1-3 jittered
  boxes, plus 20 random boxes per list (70k fused out of 388k at 100 images);
- scattered: ~24 boxes per list and image, false positives that differ from list to list, so most boxes do not
  cluster (SIIM-like: one class, 0-4 true opacities seen by 80% of the lists).
Each side runs in this process on the same containers: ours is `fuse_boxes` over all images; ensemble-boxes is fed
image by image (`impl="reference"`: per image the lists' normalised arrays, its result scaled back). Runs alternate
(reference on a slice of the images, ours on all) and each pair gives a ratio (the reference's CPU time per image x
images / ours); the median is reported. Outputs are compared on every image the reference ran: same boxes, scores,
labels and order, max abs diff 0.
End to end: `kcomp wbf` on 40 parquet files of SIIM's test size (1,263 images, scattered), in a fresh process,
against the obvious pandas pipeline around ensemble-boxes (`pd.read_parquet`, per image arrays from the box dicts,
`weighted_boxes_fusion`, dicts back, `to_parquet`; also run as a fresh process, by this script's --eb-pipeline).
Run: python benchmarks/bench_wbf.py [--images 300] [--scattered 400] [--siim-images 1263] [--repeats 3]
     [--budget 45] [--methods wbf nms soft_nms] [--no-write]
Times are CPU seconds (time.process_time; everything timed is single-threaded) unless marked wall: the machine is
shared, and wall-clock times swing with the other jobs.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import append_section

from kcomp.artifacts.boxes import Boxes
from kcomp.post.wbf import fuse_boxes

LISTS = 40  # 5 models x 8 TTA views
OPTIONS = {"wbf": {"iou_thr": 0.55, "skip_box_thr": 0.01}, "nms": {"iou_thr": 0.55},
           "soft_nms": {"iou_thr": 0.55, "sigma": 0.5, "skip_box_thr": 0.01}}


def clustered(n_images: int, seed: int = 0) -> tuple[list[Boxes], np.ndarray, np.ndarray]:
    """The benchmark's first workload (the same draws as before boxes were columns): per image 2-6 true objects and
    30-40 false ones, each seen by every list as 1-3 jittered boxes (true ones score high), plus 20 random boxes."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1800, 3500, n_images), rng.integers(1800, 3500, n_images)
    objects = []
    for _ in range(n_images):
        k, f = int(rng.integers(2, 7)), int(rng.integers(30, 40))
        wh = rng.uniform(0.05, 0.35, (k + f, 2))
        xy = rng.uniform(0, 1, (k + f, 2)) * (1 - wh)
        objects.append((np.concatenate([xy, xy + wh], 1), rng.integers(0, 2, k + f), np.arange(k + f) < k))
    lists = []
    for _ in range(LISTS):
        rows = []
        for i in range(n_images):
            obj, lab, real = objects[i]
            hits = np.repeat(np.arange(len(obj)), rng.integers(1, 4, len(obj)))
            size = obj[hits, 2:] - obj[hits, :2]
            near = obj[hits] + rng.normal(0, 0.05, (len(hits), 4)) * np.tile(size, 2)
            xy = rng.uniform(0, 0.9, (20, 2))
            clutter = np.concatenate([xy, xy + rng.uniform(0.02, 0.2, (20, 2))], 1)
            b = np.clip(np.concatenate([near, clutter]), 0, 1) * [w[i], h[i], w[i], h[i]]
            s = np.concatenate([np.where(real[hits], rng.uniform(0.3, 0.99, len(hits)), rng.beta(1.5, 6, len(hits))),
                                rng.beta(1, 10, 20)])
            rows.append(np.column_stack([b, s, np.concatenate([lab[hits], rng.integers(0, 2, 20)])]))
        lists.append(Boxes.from_rows(rows))
    return lists, h, w


def scattered(n_images: int, seed: int = 1) -> tuple[list[Boxes], np.ndarray, np.ndarray]:
    """The second workload: per image 0-4 true opacities, each seen by 80% of the lists as one jittered box, and
    ~22 false positives per list drawn for that list alone (Poisson), so most boxes do not cluster; one class."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1800, 3500, n_images), rng.integers(1800, 3500, n_images)
    objects = []
    for _ in range(n_images):
        k = int(rng.integers(0, 5))
        wh = rng.uniform(0.08, 0.3, (k, 2))
        xy = rng.uniform(0, 1, (k, 2)) * (1 - wh)
        objects.append(np.concatenate([xy, xy + wh], 1))
    lists = []
    for _ in range(LISTS):
        rows = []
        for i in range(n_images):
            seen = objects[i][rng.uniform(size=len(objects[i])) < 0.8]
            near = seen + rng.normal(0, 0.03, seen.shape) * np.tile(seen[:, 2:] - seen[:, :2], 2)
            n_fp = int(rng.poisson(22))
            wh = rng.uniform(0.03, 0.25, (n_fp, 2))
            xy = rng.uniform(0, 1, (n_fp, 2)) * (1 - wh)
            b = np.clip(np.concatenate([near, np.concatenate([xy, xy + wh], 1)]), 0, 1) * [w[i], h[i], w[i], h[i]]
            s = np.concatenate([rng.uniform(0.3, 0.95, len(near)), rng.beta(1, 8, n_fp)])
            rows.append(np.column_stack([b, s, np.zeros(len(b))]))
        lists.append(Boxes.from_rows(rows))
    return lists, h, w


def _max_diff(a: Boxes, b: Boxes) -> tuple[float, float]:
    """Max abs differences of boxes (px) and scores; the same boxes per image and labels are asserted."""
    assert np.array_equal(a.offsets, b.offsets), "different numbers of fused boxes"
    assert np.array_equal(a.label, b.label), "different labels"
    return float(np.abs(a.xyxy - b.xyxy).max(initial=0.0)), float(np.abs(a.score - b.score).max(initial=0.0))


def in_memory(name: str, data: tuple, method: str, repeats: int, budget: float) -> tuple[str, dict]:
    """Ours on every image and the reference on successive slices, alternated; returns a line and the figures."""
    lists, h, w = data
    n, kw = len(h), OPTIONS[method]
    fuse_boxes(lists, h, w, method=method, **kw)  # warm: both sides compiled / loaded (ensemble-boxes jits its NMS)
    fuse_boxes([b.take([0]) for b in lists], h[:1], w[:1], method=method, impl="reference", **kw)
    ours_t, ratios, ref_per_image, diffs, start = [], [], [], [], 0
    for _ in range(repeats):
        taken, ref_s, parts = [], 0.0, []
        while ref_s < budget / repeats and len(taken) < n:
            idx = (np.arange(start, start + 10) % n)
            part = [b.take(idx) for b in lists]
            t0 = time.process_time()
            parts.append(fuse_boxes(part, h[idx], w[idx], method=method, impl="reference", **kw))
            ref_s += time.process_time() - t0
            taken.extend(idx.tolist())
            start += 10
        t0 = time.process_time()
        ours = fuse_boxes(lists, h, w, method=method, **kw)
        ours_t.append(time.process_time() - t0)
        diffs.append(_max_diff(ours.take(taken), Boxes.concat(parts)))
        ref_per_image.append(ref_s / len(taken))
        ratios.append(ref_s / len(taken) * n / ours_t[-1])
    fig = {"ours": float(np.median(ours_t)), "ref": float(np.median(ref_per_image)) * n,
           "ratio": float(np.median(ratios)), "boxes": max(d[0] for d in diffs), "scores": max(d[1] for d in diffs),
           "out": ours.n_boxes}
    line = (f"{method} {name}: ours {fig['ours']:.3f} s, ensemble-boxes {fig['ref']:.1f} s, ratio {fig['ratio']:.0f} "
            f"(median of {repeats}; ratios {', '.join(f'{r:.0f}' for r in ratios)}), max abs diff boxes "
            f"{fig['boxes']:.3g} px scores {fig['scores']:.3g}, {fig['out']} boxes out")
    print(line, flush=True)
    return line, fig


def write_files(data: tuple, root: Path) -> list[str]:
    from kcomp.artifacts.predictions import write_predictions

    lists, h, w = data
    import pandas as pd

    df = pd.DataFrame({"id": [f"img{i:05d}" for i in range(len(h))], "fold": -1, "height": h, "width": w})
    return [write_predictions(df, root / f"list{k:02d}.parquet", task="det", kind="test", classes=["opacity"],
                              boxes=b) for k, b in enumerate(lists)]


def _child(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(paths: list[str], root: Path, repeats: int) -> tuple[list[str], dict]:
    """`kcomp wbf` and the pandas + ensemble-boxes pipeline on the same files, fresh processes, alternated."""
    kcomp = str(Path(sys.executable).with_name("kcomp"))
    ours_cmd = [kcomp, "--quiet", "wbf", *paths, "-o", str(root / "ours.parquet"), "--iou", "0.55",
                "--skip-box-thr", "0.01"]
    ref_cmd = [sys.executable, __file__, "--eb-pipeline", *paths, "--out", str(root / "ref.parquet")]
    ours, ref = [], []
    for _ in range(repeats):
        ours.append(_child(ours_cmd))
        ref.append(_child(ref_cmd))
    import pandas as pd

    from kcomp.artifacts.predictions import read_predictions

    got = read_predictions(root / "ours.parquet")
    want = Boxes.from_cells(pd.read_parquet(root / "ref.parquet")["boxes"])
    d_box, d_score = _max_diff(got.boxes, want)
    fig = {"ours_wall": float(np.median([o[0] for o in ours])), "ours_cpu": float(np.median([o[1] for o in ours])),
           "ref_wall": float(np.median([r[0] for r in ref])), "ref_cpu": float(np.median([r[1] for r in ref]))}
    fig["ratio"] = fig["ref_wall"] / fig["ours_wall"]
    n_in = sum(read_predictions(p).boxes.n_boxes for p in paths[:1]) * len(paths)
    lines = [(f"kcomp wbf end to end on {len(paths)} parquet files x {len(got.boxes)} images (~{n_in} boxes): "
              f"ours {fig['ours_wall']:.2f} s wall ({fig['ours_cpu']:.2f} s CPU), pandas + ensemble-boxes "
              f"{fig['ref_wall']:.1f} s wall ({fig['ref_cpu']:.1f} s CPU), ratio {fig['ratio']:.0f} wall, "
              f"{fig['ref_cpu'] / fig['ours_cpu']:.0f} CPU (medians of {repeats} alternated fresh processes, start-up "
              f"and imports included), {got.boxes.n_boxes} boxes out, max abs diff boxes {d_box:.3g} px scores "
              f"{d_score:.3g}")]
    print(lines[0], flush=True)
    return lines, fig


def eb_pipeline(paths: list[str], out: str) -> None:
    """The obvious pandas path around ensemble-boxes (what kcomp's own `wbf` did before boxes were columns)."""
    import ensemble_boxes as eb
    import pandas as pd

    frames = [pd.read_parquet(p) for p in paths]
    first = frames[0]
    lookups = [f.set_index("id")["boxes"] for f in frames]
    fused = []
    for img, h, w in zip(first["id"], first["height"], first["width"], strict=True):
        scale = np.array([w, h, w, h], dtype=np.float64)
        bl, sl, ll = [], [], []
        for lk in lookups:
            b = lk[img]
            bl.append(np.clip(np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in b]).reshape(-1, 4) / scale,
                              0.0, 1.0))
            sl.append(np.array([d["score"] for d in b], dtype=np.float64))
            ll.append(np.array([d["label"] for d in b], dtype=np.float64))
        fb, fs, fl = eb.weighted_boxes_fusion(bl, sl, ll, **OPTIONS["wbf"])
        fused.append([{"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "score": float(s), "label": int(lab)}
                      for b, s, lab in zip((np.asarray(fb).reshape(-1, 4) * scale).tolist(), fs, fl, strict=True)])
    first[["id", "fold", "height", "width"]].assign(boxes=fused).to_parquet(out)


def compile_times() -> tuple[float, float]:
    """First call of every kernel in a fresh process: with an empty numba cache (compiles) and with the on-disk
    cache (loads)."""
    code = ("import time; t = time.process_time(); import numpy as np; "
            "from kcomp.post._wbf_fast import weighted_boxes_fusion as f; from kcomp.post._nms_fast import nms, "
            "soft_nms; a = ([np.array([[0.1, 0.1, 0.5, 0.5]])], [np.array([0.9])], [np.array([0.0])]); "
            "f(*a); nms(*a); soft_nms(*a); print(time.process_time() - t)")
    out = []
    with tempfile.TemporaryDirectory() as empty:  # the default cache is run twice: the first run fills it if stale
        for env in ({**os.environ, "NUMBA_CACHE_DIR": empty}, dict(os.environ), dict(os.environ)):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out.append(float(r.stdout.strip()))
    return out[0], out[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="images of the clustered workload")
    ap.add_argument("--scattered", type=int, default=400, help="images of the scattered workload")
    ap.add_argument("--siim-images", type=int, default=1263, help="images of the end-to-end files (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=45.0, help="CPU s of ensemble-boxes per workload and method")
    ap.add_argument("--methods", nargs="+", choices=list(OPTIONS), default=list(OPTIONS), help="methods to time")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--eb-pipeline", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eb_pipeline:
        eb_pipeline(args.eb_pipeline, args.out)
        return
    cold_s, cached_s = compile_times()
    lines = []
    for name, make, n in (("clustered", clustered, args.images), ("scattered", scattered, args.scattered)):
        data = make(n)
        n_in = sum(b.n_boxes for b in data[0])
        lines.append(f"workload {name}: {n} images x {LISTS} lists, {n_in} boxes in")
        print(lines[-1], flush=True)
        for method in args.methods:
            line, _ = in_memory(name, data, method, args.repeats, args.budget)
            lines.append(line)
    if args.siim_images:
        data = scattered(args.siim_images, seed=2)
        line, _ = in_memory("scattered at SIIM's test size, in memory", data, "wbf", args.repeats, args.budget)
        with tempfile.TemporaryDirectory() as tmp:
            e2e, _ = end_to_end(write_files(data, Path(tmp)), Path(tmp), args.repeats)
        lines += [line, *e2e]
    lines.append(f"options: {OPTIONS}; numba first call of the three kernels in a new process (CPU s, imports "
                 f"included): {cold_s:.1f} s with an empty cache (compile), {cached_s:.2f} s with the on-disk cache; "
                 "the in-memory times exclude it, the end-to-end ones include loading it")
    print(lines[-1], flush=True)
    if not args.no_write:
        load = os.getloadavg()[0]
        append_section("wbf, nms, soft-nms", lines, note=f"`python benchmarks/bench_wbf.py {' '.join(sys.argv[1:])}`"
                       f" (load average {load:.1f} at the end)")


if __name__ == "__main__":
    main()
