"""The optimizer, its learning-rate schedule and how a training step uses them, from timm's own machinery:
`timm.optim.create_optimizer_v2` (every optimizer timm registers, weight decay off norms and biases, layer-wise LR
decay through the model's `group_matcher`), `timm.scheduler` (per-update schedules with warmup; a schedule keeps
what it needs in its `state_dict`, which last.pt stores), SAM from pytorch-optimizer, and timm's gradient clipping.

Every schedule answers timm's two calls: `step_update(num_updates)` after each optimizer step and
`step(epoch, metric)` after each validation. Two are not timm's: `plateau` is torch's ReduceLROnPlateau (timm's
wrapper is deprecated and does not save its counters, so a resumed run would forget them) behind a linear warmup,
and `onecycle` is torch's OneCycleLR.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from timm.scheduler.scheduler import Scheduler

from kcomp.errors import BadUsage

# timm.scheduler's per-update schedules, then the two built here on torch's
TIMM_SCHEDULES = ("cosine", "tanh", "step", "wsd", "constant")
SCHEDULES = (*TIMM_SCHEDULES, "plateau", "onecycle")
CLIP_MODES = ("norm", "value", "agc")  # timm.utils.dispatch_clip_grad
WARMUP_START = 0.01  # warmup starts at this share of the peak LR (kcomp's schedule before timm's)


def optimizer_names() -> list[str]:
    """`--opt` accepts timm's registered optimizers."""
    from timm.optim import list_optimizers

    return list(list_optimizers())


def takes_momentum(name: str) -> bool:
    """Whether `--momentum` means anything for optimizer `name` (sgd, momentum, rmsprop, lars...)."""
    from timm.optim import get_optimizer_info

    return name in optimizer_names() and get_optimizer_info(name).has_momentum


def build_optimizer(model: torch.nn.Module, opts: Any) -> torch.optim.Optimizer:
    """`--opt` over timm's parameter groups (no weight decay on norms, biases and the model's `no_weight_decay()`;
    with `--layer-decay`, one group per layer and decay), wrapped in SAM with `--sam`. Torch's AdamW/Adam/SGD take
    the fused kernel when every parameter is on CUDA: one launch for all of them, step counters on the device and,
    with fp16, the GradScaler's inf check inside the kernel instead of a host sync per step."""
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, opts)
    params = [p for g in groups for p in g["params"]]
    extra = {"fused": True} if params and all(p.is_cuda for p in params) and _fusable(opts.opt) else {}

    def make(groups: Any, **_: Any) -> torch.optim.Optimizer:
        return create_optimizer_v2(groups, opt=opts.opt, lr=opts.lr, weight_decay=opts.weight_decay,
                                   momentum=opts.momentum, **extra)

    if not opts.sam:
        return make(groups)
    from pytorch_optimizer import SAM

    return SAM(groups, make, rho=opts.sam_rho)


def _fusable(name: str) -> bool:
    import inspect

    from timm.optim import get_optimizer_info

    cls = get_optimizer_info(name).opt_class
    return isinstance(cls, type) and cls.__module__.startswith("torch.optim") and \
        "fused" in inspect.signature(cls).parameters


def param_groups(model: torch.nn.Module, opts: Any) -> list[dict[str, Any]]:
    """timm's parameter groups. Without layer decay: [decay, no decay], the order kcomp's checkpoints have always
    held (torch matches saved optimizer state to groups by position). With it: timm's groups, each with the
    `lr_scale` = layer_decay ** (top layer - its layer) that the schedules apply."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    no_decay = getattr(model, "no_weight_decay", set)()
    if opts.layer_decay is None:
        # split at a unit decay, then set: at --weight-decay 0 too, the two groups kcomp's checkpoints hold
        groups = sorted(param_groups_weight_decay(model, 1.0, no_weight_decay_list=no_decay),
                        key=lambda g: g["weight_decay"] == 0.0)  # decayed first; stable
        return [g | {"weight_decay": g["weight_decay"] * opts.weight_decay} for g in groups]
    return param_groups_layer_decay(_layered(model, opts), weight_decay=opts.weight_decay,
                                    layer_decay=opts.layer_decay, no_weight_decay_list=no_decay)


class _Prefixed:
    """A model seen by timm's layer-decay grouping through the `group_matcher` of the timm network at `prefix`
    inside it (the model itself, an encoder, a backbone): that network's layers keep their order, everything
    outside it (decoder, neck, head) is the top layer and trains at the full LR."""

    def __init__(self, model: torch.nn.Module, prefix: str, matcher: dict[str, Any]) -> None:
        self.model, self.prefix, self.matcher = model, prefix, matcher

    def named_parameters(self) -> Any:
        return self.model.named_parameters()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        if not self.prefix:
            return self.matcher

        def under(pattern: str) -> str:  # '^conv1|bn1' -> '^encoder\\.(?:conv1|bn1)', capture groups kept
            return "^" + re.escape(self.prefix + ".") + "(?:" + re.sub(r"(^|\||\()\^", r"\1", pattern) + ")"

        return {k: v if v is None else (under(v) if isinstance(v, str) else [(under(p), s) for p, s in v])
                for k, v in self.matcher.items()}


def _layered(model: torch.nn.Module, opts: Any) -> _Prefixed:
    """The model as layer decay groups it, by the first timm network in it; refuses a model without one."""
    for name, module in model.named_modules():
        matcher = _matcher(module)
        if matcher is not None:
            return _Prefixed(model, name, matcher)
    raise BadUsage(f"--layer-decay: model {opts.model} ({opts.task}) has no timm layer grouping (group_matcher) to "
                   f"decay the LR over; it applies to timm networks and to models built on a timm encoder or "
                   f"backbone (seg: tu-<timm name>)")


def _matcher(module: torch.nn.Module) -> dict[str, Any] | None:
    """A timm network's fine layer matcher. A features-only network (an encoder, a backbone) has none of its own
    but keeps its parameters' names and its architecture's name: the full network's matcher, built on the meta
    device (no memory, no weights), orders them."""
    if callable(getattr(module, "group_matcher", None)):
        return module.group_matcher(coarse=False)
    arch = (getattr(module, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        return None
    import timm

    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False).group_matcher(coarse=False)


def build_scheduler(optimizer: torch.optim.Optimizer, opts: Any, steps_per_epoch: int, *,
                    higher_is_better: bool = True) -> Any:
    """`--sched` in optimizer updates: `--warmup-epochs` of linear warmup from WARMUP_START x lr, then the
    schedule over the remaining updates, down to `--min-lr-ratio` x lr where it decays (cosine: the schedule kcomp
    always had). LRs are per group times the group's `lr_scale` (layer decay). `higher_is_better`: the direction
    of the validation metric a plateau watches."""
    optimizer = getattr(optimizer, "base_optimizer", optimizer)  # SAM's: the same parameter groups
    total = steps_per_epoch * opts.epochs
    warmup = int(opts.warmup_epochs * steps_per_epoch)
    min_lr, warmup_lr = opts.min_lr_ratio * opts.lr, WARMUP_START * opts.lr
    if opts.sched == "plateau":
        return Plateau(optimizer, warmup_t=warmup, warmup_lr_init=warmup_lr, lr_min=min_lr,
                       mode="max" if higher_is_better else "min", factor=opts.decay_rate,
                       patience=opts.plateau_patience)
    if opts.sched == "onecycle":
        return OneCycle(optimizer, opts, total, warmup)
    from timm.scheduler import create_scheduler_v2

    decay = opts.decay_epochs * steps_per_epoch if opts.decay_epochs is not None else None
    if opts.sched == "step" and decay is None:
        decay = max(1, total // 3)
    if opts.sched == "wsd" and decay is not None and not 1 <= decay <= total - warmup:
        raise BadUsage(f"--decay-epochs {opts.decay_epochs}: wsd's decay ({decay:g} steps) must fit in the "
                       f"{total - warmup} steps after warmup (--epochs {opts.epochs})")
    # warmup_prefix: the schedule proper runs over the updates after warmup (updates_per_epoch=1: counts are updates)
    scheduler, _ = create_scheduler_v2(optimizer, opts.sched, num_epochs=max(1, total - warmup), decay_epochs=decay,
                                       decay_rate=opts.decay_rate, min_lr=min_lr, warmup_lr=warmup_lr,
                                       warmup_epochs=warmup, warmup_prefix=True, step_on_epochs=False,
                                       updates_per_epoch=1)
    return scheduler


class Plateau(Scheduler):
    """torch's ReduceLROnPlateau on the validation metric (`step(epoch, metric)`), after a linear warmup over the
    first `warmup_t` updates. Its whole state (best, bad epochs, cooldown, reduced LRs) is in `state_dict`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_t: int, warmup_lr_init: float, lr_min: float,
                 mode: str, factor: float, patience: int) -> None:
        super().__init__(optimizer, "lr", t_in_epochs=False)  # every group at its base LR x lr_scale
        self.warmup_t, self.warmup_lr_init, self.updates = warmup_t, warmup_lr_init, 0
        if warmup_t:
            self.update_groups(warmup_lr_init)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=factor, patience=patience,
            min_lr=[lr_min * g.get("lr_scale", 1.0) for g in optimizer.param_groups])

    def _get_lr(self, t: int) -> list[float]:
        return [self.warmup_lr_init + t * (v - self.warmup_lr_init) / self.warmup_t for v in self.base_values]

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        self.updates = num_updates
        if num_updates < self.warmup_t:
            self.update_groups(self._get_lr(num_updates))
        elif num_updates == self.warmup_t:
            self.update_groups(self.base_values)

    def step(self, epoch: int, metric: float | None = None) -> None:
        """Epochs that end inside the warmup do not count towards the plateau."""
        if metric is not None and self.updates >= self.warmup_t:
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        self.plateau.load_state_dict(state["plateau"])


class OneCycle:
    """torch's OneCycleLR in timm's calls: up from WARMUP_START x lr over the warmup (at least one update), down
    to `--min-lr-ratio` x lr (cosine) at the last update, momentum (or Adam's beta1) cycled the other way."""

    def __init__(self, optimizer: torch.optim.Optimizer, opts: Any, total: int, warmup: int) -> None:
        div = 1 / WARMUP_START
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[opts.lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups],
            total_steps=max(2, total), pct_start=min(max(warmup, 1), total - 1) / max(2, total), div_factor=div,
            final_div_factor=WARMUP_START / max(opts.min_lr_ratio, 1e-12),
            cycle_momentum=bool({"momentum", "betas"} & set(optimizer.defaults)))
        self.total = max(2, total)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        if num_updates < self.total:  # OneCycleLR refuses a step past its last
            self.sched.step()

    def step(self, epoch: int, metric: float | None = None) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state)


def check_precision(opts: Any, dtype: torch.dtype | None) -> None:
    """SAM steps twice per update from two backward passes; fp16's loss scaling would have to skip or rescale
    each of them on its own, which GradScaler's one-step protocol does not do: bf16 or fp32 only."""
    if opts.sam and dtype == torch.float16:
        raise BadUsage(f"--sam with --amp {opts.amp} trains in fp16, whose loss scaling SAM's two passes do not "
                       f"support; use --amp bf16 (Ampere or later) or --amp off")


def load_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    """A last.pt written before timm's schedules holds a LambdaLR's state: the schedule it computed (warmup then
    cosine) is now a function of the update count, which the position holds, and the optimizer's saved LR is the
    one the next step uses; there is nothing to carry over."""
    if "lr_lambdas" in state and not isinstance(scheduler, (Plateau, OneCycle)):
        return
    scheduler.load_state_dict(state)


def clip_gradients(params: Any, opts: Any) -> None:
    """`--clip-grad` in `--clip-mode` (timm's dispatch: total norm, each value, or adaptive clipping), on
    gradients already unscaled."""
    if opts.clip_grad is not None:
        from timm.utils import dispatch_clip_grad

        dispatch_clip_grad(params, opts.clip_grad, mode=opts.clip_mode)
