"""Every loss kcomp trains with, one place: classification losses for noisy labels (Cassava-style competitions),
segmentation (seg), masked BCE (ink) and EfficientDet's detection loss (det).

The classification losses take logits ``(N, C)`` and a target that is either int64 class indices ``(N,)`` or
soft/one-hot float targets ``(N, C)`` (mixup and cutmix produce soft ones), and return the scalar mean over the batch.
Logits are cast to float32 first so the tempered normalisations and power series stay accurate under autocast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kcomp.options import LOSS, check_values

LOSSES = ("ce", "bi_tempered", "taylor")
SEG_LOSSES = ("bce_dice", "bce", "dice", "lovasz", "focal")

LossFn = Callable[[Tensor, Tensor], Tensor]

# Keeps log_t(0) finite in the target term, as in the reference implementation.
_EPS = 1e-10
# Bisection halves the bracket once per step: the reference's 5 steps leave rows summing to ~0.97, 32 reach float32
# precision at negligible cost (the work is O(N*C) per step).
_BISECTION_STEPS = 32


def soft_targets(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Float32 ``(N, num_classes)`` targets from class indices or soft targets, with label smoothing applied.

    Smoothing is ``(1 - s) * t + s / C`` for both kinds, which is what ``F.cross_entropy(label_smoothing=s)`` does.
    Built with ``scatter_`` rather than ``F.one_hot`` so no range check syncs the device.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if target.ndim == 1:
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(f"1-D targets must be integer class indices, got {target.dtype}")
        soft = torch.zeros(target.shape[0], num_classes, dtype=torch.float32, device=target.device)
        soft.scatter_(1, target.long().unsqueeze(1), 1.0)
    elif target.ndim == 2:
        if target.shape[1] != num_classes:
            raise ValueError(f"soft targets have {target.shape[1]} classes, logits have {num_classes}")
        soft = target.float()
    else:
        raise ValueError(f"targets must be (N,) indices or (N, C) soft targets, got shape {tuple(target.shape)}")
    if smoothing > 0.0:
        soft = soft * (1.0 - smoothing) + smoothing / num_classes
    return soft


def _prepare(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"{target.shape[0]} targets for {logits.shape[0]} logits")
    return logits.float(), soft_targets(target, logits.shape[1], smoothing)


def soft_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.0, weight: Tensor | None = None
                       ) -> Tensor:
    """Cross-entropy against soft targets; for index targets it equals ``F.cross_entropy(label_smoothing=s)``.
    `weight` (C,) weighs each class's term (``--class-weights``) as ``F.cross_entropy(weight=w)`` does for
    probability targets: the mean over the batch of ``-sum_c w_c t_c log p_c``, the same for index, one-hot and mixed
    targets (torch's index-target mode would divide by the batch's summed weights instead)."""
    x, t = _prepare(logits, target, smoothing)
    if weight is not None:
        t = t * weight
    return -(t * F.log_softmax(x, dim=-1)).sum(-1).mean()


# --- Bi-tempered logistic loss (Amid, Warmuth, Anil, Koren 2019, arXiv:1906.03361) ---------------------------------


def log_t(u: Tensor, t: float) -> Tensor:
    """Tempered logarithm ``(u^(1-t) - 1) / (1-t)``; ``log`` at t=1. Bounded below by ``-1/(1-t)`` for t<1."""
    if t == 1.0:
        return u.log()
    return (u.pow(1.0 - t) - 1.0) / (1.0 - t)


def exp_t(u: Tensor, t: float) -> Tensor:
    """Tempered exponential ``[1 + (1-t) u]_+^(1/(1-t))``; heavy-tailed for t>1, finite support for t<1."""
    if t == 1.0:
        return u.exp()
    return (1.0 + (1.0 - t) * u).relu().pow(1.0 / (1.0 - t))


def compute_normalization_fixed_point(activations: Tensor, t: float, num_iters: int = 5) -> Tensor:
    """Normaliser ``Z`` with ``sum exp_t(a - Z) = 1`` for t>1, by the reference's fixed point. Shape (..., 1)."""
    mu = activations.amax(-1, keepdim=True)
    step0 = activations - mu
    normalized = step0
    for _ in range(num_iters):
        partition = exp_t(normalized, t).sum(-1, keepdim=True)
        normalized = step0 * partition.pow(1.0 - t)
    partition = exp_t(normalized, t).sum(-1, keepdim=True)
    return -log_t(1.0 / partition, t) + mu


def compute_normalization_binary_search(activations: Tensor, t: float, num_iters: int = 10) -> Tensor:
    """Normaliser for t<1 by bisection (the fixed point does not converge there). Shape (..., 1)."""
    mu = activations.amax(-1, keepdim=True)
    normalized = activations - mu
    # Classes further than 1/(1-t) below the max get zero mass whatever Z >= 0 is, so they do not widen the bracket.
    effective_dim = (normalized > -1.0 / (1.0 - t)).sum(-1, keepdim=True).to(activations.dtype)
    lower = torch.zeros_like(effective_dim)
    upper = -log_t(1.0 / effective_dim, t)
    for _ in range(num_iters):
        mid = (upper + lower) / 2.0
        too_small = exp_t(normalized - mid, t).sum(-1, keepdim=True) < 1.0
        lower = torch.where(too_small, lower, mid)
        upper = torch.where(too_small, mid, upper)
    return (upper + lower) / 2.0 + mu


def compute_normalization(activations: Tensor, t: float, num_iters: int = 5) -> Tensor:
    """Normaliser for any t>0: logsumexp at t=1, fixed point for t>1, bisection (>= 32 steps) for t<1."""
    if t == 1.0:
        return torch.logsumexp(activations, dim=-1, keepdim=True)
    if t > 1.0:
        return compute_normalization_fixed_point(activations, t, num_iters)
    return compute_normalization_binary_search(activations, t, max(num_iters, _BISECTION_STEPS))


def tempered_softmax(activations: Tensor, t: float, num_iters: int = 5) -> Tensor:
    """Tempered softmax over the last dim; plain softmax at t=1. Rows sum to 1 up to the normaliser's accuracy."""
    if t <= 0.0:
        raise ValueError(f"temperature must be > 0, got {t}")
    if t == 1.0:
        return activations.softmax(dim=-1)
    return exp_t(activations - compute_normalization(activations, t, num_iters), t)


class _BiTempered(torch.autograd.Function):
    """Per-example loss with the reference's closed-form gradient.

    Backpropagating through the normaliser's iterations would be approximate (and wrong through bisection, whose
    bracket updates are not differentiable); the closed form is exact for the converged normaliser and saves memory.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, t1: float, t2: float, num_iters: int
    ) -> Tensor:
        if t1 == 1.0 and t2 == 1.0:
            # KL(labels || softmax) via log_softmax, so huge margins cannot produce log(0).
            log_p = F.log_softmax(logits, dim=-1)
            probs = log_p.exp()
            per_class = labels * (torch.log(labels + _EPS) - log_p)
        else:
            probs = tempered_softmax(logits, t2, num_iters)
            match = labels * (log_t(labels + _EPS, t1) - log_t(probs, t1))
            # Zero-label classes contribute nothing even where log_t(p) is infinite (t1>=1 with zero-mass classes).
            match = torch.where(labels > 0, match, torch.zeros_like(match))
            per_class = match - (labels.pow(2.0 - t1) - probs.pow(2.0 - t1)) / (2.0 - t1)
        ctx.save_for_backward(probs, labels)
        ctx.t1, ctx.t2 = t1, t2
        return per_class.sum(-1)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        probs, labels = ctx.saved_tensors
        forget = probs.pow(ctx.t2 - ctx.t1)
        delta = (probs - labels) * forget
        # Classes outside the finite support (t2<1) have zero derivative; 0^negative would make them inf/nan.
        delta = torch.where(probs > 0, delta, torch.zeros_like(delta))
        escorts = probs.pow(ctx.t2)
        escorts = escorts / escorts.sum(-1, keepdim=True)
        grad = delta - escorts * delta.sum(-1, keepdim=True)
        return grad * grad_out.unsqueeze(-1), None, None, None, None


def bi_tempered_logistic_loss(logits: Tensor, target: Tensor, t1: float = 0.8, t2: float = 1.4,
                              smoothing: float = 0.0, num_iters: int = 5) -> Tensor:
    """Bi-tempered logistic loss: t1<1 bounds the loss against mislabelled outliers, t2>1 gives heavy tails that
    keep gradients alive for examples near noisy decision boundaries. t1=t2=1 is KL(target || softmax), i.e. cross
    entropy minus the target entropy (exactly CE for one-hot targets)."""
    _check_temperatures(t1, t2)
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    x, t = _prepare(logits, target, smoothing)
    return _BiTempered.apply(x, t, float(t1), float(t2), int(num_iters)).mean()


def _check_temperatures(t1: float, t2: float) -> None:
    if not 0.0 <= t1 < 2.0:
        raise ValueError(f"bi-tempered t1 must be in [0, 2), got {t1} (t1 < 1 bounds the loss)")
    if not t2 > 0.0:
        raise ValueError(f"bi-tempered t2 must be > 0, got {t2} (t2 > 1 gives heavy tails)")


# --- Taylor cross-entropy (Feng et al. 2020, "Can Cross Entropy Loss Be Robust to Label Noise?") --------------------


def taylor_cross_entropy(logits: Tensor, target: Tensor, n: int = 2, smoothing: float = 0.0) -> Tensor:
    """Order-n Taylor expansion of -log p around p=1: ``sum_c t_c sum_{k<=n} (1-p_c)^k / k``.

    Truncating the series bounds the loss (by ``sum_k 1/k``) so confidently mislabelled examples cannot dominate;
    n=1 is MAE on probabilities and n -> inf recovers cross entropy.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"taylor order n must be an integer >= 1, got {n!r}")
    x, t = _prepare(logits, target, smoothing)
    q = 1.0 - x.softmax(dim=-1)
    term = q
    series = q
    for k in range(2, n + 1):
        term = term * q
        series = series + term / k
    return (t * series).sum(-1).mean()


# --- Factory (task cls) ----------------------------------------------------------------------------------------------


def build_loss(name: str, *, smoothing: float = 0.0, t1: float = 0.8, t2: float = 1.4,
               taylor_n: int = 2, class_weights: Tensor | None = None) -> LossFn:
    """The loss named on the command line as ``loss(logits, target)``; bad names or parameters raise BadUsage, by the
    rules `train` checks its options with (`kcomp.options.LOSS`). `class_weights` weigh cross-entropy only."""
    check_values(LOSS, loss=name, smoothing=smoothing)
    if class_weights is not None and name != "ce":
        raise ValueError(f"class weights apply to the ce loss, not {name}")
    if name == "ce":
        return functools.partial(soft_cross_entropy, smoothing=smoothing, weight=class_weights)
    if name == "bi_tempered":
        check_values(LOSS, t1=t1, t2=t2)
        return functools.partial(bi_tempered_logistic_loss, t1=t1, t2=t2, smoothing=smoothing)
    check_values(LOSS, taylor_n=taylor_n)
    return functools.partial(taylor_cross_entropy, n=taylor_n, smoothing=smoothing)


# --- Segmentation (task seg) ---------------------------------------------------------------------------------------


def build_seg_loss(name: str, *, smoothing: float = 0.0) -> LossFn:
    """Loss on (B, C, H, W) logits and 0/1 targets (any dtype), computed in float32."""
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss

    check_values(LOSS, seg_loss=name, smoothing=smoothing)
    dice = DiceLoss("multilabel", from_logits=True)
    lovasz = LovaszLoss("multilabel", from_logits=True)
    focal = FocalLoss("multilabel")

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        y, t = logits.float(), target.float()
        if name == "lovasz":
            return lovasz(y, t)
        if name == "focal":
            return focal(y, t)
        soft = t * (1 - smoothing) + 0.5 * smoothing if smoothing else t
        bce = F.binary_cross_entropy_with_logits(y, soft)
        if name == "bce":
            return bce
        return dice(y, t) if name == "dice" else bce + dice(y, t)

    return loss


# --- Distillation from a teacher's out-of-fold probabilities (Hinton, Vinyals, Dean 2015, arXiv:1503.02531) ---------


def distillation_loss(logits: Tensor, target: Tensor, teacher: Tensor, *, label_loss: LossFn, alpha: float,
                      temperature: float = 1.0) -> Tensor:
    """``(1 - alpha) * label_loss(logits, target) + alpha * T^2 * CE(teacher_T, softmax(logits / T))``.

    ``teacher`` holds the teacher's probabilities ``(N, C)``; at temperature T they are softened to
    ``teacher^(1/T)`` renormalised (the softmax of its log-probabilities over T). T^2 keeps the soft term's gradient
    scale independent of T. At alpha=1 and T=1 this is exactly the cross-entropy to the teacher's probabilities, at
    alpha=0 exactly ``label_loss``.
    """
    if alpha == 0.0:
        return label_loss(logits, target)
    x = logits.float()
    q = teacher.float()
    if temperature != 1.0:
        q = torch.softmax(q.clamp_min(1e-12).log() / temperature, dim=-1)
        x = x / temperature
    soft = -(q * F.log_softmax(x, dim=-1)).sum(-1).mean() * (temperature * temperature)
    if alpha == 1.0:
        return soft
    return (1.0 - alpha) * label_loss(logits, target) + alpha * soft


def build_distillation(label_loss: LossFn, *, alpha: float, temperature: float = 1.0) -> LossFn:
    """``loss(logits, packed)`` for the training loop, ``packed`` being ``(N, 2C)``: the label targets (one-hot or
    soft, C columns) then the teacher's probabilities (C columns), as `pack_teacher` builds them. Batch mixing
    (mixup/cutmix) mixes the packed rows as one, so the label and teacher halves stay paired."""
    check_values(LOSS, distill_alpha=alpha, distill_temperature=temperature)

    def loss(logits: Tensor, packed: Tensor) -> Tensor:
        c = logits.shape[-1]
        if packed.ndim != 2 or packed.shape[1] != 2 * c:
            raise ValueError(f"distillation targets must be (N, {2 * c}) [labels | teacher], got "
                             f"{tuple(packed.shape)}")
        return distillation_loss(logits, packed[:, :c], packed[:, c:], label_loss=label_loss, alpha=alpha,
                                 temperature=temperature)

    return loss


# --- Masked BCE (task ink) -----------------------------------------------------------------------------------------


def masked_bce(*, smoothing: float, ignore: int) -> LossFn:
    """BCE on (B, H, W) logits against 0/1 targets, averaged over the pixels whose target is not `ignore` (outside
    the papyrus mask); targets are smoothed towards 0.5 by `smoothing`."""

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        valid = target != ignore
        t = target.float().clamp(max=1)
        t = t * (1 - smoothing) + 0.5 * smoothing
        per_pixel = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
        return (per_pixel * valid).sum() / valid.sum().clamp_min(1)

    return loss


# --- Detection (task det) ------------------------------------------------------------------------------------------


class DetLoss(nn.Module):
    """DetBenchTrain's loss, focal + huber box loss, on anchors labelled beforehand (`AnchorCollate`, in the loader's
    workers, as effdet's own training loader labels them).

    `target` is `AnchorCollate`'s dict: per pyramid level the class targets (B, H, W, A) and box targets
    (B, H, W, 4A), and the positives per image (B,)."""

    def __init__(self, config: Any) -> None:
        from effdet.loss import DetectionLoss

        super().__init__()
        self.fn = DetectionLoss(config)

    def forward(self, out: tuple[list[Tensor], list[Tensor]], target: dict[str, Any]) -> Tensor:
        class_out, box_out = out
        loss, _, _ = self.fn([c.float() for c in class_out], [b.float() for b in box_out], target["cls"],
                             target["box"], target["positives"])
        return loss


def pack_teacher(target: Tensor, teacher: Tensor) -> Tensor:
    """``(N, 2C)`` float32 [one-hot or soft label targets | teacher probabilities] for `build_distillation`."""
    if teacher.ndim != 2:
        raise ValueError(f"teacher probabilities must be (N, C), got shape {tuple(teacher.shape)}")
    return torch.cat([soft_targets(target, teacher.shape[1]), teacher.float()], dim=1)
