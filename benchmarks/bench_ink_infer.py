"""Ink sliding-window inference (`oof`/`tta`) against the model-only limit, side by side in one process.

Ours: `kcomp.runs.predict.predict_test` over one test fragment of a miniature Vesuvius layout (65 uint16 layers),
end to end (index, mask PNG, model build and weights, tile reading, blending, uint8 map); tiles/s = the sliding
windows of the fragment / seconds. Limit: the same model, weights, batch size, precision, channels_last and TTA
setting (`InkTask.predict`, views batched into one forward) on resident synthetic float16 tiles of the same shape
and batch sequence, in inference_mode. Each run of ours is timed between two runs of the limit and compared with
their mean (the machine is shared); with --repeat N the line gives the median of the N ratios.

Run: python benchmarks/bench_ink_infer.py [--tta 1,8] [--size 1024] [--tta-size 512] [--patch 224]
     [--batch-size 8] [--workers 2] [--repeat 1] [--workdir DIR] [--save-maps DIR] [--no-write]

`--size` is the test fragment's side for --tta 1 and `--tta-size` for larger TTA (8 views cost 8x), chosen so each
measurement takes 10-20 s on 2 CPU cores. `--workdir` keeps (and reuses) the layout and the trained run, so two
versions of the code can be timed on the same checkpoint; `--save-maps` writes each prediction's maps to
DIR/maps_tta{N}.npz for bit-for-bit comparisons between versions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import alternate, append_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.vesuvius_fixture import make_vesuvius_layout  # noqa: E402

N_LAYERS = 65


def kcomp(*args: str | Path) -> None:
    r = subprocess.run([sys.executable, "-m", "kcomp.commands.main", "--quiet", *map(str, args)],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"kcomp {args[0]} failed:\n{r.stderr}")


def setup(work: Path, *, sizes: list[int], patch: int, layers: str, model: str) -> tuple[Path, dict[int, Path]]:
    """(run dir, {fragment side: test index}) -- built once per workdir and reused."""
    run = work / f"run_{model}_{layers}_{patch}"
    if not (run / "fold0" / "best.pt").is_file():
        tr = patch + 32
        raw = make_vesuvius_layout(work / "raw_train", fragments={"1": (tr, tr), "2": (tr + 32, tr)}, test={},
                                   n_layers=N_LAYERS)
        kcomp("prep", "vesuvius", raw, "-o", work / "d")
        kcomp("split", work / "d" / "index.parquet", "-o", work / "d" / "folds.parquet", "--folds", "2",
              "--strategy", "group")
        kcomp("train", "ink", "--folds", work / "d" / "folds.parquet", "--fold", "0", "--layers", layers,
              "--patch", patch, "--model", model, "--epochs", "1", "--batch-size", "8", "--workers", "0",
              "--device", "cpu", "--no-pretrained", "-o", run)
    indexes = {}
    for s in sizes:
        indexes[s] = work / f"d{s}" / "index.parquet"
        if not indexes[s].is_file():
            raw_s = make_vesuvius_layout(work / f"raw{s}", fragments={}, test={"t": (s, s)}, n_layers=N_LAYERS,
                                         seed=s)
            kcomp("prep", "vesuvius", raw_s, "-o", work / f"d{s}")
    return run, indexes


def n_tiles(index: Path, patch: int, stride: int) -> int:
    from kcomp.artifacts import read_index
    from kcomp.data.ink_patches import window_positions
    from kcomp.data.layers import read_png_mask

    table = read_index(index)
    r = table.rows("test").iloc[0]
    mask = read_png_mask(table.file(r["mask"]), (int(r["height"]), int(r["width"])))
    return len(window_positions(mask, patch, stride))


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (DataLoader workers, once joined)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


@torch.inference_mode()
def model_only(run: Path, tiles: int, batch: int, tta: int, device: torch.device) -> tuple[float, float]:
    """(tiles/s, CPU s/tile) of `InkTask.predict` on resident float16 tiles, in the batches the sliding window
    would make."""
    from kcomp.artifacts import paths
    from kcomp.artifacts.checkpoint import load_checkpoint
    from kcomp.runs.predict import open_run
    from kcomp.runtime.device import amp_dtype
    from kcomp.tasks import get_task

    r = open_run(run)
    task = get_task("ink")
    model = task.build_model(r.opts, r.setup)
    model.load_state_dict(load_checkpoint(paths.best_checkpoint(run, 0), task="ink")["model"])
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    dtype = amp_dtype(device, r.opts.amp)
    patch, c = r.setup["patch"], len(r.setup["layers"])
    x = (torch.rand(batch, c, patch, patch, generator=torch.Generator().manual_seed(0)) * 160 + 10).half().to(device)
    sizes = [batch] * (tiles // batch) + ([tiles % batch] if tiles % batch else [])

    def step(n: int) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            task.predict(model, x[:n], tta).float()

    step(batch)  # warm-up (allocator, oneDNN primitives)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), cpu_seconds()
    for n in sizes:
        step(n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tiles / (time.perf_counter() - t0), (cpu_seconds() - c0) / tiles


def ours(run: Path, index: Path, tiles: int, opts: object) -> tuple[float, float, dict[str, np.ndarray]]:
    """(tiles/s, CPU s/tile incl. the DataLoader workers, maps) of `predict_test` end to end."""
    from kcomp.runs.predict import predict_test

    t0, c0 = time.perf_counter(), cpu_seconds()
    frame, _ = predict_test([run], opts, index=index)  # type: ignore[arg-type]
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return tiles / dt, cpu / tiles, dict(zip(frame["map_key"], frame["map"], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tta", default="1,8", help="comma-separated TTA settings, one line each")
    ap.add_argument("--size", type=int, default=1024, help="test fragment side for --tta 1")
    ap.add_argument("--tta-size", type=int, default=512, help="test fragment side for TTA > 1")
    ap.add_argument("--patch", type=int, default=224)
    ap.add_argument("--layers", default="5x7")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=1, help="ours timed N times, each between two model-only runs")
    ap.add_argument("--workdir", default=None, help="keep and reuse the layout and run here")
    ap.add_argument("--save-maps", default=None, help="write each prediction's maps to DIR/maps_tta{N}.npz")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from kcomp.console import set_quiet
    from kcomp.runtime.device import resolve_device

    set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="kcomp-bench-ink-infer-") as tmp:
        lines = measure(args, Path(args.workdir) if args.workdir else Path(tmp))
    if not args.no_write:
        append_section("ink sliding-window inference vs the model-only limit", lines,
                       extra=f"torch {torch.__version__}, device {resolve_device(args.device)}, "
                             f"threads {torch.get_num_threads()}",
                       note=f"`python benchmarks/bench_ink_infer.py {' '.join(sys.argv[1:])}`; ours = "
                            "`predict_test` end to end (model build, mask PNG, tiles, blending, uint8 map); "
                            "model-only = the same model, batches, precision, channels_last and TTA on resident "
                            "float16 tiles.")


def measure(args: argparse.Namespace, work: Path) -> list[str]:
    from kcomp.runs.predict import PredictOptions
    from kcomp.runtime.device import resolve_device

    device = resolve_device(args.device)
    ttas = [int(t) for t in args.tta.split(",")]
    work.mkdir(parents=True, exist_ok=True)
    side = {t: args.size if t == 1 else args.tta_size for t in ttas}
    t0 = time.perf_counter()
    run, indexes = setup(work, sizes=sorted(set(side.values())), patch=args.patch, layers=args.layers,
                         model=args.model)
    print(f"setup {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    stride = args.patch // 2
    lines = []
    for tta in ttas:
        s = side[tta]
        tiles = n_tiles(indexes[s], args.patch, stride)
        opts = PredictOptions(tta=tta, device=args.device, batch_size=args.batch_size, workers=args.workers)
        load0 = os.getloadavg()[0]
        runs, limit_runs, ratios = alternate(lambda: ours(run, indexes[s], tiles, opts),  # noqa: B023
                                             lambda: model_only(run, tiles, args.batch_size, tta, device),  # noqa: B023
                                             args.repeat, speed=lambda r: r[0])
        mine, mine_cpu, maps = [r[0] for r in runs], [r[1] for r in runs], runs[-1][2]
        limits, limit_cpu = [r[0] for r in limit_runs], [r[1] for r in limit_runs]
        if args.save_maps:
            Path(args.save_maps).mkdir(parents=True, exist_ok=True)
            np.savez(Path(args.save_maps) / f"maps_tta{tta}.npz", **maps)
        med = float(np.median(ratios))
        line = (f"ink tta {tta} ({args.model} {args.layers} --patch {args.patch} stride {stride}, batch "
                f"{args.batch_size}, {args.workers} workers, {device}, {s}x{s} fragment = {tiles} tiles): ours "
                f"{np.median(mine):.2f} tiles/s, model-only {np.median(limits):.2f} tiles/s, ratio {med:.2f} "
                f"(median of {len(ratios)}: {', '.join(f'{r:.2f}' for r in ratios)}; ours "
                f"{', '.join(f'{v:.2f}' for v in mine)}; model-only {', '.join(f'{v:.2f}' for v in limits)}); "
                f"CPU time: ours {np.median(mine_cpu) * 1e3:.0f} ms/tile (workers included), model-only "
                f"{np.median(limit_cpu) * 1e3:.0f} ms/tile, ratio {np.median(limit_cpu) / np.median(mine_cpu):.2f}; "
                f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end")
        print(line, flush=True)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
