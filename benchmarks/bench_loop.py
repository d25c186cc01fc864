"""Training and inference throughput of kcomp's loops against the model-only limit, side by side in one run.

Ours: `kcomp.train.loop.train` on real JPEG files (Cassava-like layout, 800x600) through 2 DataLoader workers,
and `kcomp.infer.runs.predict_test` over the layout's test files. Limit: the same model, batch, precision, optimizer step and
channels_last on synthetic uint8 tensors already on the device (no data loading, no logging, no checkpoints).
Ratios are ours / limit on the same device in the same process, so they mean the same thing on CPU and GPU.

Run: python benchmarks/bench_loop.py [--model resnet18] [--img-size 128] [--batch-size 32] [--no-write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import append_section


def model_only_train(model: torch.nn.Module, batch: int, size: int, steps: int, device: torch.device,
                     classes: int) -> float:
    """img/s of forward+backward+AdamW step on a resident uint8 batch (what the loop could reach at best)."""
    from kcomp.train.loop import _optimizer

    opt = _optimizer(model, {"lr": 1e-3, "weight_decay": 0.05})
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps (allocator, kernels)
            t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


@torch.inference_mode()
def model_only_infer(model: torch.nn.Module, batch: int, size: int, steps: int, device: torch.device) -> float:
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        model(x).float().softmax(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import pandas as pd

    from kcomp.artifacts import paths
    from kcomp.competitions.demo import make_cls_layout
    from kcomp.console import set_quiet
    from kcomp.infer.runs import PredictOptions, predict_test
    from kcomp.models import create_cls_model
    from kcomp.train import config
    from kcomp.train.device import resolve_device
    from kcomp.train.loop import train

    set_quiet(True)
    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="kcomp-bench-loop-"))
    raw = make_cls_layout(tmp / "raw", n_train=args.images, n_test=args.images // 2, size=(600, 800), seed=0)
    for step in (["prep", "cassava", raw, "-o", tmp / "data"],
                 ["split", tmp / "data" / "index.parquet", "--folds", "5", "-o", tmp / "folds.parquet"]):
        subprocess.run([sys.executable, "-m", "kcomp.commands.main", "--quiet", *map(str, step)], check=True,
                       stdout=subprocess.DEVNULL)
    bs, size = args.batch_size, args.img_size
    cfg = config.resolve(task="cls", folds=str(tmp / "folds.parquet"), model=args.model, img_size=size, epochs=2,
                         batch_size=bs, aug="light", workers=args.workers, device=args.device, log_every=50)
    train(cfg, run=tmp / "run", fold=0)
    history = pd.read_parquet(paths.metrics(tmp / "run", 0))
    ours_train = float(history["img_per_s"].iloc[-1])  # second epoch: workers warm, as in a real run

    torch.manual_seed(0)
    model = create_cls_model(args.model, 5).to(device).to(memory_format=torch.channels_last)
    steps = max(4, int(ours_train * 0.8 * len(history["seconds"]) / bs) // 2)
    limit_train = model_only_train(model, bs, size, min(steps, 40), device, 5)

    t0 = time.perf_counter()
    frame, _ = predict_test([tmp / "run"], PredictOptions(device=args.device, workers=args.workers))
    ours_infer = len(frame) / (time.perf_counter() - t0)
    limit_infer = model_only_infer(model, bs, size, max(4, len(frame) // bs), device)

    lines = [
        f"train {args.model} {size}px batch {bs}, {args.workers} workers, JPEG 800x600: ours {ours_train:.1f} img/s, "
        f"model-only {limit_train:.1f} img/s, ratio {ours_train / limit_train:.2f}",
        f"tta (inference, {len(frame)} test images) {args.model} {size}px batch {bs}: ours {ours_infer:.1f} img/s (incl. model load), "
        f"model-only {limit_infer:.1f} img/s, ratio {ours_infer / limit_infer:.2f}",
    ]
    for ln in lines:
        print(ln)
    if not args.no_write:
        append_section("training and inference loops vs the model-only limit", lines,
                       extra=f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}",
                       note="`python benchmarks/bench_loop.py`; model-only = same model/batch/precision/optimizer "
                            "on uint8 tensors resident on the device.")


if __name__ == "__main__":
    main()
