"""Noisy-label losses: reductions to cross entropy, tempered-softmax normalisation, boundedness, gradients, factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kcomp.errors import BadUsage
from kcomp.models.losses import (
    LOSSES,
    bi_tempered_logistic_loss,
    build_loss,
    log_t,
    soft_cross_entropy,
    soft_targets,
    taylor_cross_entropy,
    tempered_softmax,
)

N, C = 16, 5


def _batch(seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, generator=g) * scale
    target = torch.randint(0, C, (N,), generator=g)
    return logits, target


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_soft_ce_matches_torch_for_index_targets(smoothing: float) -> None:
    logits, target = _batch()
    expected = F.cross_entropy(logits, target, label_smoothing=smoothing)
    assert torch.allclose(soft_cross_entropy(logits, target, smoothing), expected, atol=1e-6)
    # The same labels given as one-hot rows are smoothed identically.
    one_hot = F.one_hot(target, C).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot, smoothing), expected, atol=1e-6)


def test_soft_targets_smoothing_and_validation() -> None:
    soft = soft_targets(torch.tensor([2]), 4, smoothing=0.2)
    assert torch.allclose(soft, torch.tensor([[0.05, 0.05, 0.85, 0.05]]))
    assert soft.dtype == torch.float32
    with pytest.raises(ValueError):
        soft_targets(torch.tensor([0.0, 1.0]), 4)  # 1-D float is neither indices nor soft rows
    with pytest.raises(ValueError):
        soft_targets(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError):
        soft_targets(torch.tensor([0]), 4, smoothing=1.0)


def test_losses_compute_in_float32_for_half_logits() -> None:
    logits, target = _batch()
    for loss in (soft_cross_entropy, bi_tempered_logistic_loss, taylor_cross_entropy):
        value = loss(logits.half(), target)
        assert value.dtype == torch.float32 and value.ndim == 0
        assert torch.allclose(value, loss(logits.half().float(), target))


def test_bi_tempered_with_unit_temperatures_is_cross_entropy() -> None:
    logits, target = _batch(scale=5.0)
    value = bi_tempered_logistic_loss(logits, target, t1=1.0, t2=1.0)
    assert torch.allclose(value, F.cross_entropy(logits, target), atol=1e-5)
    # With smoothed targets it is the KL divergence: CE minus the (constant) target entropy.
    soft = soft_targets(target, C, 0.1)
    entropy = -(soft * soft.log()).sum(-1).mean()
    smoothed = bi_tempered_logistic_loss(logits, target, t1=1.0, t2=1.0, smoothing=0.1)
    assert torch.allclose(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1) - entropy, atol=1e-5)


@pytest.mark.parametrize("t", [0.5, 1.0, 1.5, 2.0])
def test_tempered_softmax_rows_sum_to_one(t: float) -> None:
    logits, _ = _batch(scale=3.0)
    probs = tempered_softmax(logits, t, num_iters=20)
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(N), atol=1e-5)
    # The reference default of 5 fixed-point iterations is already close.
    assert torch.allclose(tempered_softmax(logits, t).sum(-1), torch.ones(N), atol=3e-3)
    # Order is preserved: the tempered softmax is monotone in the logits.
    assert torch.equal(probs.argmax(-1), logits.argmax(-1))


def test_tempered_softmax_has_finite_support_below_one() -> None:
    probs = tempered_softmax(torch.tensor([[10.0, 0.0, -10.0]]), 0.5)
    assert probs[0, 2] == 0.0 and probs[0, 0] > 0.9
    assert torch.allclose(probs.sum(), torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize(("t1", "t2"), [(0.8, 1.4), (0.2, 1.0), (1.0, 1.0), (0.5, 0.8), (0.9, 2.0)])
def test_bi_tempered_gradients_are_finite(t1: float, t2: float) -> None:
    logits, target = _batch(scale=4.0)
    logits[0] = torch.tensor([60.0, -60.0, 0.0, 0.0, 0.0])  # extreme margins, including a confident mistake
    target[0] = 1
    soft = 0.7 * F.one_hot(target, C).float() + 0.3 * F.one_hot(target.flip(0), C).float()  # mixup-style targets
    for tgt in (target, soft):
        x = logits.clone().requires_grad_(True)
        loss = bi_tempered_logistic_loss(x, tgt, t1=t1, t2=t2, smoothing=0.05)
        loss.backward()
        assert torch.isfinite(loss) and loss >= 0
        assert x.grad is not None and torch.isfinite(x.grad).all()
        # Softmax-like losses are shift invariant, so each row's gradient sums to zero.
        assert torch.allclose(x.grad.sum(-1), torch.zeros(N), atol=1e-5)


@pytest.mark.parametrize(("t1", "t2"), [(0.8, 1.4), (0.5, 2.0), (1.0, 1.0), (0.3, 1.0)])
def test_bi_tempered_closed_form_gradient_matches_autograd(t1: float, t2: float) -> None:
    logits, target = _batch(scale=2.0)
    x = logits.clone().requires_grad_(True)
    bi_tempered_logistic_loss(x, target, t1=t1, t2=t2, smoothing=0.1, num_iters=40).backward()
    # Reference: autograd straight through a converged (differentiable) fixed point.
    ref = logits.clone().requires_grad_(True)
    labels = soft_targets(target, C, 0.1)
    probs = tempered_softmax(ref, t2, num_iters=40)
    per_class = labels * (log_t(labels + 1e-10, t1) - log_t(probs, t1)) - (
        labels.pow(2 - t1) - probs.pow(2 - t1)) / (2 - t1)
    per_class.sum(-1).mean().backward()
    assert x.grad is not None and ref.grad is not None
    assert torch.allclose(x.grad, ref.grad, atol=1e-5)


def test_bi_tempered_is_bounded_for_confident_mistakes() -> None:
    target = torch.tensor([1])
    values = {}
    for margin in (10.0, 100.0, 1000.0, 1e5):
        logits = torch.tensor([[margin, 0.0, 0.0, 0.0, 0.0]])
        ce = F.cross_entropy(logits, target)
        values[margin] = float(bi_tempered_logistic_loss(logits, target, t1=0.8, t2=1.4))
        assert ce > 0.99 * margin
        # As p_y -> 0 the loss rises to -log_t(0, t1) = 1/(1-t1) = 5 and no further, whatever the margin.
        assert values[margin] <= 5.0 + 1e-4
    assert values[10.0] < values[100.0] < values[1000.0] <= values[1e5]
    assert values[1e5] > 4.9
    # With t1=1 (no boundedness) the same mistake grows with the margin.
    unbounded = bi_tempered_logistic_loss(torch.tensor([[1000.0, 0, 0, 0, 0]]), target, t1=1.0, t2=1.4)
    assert unbounded > 3 * values[1000.0]


def test_taylor_approaches_cross_entropy_for_large_order() -> None:
    logits, target = _batch(scale=0.5)  # moderate probabilities, where the series converges quickly
    ce = F.cross_entropy(logits, target)
    assert abs(taylor_cross_entropy(logits, target, n=200) - ce) < 1e-2
    # Truncation error shrinks monotonically as the order grows (all series terms are positive).
    errors = [float(ce - taylor_cross_entropy(logits, target, n=n)) for n in (1, 2, 4, 16, 200)]
    assert all(a > b >= 0 for a, b in zip(errors, errors[1:]))


def test_taylor_order_one_is_mean_absolute_error() -> None:
    logits, target = _batch()
    p_y = logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(taylor_cross_entropy(logits, target, n=1), (1 - p_y).mean(), atol=1e-6)


def test_taylor_is_bounded_and_accepts_soft_targets() -> None:
    logits = torch.tensor([[500.0, 0.0, 0.0]])
    target = torch.tensor([2])
    for n in (2, 4):
        assert taylor_cross_entropy(logits, target, n=n) <= sum(1 / k for k in range(1, n + 1)) + 1e-6
    logits, target = _batch()
    one_hot = F.one_hot(target, C).float()
    assert torch.allclose(taylor_cross_entropy(logits, target, n=4, smoothing=0.1),
                          taylor_cross_entropy(logits, one_hot, n=4, smoothing=0.1))
    with pytest.raises(ValueError):
        taylor_cross_entropy(logits, target, n=0)


def test_build_loss_dispatches_with_parameters() -> None:
    logits, target = _batch()
    assert LOSSES == ("ce", "bi_tempered", "taylor")
    assert torch.equal(build_loss("ce", smoothing=0.1)(logits, target),
                       soft_cross_entropy(logits, target, smoothing=0.1))
    assert torch.equal(build_loss("bi_tempered", t1=0.7, t2=1.2, smoothing=0.05)(logits, target),
                       bi_tempered_logistic_loss(logits, target, t1=0.7, t2=1.2, smoothing=0.05))
    assert torch.equal(build_loss("taylor", taylor_n=4)(logits, target),
                       taylor_cross_entropy(logits, target, n=4))
    for name in LOSSES:
        value = build_loss(name)(logits, target)
        assert value.ndim == 0 and math.isfinite(float(value))


def test_build_loss_rejects_bad_usage() -> None:
    with pytest.raises(BadUsage, match="ce, bi_tempered, taylor"):
        build_loss("focal")
    with pytest.raises(BadUsage, match="smoothing"):
        build_loss("ce", smoothing=1.0)
    with pytest.raises(BadUsage, match="t1"):
        build_loss("bi_tempered", t1=2.0)
    with pytest.raises(BadUsage, match="t2"):
        build_loss("bi_tempered", t2=0.0)
    with pytest.raises(BadUsage, match="taylor"):
        build_loss("taylor", taylor_n=0)
