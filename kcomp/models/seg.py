"""Segmentation models: any smp architecture x any encoder smp accepts (its own, or timm's as `tu-<name>`), taking
uint8 images of any size.

The network sees normalised input padded up to a multiple of the encoder's stride and its logits are cropped back,
so an `--img-size` of 100 works like 128 would; normalisation and padding live inside the model so neither
training, validation nor inference can forget them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kcomp.errors import BadInput, BadUsage
from kcomp.models.pretrained import Init, file_record, load_with, smp_source, timm_source, with_tag

ARCHS = ("unet", "fpn", "pspnet", "linknet", "unetplusplus", "deeplabv3plus", "deeplabv3", "manet", "pan",
         "upernet")
# Initial probability of every output pixel: the head's bias starts at logit(PRIOR) instead of 0 (p = 0.5), as in
# RetinaNet's prior. Cloud masks cover ~10-15% of pixels per class; starting near that rate spares the first steps
# from unlearning "everything is half positive" (Unet-resnet18 on the test fixture, 128 px, 16 steps of batch 8:
# val Dice 0.85 with the prior, 0.39 without).
PRIOR = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PadCrop(nn.Module):
    """Pads (reflect, or replicate when the input is too small to reflect) to a multiple of `multiple`, runs
    `net`, crops the output back to the input size: sizes the encoder cannot take stay a model detail."""

    def __init__(self, net: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        self.net, self.multiple = net, int(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if not (ph or pw):
            return self.net(x)
        top, left = ph // 2, pw // 2
        pad = (left, pw - left, top, ph - top)
        mode = "reflect" if max(pad[:2]) < w and max(pad[2:]) < h else "replicate"
        y = self.net(F.pad(x, pad, mode=mode))
        return y[..., top:top + h, left:left + w]


def resolve_encoder(name: str) -> str:
    """smp's own encoder names as given; `tu-<timm name>` for timm; a bare timm name not known to smp gets `tu-`."""
    import segmentation_models_pytorch as smp
    import timm

    if name in smp.encoders.get_encoder_names():
        return name
    if name.startswith("tu-"):
        if timm.is_model(name[3:]):
            return name
        raise BadUsage(f"--model {name}: {name[3:]!r} is not a timm model (see timm.list_models())")
    if timm.is_model(name):
        return f"tu-{name}"
    raise BadUsage(f"--model {name}: not an encoder smp knows (segmentation_models_pytorch.encoders."
                   f"get_encoder_names()) nor a timm model (timm.list_models(); use it as is or as tu-<name>)")


def create_seg_model(arch: str, encoder: str, num_classes: int, *, init: Init | None = None, tag: str | None = None,
                     weights: str | Path | None = None, in_channels: int = 3, weights_partial: bool = False
                     ) -> nn.Module:
    """Normalized(PadCrop(smp model)), initialised as `init` says: pretrained encoder weights through smp (its own
    encoders' `encoder_weights`, `tag` naming which, default imagenet; timm's for `tu-` encoders, `tag` being the
    timm tag), a local file loaded into the encoder (`weights` is shorthand for it), or random init."""
    import segmentation_models_pytorch as smp

    from kcomp.models._factory import Normalized, freeze_unused

    arch_key = arch.lower().replace("_", "").replace("-", "")
    if arch_key not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise BadUsage(f"--arch {arch}: choose one of {', '.join(ARCHS)} (or another smp architecture: "
                       f"{', '.join(sorted(set(smp.MODEL_ARCHITECTURES_MAPPING) - set(ARCHS)))})")
    init = init or Init(weights=str(weights) if weights else None, partial=weights_partial)
    name = resolve_encoder(encoder)
    if name.startswith("tu-"):
        name = "tu-" + with_tag(name[3:], tag)

    def build(encoder_weights: str | bool | None) -> nn.Module:
        return smp.create_model(arch_key, encoder_name=name, encoder_weights=encoder_weights,
                                in_channels=in_channels, classes=num_classes)

    try:
        if not init.pretrained:
            net = build(None)
        elif name.startswith("tu-"):
            net = load_with(timm_source(name[3:]), init, lambda: build(True), "timm (smp tu- encoder)")
        else:
            src = smp_source(name, (tag or "imagenet").lstrip("."))
            net = load_with(src, init, lambda: build((tag or "imagenet").lstrip(".")), "smp")
    except (KeyError, ValueError, RuntimeError) as e:
        raise BadUsage(f"--arch {arch} --model {encoder}: smp cannot build it ({str(e).splitlines()[0][:200]})"
                       ) from None
    init_prior(net, PRIOR)
    freeze_unused(net, (2, in_channels, 512, 512))  # PSPNet's encoder stages past its depth
    if init.weights:
        load_encoder_weights(net.encoder, init.weights, partial=init.partial)  # logs what it loaded
        init.source = file_record(init.weights)
    multiple = max(32, int(getattr(net.encoder, "output_stride", 32) or 32))
    cfg = getattr(getattr(net.encoder, "model", None), "pretrained_cfg", None) or {}
    return Normalized(PadCrop(net, multiple), cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


def init_prior(net: nn.Module, prior: float) -> None:
    """Set the bias of the segmentation head's last conv to logit(prior)."""
    import math

    head = getattr(net, "segmentation_head", None)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)] if head is not None else []
    if convs and convs[-1].bias is not None:
        nn.init.constant_(convs[-1].bias, math.log(prior / (1 - prior)))


def load_encoder_weights(encoder: nn.Module, path: str | Path, *, partial: bool = False) -> int:
    """A timm or smp encoder state dict, a whole smp model's, or a kcomp checkpoint: keys are matched after the
    usual prefixes (module., net., model.) are stripped, first against the encoder's own names (timm keys for
    `tu-` encoders), then under `encoder.` (whole models and checkpoints). Returns how many tensors loaded."""
    from kcomp.models._factory import load_pretrained

    target = encoder.model if type(encoder).__name__ == "TimmUniversalEncoder" else encoder
    try:
        _, missing = load_pretrained(target, path, partial=partial, into="encoder")
        return len(target.state_dict()) - len(missing)
    except BadInput as first:
        holder = nn.Module()
        holder.encoder = encoder
        try:
            _, missing = load_pretrained(holder, path, partial=partial, into="encoder")
        except BadInput:
            raise first from None
        return len(holder.state_dict()) - len(missing)
