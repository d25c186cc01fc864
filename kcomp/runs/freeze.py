"""What trains, per epoch: `--freeze-bn`, `--freeze-epochs N` (the head only, first) and `--grad-checkpointing`.

Backbone and head per task (`backbone_modules`): cls, the timm model but its classifier (`get_classifier()`); seg,
the smp encoder (the decoder and segmentation head train); det, EfficientDet's timm backbone (the BiFPN and the
class/box nets train); ink, the timm encoder (depth fusion, decoder and head train).

A frozen parameter has requires_grad off: no gradient is computed for it, and the optimizer, which holds every
trainable parameter from the start, skips a parameter without a gradient (moments, weight decay and step count
included), so it stays bit-identical. A frozen BatchNorm layer runs in eval mode, normalising with its running
statistics and leaving them as they are; `model.train()` at every epoch start turns it back on, so `enter_epoch`
runs after it. timm's `freeze_batch_norm_2d`/`freeze()` would replace the layers by FrozenBatchNorm2d instead, which
drops `num_batches_tracked` from the state dict (best.pt would not load into the model oof and tta build) and, on
unfreezing, makes new Parameters the optimizer does not hold; so the layers stay what they are here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kcomp.errors import BadUsage
from kcomp.runtime import distributed

if TYPE_CHECKING:
    from kcomp.runs._fold import Fold
    from kcomp.tasks.options import TrainOptions


def _inner(model: nn.Module) -> nn.Module:
    """The library's network inside kcomp's wrappers (Normalized, PadCrop: `.net`)."""
    from kcomp.models._factory import Normalized
    from kcomp.models.seg import PadCrop

    while isinstance(model, (Normalized, PadCrop)):
        model = model.net
    return model


def backbone_modules(task: str, model: nn.Module) -> list[nn.Module]:
    """The modules whose parameters `--freeze-epochs` freezes (each owning its own parameters, `recurse=False`)."""
    net = _inner(model)
    if task == "cls":
        head = {id(m) for m in net.get_classifier().modules()}
        return [m for m in net.modules() if id(m) not in head]
    root = {"seg": lambda: net.encoder, "det": lambda: net.model.backbone, "ink": lambda: net.encoder}[task]()
    return list(root.modules())


def backbone_parameters(task: str, model: nn.Module) -> list[nn.Parameter]:
    return [p for m in backbone_modules(task, model) for p in m.parameters(recurse=False)]


def batch_norms(modules: Any) -> list[_BatchNorm]:
    """The BatchNorm layers among `modules` (SyncBatchNorm and timm's BatchNormAct2d included)."""
    return [m for m in modules if isinstance(m, _BatchNorm)]


def prepare(model: nn.Module, opts: TrainOptions) -> None:
    """At build, before the optimizer: `--freeze-bn`'s affine parameters out of training, `--grad-checkpointing` on
    (refused, as bad usage, for a model that has none)."""
    if opts.freeze_bn:
        for bn in batch_norms(model.modules()):
            for p in bn.parameters(recurse=False):
                p.requires_grad_(False)
    if opts.grad_checkpointing:
        enable_checkpointing(opts.task, model, opts.model)


def frozen(opts: TrainOptions, epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) trains the head only."""
    return epoch < opts.freeze_epochs


def enter_epoch(f: Fold, epoch: int) -> None:
    """After `model.train()`: the backbone's trainable parameters frozen or not for this epoch, and the BatchNorm
    layers that must not move in eval mode (all with `--freeze-bn`, the backbone's while it is frozen)."""
    opts = f.opts
    if opts.freeze_bn:
        for bn in batch_norms(f.model.modules()):
            bn.eval()
    if not opts.freeze_epochs:
        return
    freeze = frozen(opts, epoch)
    trainable = {id(p) for g in f.optimizer.param_groups for p in g["params"]}
    params = [p for p in backbone_parameters(opts.task, f.model) if id(p) in trainable]
    changed = any(p.requires_grad == freeze for p in params)
    for p in params:
        p.requires_grad_(not freeze)
    if freeze:
        for bn in batch_norms(backbone_modules(opts.task, f.model)):
            bn.eval()
    if changed and f.world > 1:  # DDP reduces the gradients of the parameters that trained when it was built
        f.ddp = distributed.wrap_ddp(f.model, f.device)
        f.step_model = torch.compile(f.ddp) if opts.compile else f.ddp


def _checkpointed(task: str, model: nn.Module) -> Any:
    """The timm module whose `set_grad_checkpointing` applies: the classifier, a seg `tu-` encoder's timm model,
    det's backbone, ink's encoder. None where there is none (smp's own encoders)."""
    net = _inner(model)
    if task == "cls":
        return net
    if task == "seg":
        return getattr(net.encoder, "model", None)
    return net.model.backbone if task == "det" else net.encoder


def enable_checkpointing(task: str, model: nn.Module, name: str) -> None:
    """timm's gradient checkpointing on the model's timm part; a model without it is refused in one line. The
    recomputation in the backward pass runs the block's BatchNorm layers in train mode a second time, so their running
    statistics take two updates a step (torch's checkpoint; timm's training does the same)."""
    target = _checkpointed(task, model)
    setter = getattr(target, "set_grad_checkpointing", None)
    hint = " (smp's own encoders have none; a timm encoder, tu-NAME, has)" if task == "seg" else ""
    if setter is None:
        raise BadUsage(f"--grad-checkpointing: --model {name} does not support gradient checkpointing{hint}")
    try:
        setter(True)
    except (AssertionError, NotImplementedError) as e:
        raise BadUsage(f"--grad-checkpointing: --model {name} does not support gradient checkpointing "
                       f"({str(e) or type(e).__name__})") from None
