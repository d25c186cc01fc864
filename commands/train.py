"""kcomp train TASK --folds FOLDS -o RUN"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from kcomp.commands._common import Device, Json, Output, Workers, emit, log
from kcomp.commands._launch import (Gpus, MasterAddr, MasterPort, NodeRank, Nodes, check_launch, is_main, layout,
                                    parallel_folds, relaunch_if_asked, under_torchrun)

Opt = typer.Option
# `kcomp train --help` groups the options in these panels (commands/_cli.py); an option without one is common.
Optim, Aug, Cls, Seg, Det, Ink, Loop, Dev = (partial(Opt, rich_help_panel=panel) for panel in (
    "Optimisation", "Augmentation", "cls", "seg", "det", "ink", "Data loop", "Devices and distributed"))
# A training option is declared twice: its field in kcomp/tasks/options.py (type, default, accepted values, tasks) and
# its typer.Option below under the same name (flag and help). None means "not given": the default, or the task's.


def command(
    task: Annotated[str, typer.Argument(help="cls | seg | det | ink")],
    folds: Annotated[str, Opt("--folds", help="folds.parquet from `kcomp split`.")],
    output: Output = ...,
    fold: Annotated[str, Opt(help="Fold to train, or 'all' (one after another).")] = "0",
    target: Annotated[str | None, Cls(help="Label column (cls; default: label).")] = None,
    model: Annotated[str | None, Opt(help="Model name: timm (cls, ink encoder), smp encoder (seg), effdet config "
                                              "e.g. tf_efficientdet_d0 (det). Default resnet18.")] = None,
    img_size: Annotated[int | None, Opt(help="Square input size. Default 224.")] = None,
    epochs: Annotated[int | None, Opt(help="Default 10.")] = None,
    batch_size: Annotated[int | None, Opt(help="Per-step batch. Default 32 (seg: 8).")] = None,
    lr: Annotated[float | None, Optim(help="Peak learning rate (of --sched after warmup). Default 1e-3.")] = None,
    weight_decay: Annotated[float | None, Optim(help="Default 0.05 (not on norms/biases).")] = None,
    warmup_epochs: Annotated[float | None, Optim(help="Linear warmup length in epochs. Default 1.")] = None,
    opt: Annotated[str | None, Optim(help="Optimizer, any of timm's: adamw, sgd (Nesterov), lamb, lion, adan, adamp..."
                                          " Default adamw.")] = None,
    momentum: Annotated[float | None, Optim(help="Momentum of sgd and other momentum optimizers. Default 0.9.")] = None,
    sched: Annotated[str | None, Optim(help="LR schedule after warmup, per step: cosine | tanh | step | wsd | constant "
                                            "| plateau (on the validation metric) | onecycle. Default cosine.")] = None,
    decay_epochs: Annotated[float | None, Optim(help="step: decay every N epochs (default: a third of the run); wsd: "
                                                     "decay phase length (default: its last 20%).")] = None,
    decay_rate: Annotated[float | None, Optim(help="step, plateau: LR factor per decay. Default 0.1.")] = None,
    plateau_patience: Annotated[int | None, Optim(help="plateau: epochs without improvement before a decay. "
                                                       "Default 2.")] = None,
    layer_decay: Annotated[float | None, Optim(help="Layer-wise LR decay (timm's groups): layer k of n trains at "
                                                    "lr x X^(n-1-k); the head at lr.")] = None,
    sam: Annotated[bool, Optim("--sam", help="Sharpness-aware minimisation around --opt (two passes per step; "
                                             "bf16/fp32).")] = False,
    sam_rho: Annotated[float | None, Optim(help="SAM neighbourhood radius. Default 0.05.")] = None,
    clip_grad: Annotated[float | None, Optim(help="Clip gradients (after unscaling) at this value.")] = None,
    clip_mode: Annotated[str | None, Optim(help="norm (total L2 norm) | value | agc. Default norm.")] = None,
    accum: Annotated[int | None, Optim(help="Gradient accumulation steps. Default 1.")] = None,
    loss: Annotated[str | None, Cls(help="ce | bi_tempered | taylor. Default ce.")] = None,
    smoothing: Annotated[float | None, Optim(help="Label smoothing. Default 0.")] = None,
    t1: Annotated[float | None, Cls(help="Bi-tempered loss t1. Default 0.8.")] = None,
    t2: Annotated[float | None, Cls(help="Bi-tempered loss t2. Default 1.4.")] = None,
    taylor_n: Annotated[int | None, Cls(help="Taylor CE order. Default 2.")] = None,
    mixup: Annotated[float | None, Aug(help="Mixup alpha (0 = off).")] = None,
    cutmix: Annotated[float | None, Aug(help="CutMix alpha (0 = off).")] = None,
    mix_prob: Annotated[float | None, Aug(help="Probability a batch is mixed. Default 1.")] = None,
    ema: Annotated[float | None, Optim(help="EMA decay, e.g. 0.999 (0 = off); validation uses the EMA.")] = None,
    aug: Annotated[str | None, Aug(help="none | light | medium | strong. Default medium.")] = None,
    drop_rate: Annotated[float | None, Optim(help="Head dropout.")] = None,
    drop_path: Annotated[float | None, Optim(help="Stochastic depth rate.")] = None,
    pretrained: Annotated[bool | None, Opt("--pretrained/--no-pretrained", help="Start from the library's pretrained "
                                           "weights (timm/smp: Hugging Face hub cache, effdet: torch hub cache; "
                                           "downloaded once when online). Default: on (demo data: off).")] = None,
    pretrained_tag: Annotated[str | None, Opt(help="Which pretrained weights: a timm tag, e.g. a1_in1k (cls, ink, "
                                                   "seg tu- encoders), or smp's weights name (seg, e.g. ssl). "
                                                   "Implies --pretrained. Default: the model's default.")] = None,
    weights: Annotated[str | None, Opt(help="Local weights file instead of the hub's: timm state dict or kcomp "
                                            "checkpoint; they must fill >= 90% of the model's tensors.")] = None,
    weights_partial: Annotated[bool, Opt("--weights-partial", help="Load --weights even if they fill less of the "
                                                                   "model (another architecture's).")] = False,
    metric: Annotated[str | None, Opt(help="Metric choosing best.pt (default: the task's).")] = None,
    val_tta: Annotated[int | None, Opt(help="TTA views for validation (1, 2, 4, 8). Default 1.")] = None,
    arch: Annotated[str | None, Seg(help="seg: smp architecture unet | fpn | pspnet | linknet | unetplusplus | "
                                         "deeplabv3plus; --model is the encoder (smp's, or tu-<timm name>). "
                                         "Default unet.")] = None,
    seg_loss: Annotated[str | None, Seg(help="seg: bce_dice | bce | dice | lovasz | focal. Default bce_dice.")] = None,
    layers: Annotated[str | None, Ink(help="ink: GxL = G groups of L consecutive layers centred on the stack "
                                            "(5x7 of 65 layers = 15..49). Default 5x7.")] = None,
    layer_start: Annotated[int | None, Ink(help="ink: first layer instead of the centred choice.")] = None,
    patch: Annotated[int | None, Ink(help="ink: patch size in px (multiple of 32). Default 224.")] = None,
    stride: Annotated[int | None, Ink(help="ink: training patch stride. Default patch/2.")] = None,
    layer_shift: Annotated[int | None, Ink(help="ink: max layer-shift augmentation. Default 2.")] = None,
    neg_fraction: Annotated[float | None, Ink(help="ink: share of ink-free training patches kept (positive/"
                                                   "negative balance). Default 1 (all).")] = None,
    seed: Annotated[int | None, Opt(help="Default 42.")] = None,
    deterministic: Annotated[bool, Opt("--deterministic", help="Deterministic kernels (slower).")] = False,
    amp: Annotated[str | None, Dev(help="auto | bf16 | fp16 | off. auto: bf16/fp16 on CUDA, fp32 on CPU.")] = None,
    channels_last: Annotated[bool | None, Dev("--channels-last/--no-channels-last", help="NHWC memory layout "
                                              "(faster convolutions on CUDA). Default on.")] = None,
    sync_bn: Annotated[bool, Dev("--sync-bn", help="DDP: BatchNorm statistics over the global batch (CUDA).")] = False,
    drop: Annotated[str | None, Loop(help="Label issues from `kcomp clean`: leave those rows out of training (cls; "
                                          "validation rows never change).")] = None,
    relabel: Annotated[str | None, Loop(help="Label issues from `kcomp clean`: train those rows on the suggested "
                                             "label (cls).")] = None,
    extra: Annotated[list[str] | None, Loop(help="Pseudo-labelled rows from `kcomp pseudo`, added to every fold's "
                                                 "training rows and never validated (repeatable).")] = None,
    teacher: Annotated[str | None, Loop(help="cls OOF predictions (`kcomp oof`) to distil from: soft targets beside "
                                             "the labels, mixed by --distill-alpha.")] = None,
    distill_alpha: Annotated[float | None, Loop(help="The teacher's share of the loss, 0..1 (1: cross-entropy to its "
                                                     "probabilities only).")] = None,
    distill_temperature: Annotated[float | None, Loop(help="Softens teacher and student alike (loss x T^2). "
                                                           "Default 1.")] = None,
    freeze_bn: Annotated[bool, Optim("--freeze-bn", help="BatchNorm layers in eval mode with their statistics "
                                                         "and affine parameters kept as they start (small "
                                                         "batches).")] = False,
    freeze_epochs: Annotated[int | None, Optim(help="Train the head only for the first N epochs (cls: the "
                                                    "classifier; seg/ink: decoder and head; det: BiFPN and class/box "
                                                    "nets); the backbone and its BatchNorm statistics stay as they "
                                                    "are. Default 0.")] = None,
    patience: Annotated[int | None, Optim(help="Stop a fold after N epochs without a better validation score "
                                               "(0 = off, the default).")] = None,
    class_weights: Annotated[str | None, Cls(help="balanced: cross-entropy weighs each class n/(k x its count) in "
                                                  "the fold's training rows (--loss ce).")] = None,
    sampler: Annotated[str | None, Cls(help="balanced: draw training rows with replacement, every class equally "
                                            "often (default: each row once per epoch).")] = None,
    grad_checkpointing: Annotated[bool, Optim("--grad-checkpointing", help="Recompute activations in the backward "
                                                                           "pass: less memory, slower (timm models, "
                                                                           "seg tu- encoders).")] = False,
    device: Device = "auto",
    workers: Workers = None,
    compile_model: Annotated[bool, Dev("--compile", help="torch.compile the model.")] = False,
    save_every: Annotated[int, Opt(help="Also save last.pt every N optimizer steps (0 = epoch ends only).")] = 0,
    resume: Annotated[bool, Opt("--resume", help="Continue from RUN/foldK/last.pt (also automatic).")] = False,
    gpus: Gpus = 1,
    nodes: Nodes = 1,
    node_rank: NodeRank = 0,
    master_addr: MasterAddr = None,
    master_port: MasterPort = None,
    in_parallel: Annotated[bool, Dev("--parallel-folds", help="With --fold all --gpus N: N folds at once, one "
                                                                 "single-process training per GPU, instead of "
                                                                 "DDP.")] = False,
    as_json: Json = False,
) -> None:
    """Train TASK on the train rows of FOLDS outside the validation fold; write the run directory RUN:
    config.json, and per fold RUN/foldK/{last.pt,best.pt,metrics.parquet,train.log}. Prints best.pt paths.
    An interrupted fold (Ctrl-C, SIGTERM) saves last.pt and exits 130; the same command resumes it.
    --gpus N runs DDP under torchrun (global batch = N x --batch-size); with --fold all --parallel-folds it trains
    N folds at once instead (docs/cluster.md)."""
    params = dict(locals())  # first: the parameters above, named as the training options they set
    from kcomp.artifacts.outputs import check_outputs

    inputs = [folds, weights, drop, relabel, *(extra or []), teacher]
    check_outputs(dirs={"-o": output}, inputs=inputs, owns_dirs=True)  # before torch is imported
    from kcomp.runs import config
    from kcomp.runs.train import fold_scores, train

    opts = config.resolve(**{k: v for k, v in params.items() if k in config.DEFAULTS} | {"compile": compile_model}
                          | layout(gpus, nodes))
    check_launch(gpus, nodes, node_rank, master_addr, master_port)
    if in_parallel and not under_torchrun():
        parallel_folds(opts.folds, fold, gpus, device, as_json)
        return
    relaunch_if_asked(gpus, nodes, node_rank, master_addr, master_port, device)
    results = train(opts, run=output, fold=fold, resume=resume)
    if not is_main():
        return
    for r in results:
        log(f"fold {r.fold}: best {r.metric} {r.best_score:.4f} at epoch {r.best_epoch}")
    emit([str(r.checkpoint) for r in results], fold_scores(results), as_json)


def register(app: typer.Typer) -> None:
    app.command("train")(command)
