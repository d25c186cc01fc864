"""Training and inference throughput of kcomp's loops against the model-only limit, side by side in one run.

cls: `kcomp.runs.train.train` on real JPEG files (Cassava-like layout, 800x600) through 2 DataLoader workers, then
`kcomp.runs.predict.predict_test` over the layout's test files; each twice, once decoding the JPEGs and once reading
`prep --size`'s decoded-image cache, and once more from the JPEGs for a 5-fold run, whose folds predict each batch
together (limit: 5 forward passes an image). seg: `predict_test` of a U-Net over a Clouds-like layout (1400x2100
JPEGs), maps written at the 350x525 submission size, again from the JPEGs and from the cache. Limit: the same model,
batch, precision, (optimizer step) and channels_last on synthetic uint8 tensors already on the device (no data
loading, no logging, no checkpoints, no output maps). Ratios are ours / limit on the same device in the same
process, so they mean the same thing on CPU and GPU. Inference times include building the model and loading its
checkpoint. Each run of ours sits between two runs of the limit and is compared with their mean; a line gives the
median of those ratios, and the CPU time one dataset item costs (read, decode, augment), the share of the machine a
CPU loop gives to data instead of the model.

Run: python benchmarks/bench_loop.py [--model resnet18] [--img-size 128] [--batch-size 32] [--repeats 3]
     [--train-repeats 3] [--plain] [--skip-cls] [--skip-seg] [--threads N] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _results import alternate, append_section


def model_only_train(model: torch.nn.Module, batch: int, size: int, steps: int, device: torch.device,
                     classes: int) -> float:
    """img/s of forward+backward+AdamW step on a resident uint8 batch (what the loop could reach at best)."""
    from kcomp.runs import config
    from kcomp.models.optim import build_optimizer

    opt = build_optimizer(model, config.resolve(lr=1e-3, weight_decay=0.05))
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for i in range(steps + 5):
        if i == 5:  # warm-up steps (allocator, kernels, first-touch of the optimizer state)
            t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


@torch.inference_mode()
def model_only_infer(model: torch.nn.Module, batch: int, size: int, steps: int, device: torch.device,
                     act: str = "softmax") -> float:
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        y = model(x).float()
        y.softmax(1) if act == "softmax" else y.sigmoid()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def kcomp_cli(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "kcomp.commands.main", "--quiet", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def infer_rate(run: Path, workers: int, device: str) -> tuple[float, int]:
    from kcomp.runs.predict import PredictOptions, predict_test

    t0 = time.perf_counter()
    frame, _ = predict_test([run], PredictOptions(device=device, workers=workers))
    return len(frame) / (time.perf_counter() - t0), len(frame)


def plain_train(files: list[Path], size: int, batch: int, workers: int, device: torch.device, model_name: str
                ) -> float:
    """img/s of the second epoch of a tuned plain-PyTorch loop over the same JPEGs (libjpeg's reduced decode, the
    same light augmentation, persistent workers with prefetch 4, AdamW, channels_last; no validation, no seeded
    sampler, no checkpoints): what a careful notebook reaches on this machine."""
    import albumentations as A
    import cv2
    import numpy as np
    from torch.utils.data import DataLoader, Dataset

    from kcomp.data.images import _reduced_flag
    from kcomp.models import create_cls_model
    from kcomp.runs import config
    from kcomp.models.optim import build_optimizer

    tf = A.Compose([A.RandomResizedCrop(size=(size, size), scale=(0.3, 1.0)), A.HorizontalFlip(), A.VerticalFlip()])

    class Jpegs(Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            img = cv2.cvtColor(cv2.imread(str(files[i]), _reduced_flag(files[i], size)), cv2.COLOR_BGR2RGB)
            return torch.from_numpy(np.ascontiguousarray(tf(image=img)["image"].transpose(2, 0, 1))), i % 5

    torch.manual_seed(0)
    model = create_cls_model(model_name, 5).to(device).to(memory_format=torch.channels_last).train()
    opt, loss_fn = build_optimizer(model, config.resolve(lr=1e-3, weight_decay=0.05)), torch.nn.CrossEntropyLoss()
    dl = DataLoader(Jpegs(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                    persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                    pin_memory=device.type == "cuda")
    for _ in range(2):
        t0, n = time.perf_counter(), 0
        for x, y in dl:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            loss_fn(model(x), y.to(device, non_blocking=True)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def data_cpu_seconds(task_name: str, index: Path, opts: Any, *, train: bool, items: int = 48) -> float:
    """CPU seconds one dataset item costs (read, decode, augment), measured in this process. On a CPU the model
    already keeps every core busy, so this work is taken from the model wherever it runs (a worker process or
    in-process): it explains the gap to the limit that no loop can close."""
    from kcomp.artifacts import read_index
    from kcomp.tasks import get_task

    table, task = read_index(index), get_task(task_name)
    rows = table.rows("train" if train else "test")
    ds = task.dataset(table, rows, opts, task.setup(table, opts), train=train, with_targets=train)
    n = min(items, len(ds))
    for _ in range(2):  # the first pass warms the page cache and lazy imports; the second is timed
        t0 = time.process_time()
        for i in range(n):
            ds[(i, i) if train else i]
    return (time.process_time() - t0) / n


def bracketed(name: str, ours: Callable[[], float], limit: Callable[[], float], repeats: int,
              data_cpu: float | None = None) -> str:
    """`name: ours X, model-only Y, ratio Z`: the median ratio of `alternate`'s runs."""
    mine, limits, ratios = alternate(ours, limit, repeats)
    line = (f"{name}: ours {statistics.median(mine):.1f} img/s, model-only {statistics.median(limits):.1f} img/s, "
            f"ratio {statistics.median(ratios):.2f} (median of {len(ratios)} runs, each against the mean of the "
            f"model-only runs around it: {', '.join(f'{r:.2f}' for r in ratios)})")
    if data_cpu is not None:
        threads = torch.get_num_threads()
        model_cpu = threads / statistics.median(limits)
        line += (f"; the data path costs {data_cpu * 1e3:.2f} ms of CPU per image, {data_cpu / model_cpu:.0%} of the "
                 f"model-only run's {model_cpu * 1e3:.1f} ms of core time per image on {threads} threads")
    print(line, flush=True)
    return line


def bench_cls(args: argparse.Namespace, tmp: Path, device: torch.device) -> list[str]:
    import pandas as pd

    from kcomp.artifacts import paths
    from kcomp.competitions.demo import make_cls_layout
    from kcomp.models import create_cls_model
    from kcomp.runs import config
    from kcomp.runs.train import train

    bs, size = args.batch_size, args.img_size
    raw = make_cls_layout(tmp / "raw", n_train=args.images, n_test=args.test_images, size=(600, 800), seed=0)
    lines = []
    for variant, extra in (("JPEG 800x600", []), (f"prep --size {size} cache", ["--size", size])):
        data = tmp / ("cache" if extra else "jpeg")
        kcomp_cli("prep", "cassava", raw, "-o", data, *extra)
        kcomp_cli("split", data / "index.parquet", "--folds", "5", "-o", data / "folds.parquet")
        opts = config.resolve(task="cls", folds=str(data / "folds.parquet"), model=args.model, img_size=size,
                             epochs=2, batch_size=bs, aug="light", workers=args.workers, device=args.device,
                             log_every=50, pretrained=False)  # random weights, as the limit's model
        torch.manual_seed(0)
        model = create_cls_model(args.model, 5).to(device).to(memory_format=torch.channels_last)

        def limit_train() -> float:
            return model_only_train(model, bs, size, 20, device, 5)

        def ours_train() -> float:
            shutil.rmtree(data / "run", ignore_errors=True)  # a fresh run each time (a finished one would resume)
            train(opts, run=data / "run", fold=0)
            history = pd.read_parquet(paths.metrics(data / "run", 0))
            return float(history["img_per_s"].iloc[-1])  # second epoch: workers warm, as in a real run

        n = int((pd.read_parquet(data / "index.parquet")["split"] == "test").sum())
        index = data / "index.parquet"

        def limit_infer() -> float:
            return model_only_infer(model, bs, size, max(4, n // bs), device)

        limit_train()  # warm-up: the first steps of a process run far below its steady speed
        if args.plain and not extra:
            files = sorted((raw / "train_images").glob("*.jpg"))[: int(args.images * 0.8)]
            lines.append(bracketed(
                f"train, tuned plain-PyTorch loop (reference) {args.model} {size}px batch {bs}, {args.workers} "
                f"workers, {variant}", lambda: plain_train(files, size, bs, args.workers, device, args.model),
                limit_train, args.train_repeats))
        lines += [
            bracketed(f"train cls {args.model} {size}px batch {bs}, {args.workers} workers, {variant}", ours_train,
                      limit_train, args.train_repeats, data_cpu_seconds("cls", index, opts, train=True)),
            bracketed(f"tta cls {args.model} {size}px batch {bs}, {n} test images, {variant} (incl. model load)",
                      lambda: infer_rate(data / "run", args.workers, args.device)[0], limit_infer, args.repeats,
                      data_cpu_seconds("cls", index, opts, train=False)),
        ]
        if not extra:
            lines.append(bench_cls_folds(data, args, n, limit_infer))
    return lines


def bench_cls_folds(data: Path, args: argparse.Namespace, n: int, limit_one: Callable[[], float],
                    folds: int = 5) -> str:
    """`tta` of a 5-fold run from JPEGs: the folds predict each batch together, so the files are decoded once for
    all of them. The limit is 5 forward passes an image. Fold 0's checkpoint stands in for every fold (a forward
    pass costs the same whatever the weights)."""
    run = data / "run-folds"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(data / "run", run)
    for k in range(1, folds):
        shutil.copytree(run / "fold0", run / f"fold{k}", dirs_exist_ok=True)
    return bracketed(f"tta cls {args.model} {args.img_size}px batch {args.batch_size}, {n} test images, JPEG 800x600, "
                     f"{folds} folds read together (limit: {folds} forward passes an image; incl. model loads)",
                     lambda: infer_rate(run, args.workers, args.device)[0], lambda: limit_one() / folds,
                     args.repeats)


def bench_seg(args: argparse.Namespace, tmp: Path, device: torch.device) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.clouds_fixture import make_clouds_layout

    from kcomp.models.seg import create_seg_model
    from kcomp.runs import config
    from kcomp.runs.train import train

    bs, size = args.seg_batch_size, args.seg_img_size
    layout = make_clouds_layout(tmp / "clouds", n_train=10, n_test=args.seg_images, seed=0)
    lines = []
    for variant, extra in (("JPEG 1400x2100", []), (f"prep --size {size} cache", ["--size", size])):
        data = tmp / ("seg-cache" if extra else "seg-jpeg")
        kcomp_cli("prep", "clouds", layout.raw, "-o", data, *extra)
        kcomp_cli("split", data / "index.parquet", "--folds", "2", "-o", data / "folds.parquet")
        opts = config.resolve(task="seg", folds=str(data / "folds.parquet"), model=args.seg_model, img_size=size,
                             epochs=1, batch_size=bs, aug="none", workers=args.workers, device=args.device,
                             pretrained=False)
        train(opts, run=data / "run", fold=0)
        torch.manual_seed(0)
        model = create_seg_model("unet", args.seg_model, 4).to(device).to(memory_format=torch.channels_last)
        n = args.seg_images
        lines.append(bracketed(
            f"tta seg unet-{args.seg_model} {size}px batch {bs}, {n} test images, {variant}, maps 350x525 "
            f"(incl. model load)", lambda: infer_rate(data / "run", args.workers, args.device)[0],
            lambda: model_only_infer(model, bs, size, max(3, n // bs), device, act="sigmoid"), args.repeats,
            data_cpu_seconds("seg", data / "index.parquet", opts, train=False)))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=640, help="cls train images")
    ap.add_argument("--test-images", type=int, default=640, help="cls test images")
    ap.add_argument("--seg-model", default="resnet18")
    ap.add_argument("--seg-img-size", type=int, default=256)
    ap.add_argument("--seg-batch-size", type=int, default=8)
    ap.add_argument("--seg-images", type=int, default=64, help="seg test images")
    ap.add_argument("--repeats", type=int, default=3, help="inference runs per line")
    ap.add_argument("--train-repeats", type=int, default=3, help="training runs per line")
    ap.add_argument("--plain", action="store_true", help="also time a tuned plain-PyTorch training loop on the JPEGs")
    ap.add_argument("--skip-seg", action="store_true")
    ap.add_argument("--skip-cls", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (default: torch's, one per core); fewer leave cores to the data path, "
                         "as a GPU box's model leaves its CPU cores")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from kcomp.console import set_quiet
    from kcomp.runtime.device import resolve_device

    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="kcomp-bench-loop-"))
    try:
        lines = ([] if args.skip_cls else bench_cls(args, tmp, device)) + \
            ([] if args.skip_seg else bench_seg(args, tmp, device))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_write:
        append_section("training and inference loops vs the model-only limit", lines,
                       extra=f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
                             f"load average {os.getloadavg()[0]:.1f}",
                       note="`python benchmarks/bench_loop.py`; model-only = same model/batch/precision/optimizer "
                            "on uint8 tensors resident on the device; runs alternate with the limit's, each compared "
                            "with the mean of its two neighbours; the line gives the median ratio.")


if __name__ == "__main__":
    main()
