"""Model construction: timm classifiers wrapped so normalisation happens inside the model, on the device."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kcomp.artifacts.checkpoint import load_weights_file
from kcomp.errors import BadInput, BadUsage
from kcomp.models.pretrained import Init, file_record, load_with, timm_cfg, timm_source


class Normalized(nn.Module):
    """Takes uint8 (or 0..255 float) images and normalises them itself, so no caller can forget to, and the host
    only ever ships uint8 (4x less PCIe traffic than float32)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        # constants, not weights: made on the CPU even inside `with torch.device("meta")` (see `build_with_weights`)
        self.register_buffer("mean", torch.tensor(mean, device="cpu").view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std, device="cpu").view(1, -1, 1, 1) * 255.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.std)


def build_with_weights(build: Callable[[], nn.Module], state: dict[str, Any], source: str | Path | None = None
                       ) -> nn.Module:
    """A model built straight onto saved weights. Built on the meta device, nothing is randomly initialised only to be
    overwritten (random init is most of a model build on a CPU, paid by every fold and checkpoint `oof`/`tta` predicts
    with; `cls tta ... incl. model build` in benchmarks/RESULTS.md). A model that keeps tensors outside its state dict,
    or cannot be built on meta, is built and loaded the usual way, which also reports mismatched keys (as bad input
    naming `source`, the checkpoint: it holds another architecture than the run's config describes)."""
    try:
        with torch.device("meta"):
            model = build()
        # assign=True would adopt the saved dtypes; keep the module's, as plain loading does (fp16 `pack --half`)
        own = model.state_dict()
        state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, assign=True)
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model
    except Exception:  # noqa: BLE001 - the plain path below raises the real error, if any
        pass
    model = build()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip().rstrip(":") for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        detail = "; ".join(lines[:2])
        raise BadInput(f"weights do not fit the model this run builds: {detail:.300}", path=source) from None
    return model


def freeze_unused(net: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Freeze the parameters of the submodules a forward pass never runs, and return their names. smp's PSPNet keeps
    its encoder's stages past `encoder_depth` (3): under DDP their gradients never come, and the reducer fails at the
    second step ("Expected to have finished reduction in the prior iteration"). Frozen, they stay in the state dict
    (checkpoints load either way), the optimizer skips them (as it did: they never had a gradient) and DDP does not
    wait for them. The pass runs on the meta device: shapes only, no compute, whatever the model's size."""
    from torch.func import functional_call

    called: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda m, args: called.add(id(m))) for m in net.modules()]
    meta = {k: torch.empty_like(v, device="meta") for k, v in (*net.named_parameters(), *net.named_buffers())}
    try:
        with torch.no_grad():
            functional_call(net, meta, (torch.empty(input_shape, device="meta"),))
    except (RuntimeError, NotImplementedError, ValueError):  # an op without a meta kernel: freeze nothing
        return []
    finally:
        for h in hooks:
            h.remove()
    owners = dict(net.named_modules())
    unused = [k for k, p in net.named_parameters() if id(owners[k.rpartition(".")[0]]) not in called]
    for k in unused:
        net.get_parameter(k).requires_grad_(False)
    return unused


def create_cls_model(name: str, num_classes: int, *, init: Init | None = None, drop_rate: float = 0.0,
                     drop_path_rate: float = 0.0, weights: str | None = None,
                     weights_partial: bool = False) -> Normalized:
    """A timm classifier `name` (a pretrained tag may follow, `resnet18.a1_in1k`: its normalisation is taken from
    that tag's config), initialised as `init` says (`weights`: shorthand for a local file)."""
    import timm

    if not timm.is_model(name):
        raise BadUsage(f"unknown timm model {name!r} (see timm.list_models())")
    init = init or Init(weights=weights, partial=weights_partial)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if init.pretrained:
        net = load_with(timm_source(name), init, lambda: timm.create_model(name, pretrained=True, **kwargs), "timm")
    else:
        timm_cfg(name)  # a tag that does not exist is the user's error, not timm's RuntimeError
        net = timm.create_model(name, pretrained=False, **kwargs)
    load_weights(net, init)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return Normalized(net, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))


def load_weights(net: nn.Module, init: Init, into: str = "model") -> None:
    """`init.weights` (a local file) into `net` when given, recorded in `init.source`."""
    if init.weights:
        load_pretrained(net, init.weights, partial=init.partial, into=into)
        init.source = file_record(init.weights)


def strip_prefixes(state: dict[str, Any], prefixes: Sequence[str] = ("module.", "_orig_mod.", "net.", "model.")
                   ) -> dict[str, Any]:
    """DDP, torch.compile, kcomp's wrapper and effdet benches all prefix keys; weights should load across them."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


# The share of a model's tensors (by name and shape) that --weights must fill: fine-tuning on other classes skips
# the classifier (2 of resnet18's 122), a stem with other input channels one; another architecture's file fills
# far fewer (resnet26's: 97 of resnet18's 122) and would train a half-random model. --weights-partial accepts it.
MIN_WEIGHTS_SHARE = 0.9


def load_pretrained(net: nn.Module, path: str | Path, *, partial: bool = False, into: str = "model"
                    ) -> tuple[list[str], list[str]]:
    """Load a timm/smp state dict or a kcomp checkpoint into `net` (the `into` part of a model). Tensors of another
    shape (a head for another number of classes) are skipped; a file that fills less than MIN_WEIGHTS_SHARE of
    `net` is refused unless `partial`, and one that fills nothing always is. Logs how many tensors loaded."""
    from kcomp import console

    obj = load_weights_file(path)
    if isinstance(obj, dict) and "schema" in obj and "model" in obj:
        obj = obj["model"]
    elif isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInput("does not hold a state dict of tensors", path=path)
    own = net.state_dict()
    state = strip_prefixes(obj)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise BadInput(f"no tensor matches the model's parameters (first key {next(iter(state), None)!r})", path=path)
    filled = f"fills {len(usable)} of the {len(own)} tensors of the {into}"
    if len(usable) < MIN_WEIGHTS_SHARE * len(own) and not partial:
        raise BadInput(f"{filled}, fewer than {MIN_WEIGHTS_SHARE:.0%} (weights of another architecture?); "
                       f"--weights-partial loads them anyway", path=path)
    net.load_state_dict(usable, strict=False)
    skipped = [k for k in state if k not in usable]
    missing = [k for k in own if k not in usable]
    console.log(f"weights: {path} {filled}" + (f"; {len(skipped)} of its tensors unused (e.g. {skipped[0]})"
                                                 if skipped else ""))
    return skipped, missing
