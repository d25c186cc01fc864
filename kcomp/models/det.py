"""EfficientDet (effdet) for task `det`: the raw network wrapped so that normalisation, anchors and decoding live
with the weights (the loss that `DetBenchTrain` would compute is `kcomp.models.losses.DetLoss`).

Conventions: the network's inputs are uint8 (or 0..255 float) images with 1 or 3 channels (grey is replicated on
the device); effdet's targets are **yxyx** boxes in input pixels with classes starting at 1 (padding -1); kcomp's
outputs are xyxy boxes in input pixels with 0-based labels (padding: score 0, label -1).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from kcomp.artifacts.checkpoint import load_weights_file
from kcomp.errors import BadInput, BadUsage
from kcomp.models.pretrained import Init, fetch, file_record, load_with, loaded, timm_source, url_source

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_DETECTIONS = 100  # per image and view, after NMS (effdet's max_det_per_image)


# effdet scripts its post-processing and loss with torch.jit.script, which warns on every run: not ours to fix
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)


def model_names() -> list[str]:
    from effdet.config.model_config import efficientdet_model_param_dict

    return sorted(efficientdet_model_param_dict)


def det_config(name: str, num_classes: int, img_size: int) -> Any:
    """effdet's config for `name` at a square input size, with `num_classes` classes; errors name the fix."""
    from effdet.config import get_efficientdet_config

    if name not in model_names():
        d = [n for n in model_names() if n.startswith("tf_efficientdet_d")]
        raise BadUsage(f"--model {name}: not an effdet config; choose e.g. {', '.join(d[:8])} (any name in "
                       f"effdet.config.model_config.efficientdet_model_param_dict)")
    cfg = get_efficientdet_config(name)
    stride = input_stride(cfg)
    if img_size % stride:
        near = sorted({max(stride, img_size // stride * stride), (img_size // stride + 1) * stride})
        raise BadUsage(f"--img-size {img_size}: {name} needs a multiple of {stride} (its feature pyramid halves the "
                       f"input {cfg.max_level} times), e.g. {' or '.join(map(str, near))}")
    cfg.image_size = (img_size, img_size)
    cfg.num_classes = num_classes
    cfg.max_det_per_image = MAX_DETECTIONS
    return cfg


def input_stride(cfg: Any) -> int:
    return 2 ** int(cfg.max_level)


class DetNet(nn.Module):
    """EfficientDet returning (class logits per level, box regressions per level); `decode` turns them into
    detections. The network sits in `.model` so state dicts read like effdet bench checkpoints (`model.` keys).

    Inputs of any size are taken: they are padded at the bottom and right (with the mean colour) up to a multiple
    of the network's stride, and `decode` uses anchors for the padded size, so boxes keep the input's origin and
    `oof`/`tta` can predict at other sizes than training's (multi-scale TTA, `--img-size`). effdet fixes its
    feature pyramid's resampling sizes at construction, so another size runs through a twin network built for it
    that shares this one's tensors (`_sized`; no copy)."""

    def __init__(self, config: Any, model: nn.Module | None = None) -> None:
        from effdet import EfficientDet
        from effdet.anchors import Anchors

        super().__init__()
        self.model = model if model is not None else EfficientDet(config, pretrained_backbone=False)
        self.config = config
        # constants made on the CPU even under `torch.device("meta")` (`build_with_weights`)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, device="cpu").view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, device="cpu").view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("anchors", Anchors.from_config(config).boxes, persistent=False)
        self._other_anchors: dict[tuple[int, int], torch.Tensor] = {}
        self._twins: dict[tuple[int, int], tuple[nn.Module, int]] = {}

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        import torch.nn.functional as F

        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x.float() - self.mean) / self.std
        stride = input_stride(self.config)
        ph, pw = -x.shape[-2] % stride, -x.shape[-1] % stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # 0 = the mean colour once normalised
        return self._sized((int(x.shape[-2]), int(x.shape[-1])))(x)

    def _sized(self, size: tuple[int, int]) -> nn.Module:
        """The network for inputs of `size` (a multiple of the stride): `self.model` at the configured size, else
        a twin built on the meta device and given this network's tensors (rebuilt when they were replaced)."""
        if size == tuple(self.config.image_size):
            return self.model
        import copy

        from effdet import EfficientDet
        from effdet.config import set_config_writeable

        from kcomp.models._factory import build_with_weights

        first = next(self.model.parameters()).data_ptr()
        twin, ptr = self._twins.get(size, (None, 0))
        if twin is None or ptr != first:
            cfg = copy.deepcopy(self.config)
            set_config_writeable(cfg)
            cfg.image_size = size
            twin = build_with_weights(lambda: EfficientDet(cfg, pretrained_backbone=False), self.model.state_dict())
            self._twins[size] = (twin, first)
        return twin.train(self.model.training)

    def anchors_for(self, class_out: list[torch.Tensor]) -> torch.Tensor:
        """Anchor boxes of the (padded) input the outputs came from, read off the first level's feature map."""
        from effdet.anchors import Anchors

        fh, fw = class_out[0].shape[-2:]
        size = (int(fh) << int(self.config.min_level), int(fw) << int(self.config.min_level))
        if size == tuple(self.config.image_size):
            return self.anchors
        if size not in self._other_anchors:
            c = self.config
            boxes = Anchors(c.min_level, c.max_level, c.num_scales, c.aspect_ratios, c.anchor_scale, size).boxes
            self._other_anchors[size] = boxes.to(self.anchors.device)  # copied to the device once per size
        return self._other_anchors[size].to(self.anchors.device)  # a no-op unless the model moved since

    def decode(self, class_out: list[torch.Tensor], box_out: list[torch.Tensor]) -> torch.Tensor:
        """(B, MAX_DETECTIONS, 6) [x1, y1, x2, y2, score, label] in input pixels, clipped to the (padded) input,
        best first; per-class NMS at IoU 0.5 as DetBenchPredict does."""
        from effdet.bench import _batch_detection, _post_process

        class_out = [c.float() for c in class_out]
        box_out = [b.float() for b in box_out]
        anchors = self.anchors_for(class_out)
        points = min(int(self.config.max_detection_points), anchors.shape[0] * self.num_classes)
        cls_top, box_top, indices, classes = _post_process(class_out, box_out, num_levels=self.config.num_levels,
                                                           num_classes=self.num_classes, max_detection_points=points)
        det = _batch_detection(class_out[0].shape[0], cls_top, box_top, anchors, indices, classes,
                               None, None, max_det_per_image=MAX_DETECTIONS, soft_nms=False)
        fh, fw = class_out[0].shape[-2:]
        h, w = int(fh) << int(self.config.min_level), int(fw) << int(self.config.min_level)
        size = torch.tensor([w, h, w, h], device=det.device, dtype=det.dtype)
        boxes = det[..., :4].clamp(min=0).minimum(size)
        label = det[..., 5:6] - 1  # effdet's classes start at 1; its padding rows (class 0) become -1
        return torch.cat([boxes, det[..., 4:5], label], -1)


def create_det_model(name: str, num_classes: int, img_size: int, *, init: Init | None = None,
                     weights: str | None = None, weights_partial: bool = False) -> DetNet:
    """An EfficientDet `name` (effdet config) for `num_classes` at `img_size`, initialised as `init` says:
    pretrained as effdet's `create_model(pretrained=True)` does it (the COCO detector from the torch hub cache,
    its class head then reset for `num_classes`; configs without COCO weights: the timm backbone's ImageNet
    weights), a local file (`weights`, shorthand: an effdet state dict with bench `model.` prefixes stripped, a
    kcomp checkpoint, or timm weights of the backbone alone), or random init."""
    config = det_config(name, num_classes, img_size)
    init = init or Init(weights=weights, partial=weights_partial)
    net = DetNet(config, pretrained_effdet(config, init) if init.pretrained else None)
    if init.weights:
        load_det_weights(net, init.weights, partial=init.partial)
        init.source = file_record(init.weights)
    return net


def pretrained_effdet(config: Any, init: Init) -> nn.Module:
    """effdet's `create_model_from_config(config, pretrained=True, num_classes=...)`, loading its URL from the
    torch hub cache with `weights_only=True` (effdet's own call unpickles anything)."""
    import copy

    from effdet import EfficientDet
    from effdet.config import get_efficientdet_config

    if not config.url:  # effdet has no COCO weights for this config: ImageNet weights of the backbone (timm)
        return load_with(timm_source(config.backbone_name), init, lambda: EfficientDet(config), "effdet backbone")
    src = url_source(config.url, f"effdet {config.name} (COCO)")
    path = fetch(src)
    coco = copy.deepcopy(config)
    coco.num_classes = get_efficientdet_config(config.name).num_classes
    net = EfficientDet(coco, pretrained_backbone=False)
    net.load_state_dict(load_weights_file(path))  # strict, as effdet's load_pretrained
    if coco.num_classes != config.num_classes:
        net.reset_head(num_classes=int(config.num_classes))
    loaded(init, src, path, "effdet")
    return net


def load_det_weights(net: DetNet, path: str, *, partial: bool = False) -> None:
    """Whole-detector weights first; a file none of whose tensors fit the detector is tried as backbone weights.
    Tensors of another shape (COCO's 90-class head against ours) are skipped and logged."""
    from kcomp.models._factory import load_pretrained

    try:
        load_pretrained(net.model, path, partial=partial, into="detector")
    except BadInput as whole:
        if "no tensor matches" not in str(whole):
            raise
        try:
            load_pretrained(net.model.backbone, path, partial=partial, into="backbone")
        except BadInput:
            raise whole from None
