"""2.5D ink model: a shared 2D timm encoder over G groups of L consecutive layers, fused across groups by a 3D
convolution, and a light FPN decoder to a probability map at patch resolution.

Per-patch normalisation over the whole selected stack happens inside `forward`, so inference cannot forget it
(and the host ships raw intensities).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kcomp.models._factory import load_weights
from kcomp.models.pretrained import Init, load_with, timm_source


class InkNet(nn.Module):
    def __init__(self, encoder: str, groups: int, layers_per_group: int, *, drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0, decoder_channels: int = 64, pretrained: bool = False) -> None:
        import timm

        from kcomp.errors import BadUsage

        super().__init__()
        if not timm.is_model(encoder):
            raise BadUsage(f"unknown timm encoder {encoder!r}")
        self.groups, self.per_group = groups, layers_per_group
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        # pretrained: timm adapts the RGB stem to `layers_per_group` input channels itself
        self.encoder = timm.create_model(encoder, pretrained=pretrained, features_only=True,
                                         in_chans=layers_per_group, **kwargs)
        channels = self.encoder.feature_info.channels()
        self.stride0 = self.encoder.feature_info.reduction()[0]
        # depth (group) mixing: a 3-tap conv along the group axis (a (3,1,1) 3D conv written as a 2D conv over
        # (group, pixel), so the model can go channels_last), residual, then max over groups
        self.fuse = nn.ModuleList(nn.Conv2d(c, c, (3, 1), padding=(1, 0), groups=max(1, c // 16))
                                  for c in channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in channels)
        self.dropout = nn.Dropout2d(drop_rate) if drop_rate else nn.Identity()
        self.head = nn.Sequential(nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1),
                                  nn.BatchNorm2d(decoder_channels), nn.ReLU(inplace=True),
                                  nn.Conv2d(decoder_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, G*L, H, W) raw layer intensities -> logits (B, H, W)."""
        b, c, h, w = x.shape
        x = x.float()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        x = ((x - mean) / std).reshape(b * self.groups, self.per_group, h, w)
        feats = self.encoder(x)
        fused = []
        for f, conv in zip(feats, self.fuse, strict=True):
            _, ch, fh, fw = f.shape
            f = f.reshape(b, self.groups, ch, fh * fw).transpose(1, 2)  # (B, C, G, h*w)
            fused.append((f + conv(f)).amax(dim=2).reshape(b, ch, fh, fw))
        y = self.lateral[-1](fused[-1])
        for f, lat in zip(reversed(fused[:-1]), reversed(self.lateral[:-1]), strict=True):
            y = F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False) + lat(f)
        logits = self.head(self.dropout(y))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def create_ink_model(encoder: str, groups: int, layers_per_group: int, *, init: Init | None = None,
                     drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> InkNet:
    """An InkNet initialised as `init` says: the timm encoder pretrained through timm, a local timm state dict
    loaded into the encoder (its stem, of other input channels, is skipped), or random init."""
    init = init or Init()

    def build(pretrained: bool) -> InkNet:
        return InkNet(encoder, groups, layers_per_group, drop_path_rate=drop_path_rate, drop_rate=drop_rate,
                      pretrained=pretrained)

    if init.pretrained:
        model = load_with(timm_source(encoder), init, lambda: build(True), "timm")
    else:
        model = build(False)
    load_weights(model.encoder, init, into="encoder")
    return model


def parse_layers(spec: str) -> tuple[int, int]:
    """'5x7' -> (5 groups, 7 layers each)."""
    from kcomp.errors import BadUsage

    try:
        g, l_ = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise BadUsage(f"--layers {spec}: expected GxL, e.g. 5x7") from None
    if g < 1 or l_ < 1:
        raise BadUsage(f"--layers {spec}: groups and layers must be at least 1")
    return g, l_


def select_layers(n_layers: int, groups: int, per_group: int, start: int | None = None) -> list[int]:
    """G*L consecutive layers centred on the middle of the stack (65 layers, 5x7: 15..49), or from `start`."""
    from kcomp.errors import BadUsage

    total = groups * per_group
    if total > n_layers:
        raise BadUsage(f"--layers {groups}x{per_group} needs {total} layers; the stack has {n_layers}")
    first = (n_layers - total) // 2 if start is None else start
    if first < 0 or first + total > n_layers:
        raise BadUsage(f"--layer-start {start}: layers {first}..{first + total - 1} are outside 0..{n_layers - 1}")
    return list(range(first, first + total))
