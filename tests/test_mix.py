"""Mixup/CutMix: reproducible from a generator, correct targets and pixels, no host reads of device tensors."""

from __future__ import annotations

import pytest
import torch

from kcomp.data.mix import mix_batch, one_hot

N, K = 4, 6
LABELS = torch.tensor([0, 1, 2, 3])  # distinct from their flipped partners, so each row's lam is readable


def _images(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (N, 3, 16, 20), generator=g, dtype=torch.uint8)
    return torch.rand(N, 3, 16, 20, generator=g).to(dtype)


def _mix(x: torch.Tensor, seed: int, y: torch.Tensor = LABELS, **kw: float) -> tuple[torch.Tensor, torch.Tensor]:
    args = {"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 1.0} | kw
    return mix_batch(x, y, K, generator=torch.Generator().manual_seed(seed), **args)  # type: ignore[arg-type]


def test_one_hot() -> None:
    out = one_hot(torch.tensor([2, 0]), 3)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    soft = torch.tensor([[0.25, 0.75, 0.0]], dtype=torch.float64)
    assert torch.equal(one_hot(soft, 3), soft.float())
    with pytest.raises(ValueError):
        one_hot(soft, 4)


def test_same_seed_same_output_and_seeds_matter() -> None:
    x = _images()
    outputs = []
    for seed in range(6):
        first, second = _mix(x, seed), _mix(x, seed)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        outputs.append(first[1])
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_generator_advances_identically_whatever_happens() -> None:
    """Per-step re-seeding is the contract, but the stream should not depend on the branch taken either."""
    states = []
    for kw in ({"prob": 0.0}, {"prob": 1.0}, {"prob": 1.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}):
        g = torch.Generator().manual_seed(7)
        mix_batch(_images(), LABELS, K, generator=g, **{"mixup_alpha": 1.0, "cutmix_alpha": 1.0} | kw)
        states.append(g.get_state())
    assert all(torch.equal(states[0], s) for s in states[1:])


def test_target_rows_sum_to_one_and_both_modes_occur() -> None:
    x = _images()
    modes = set()
    for seed in range(40):
        mixed, targets = _mix(x, seed)
        assert targets.shape == (N, K) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(-1), torch.ones(N), atol=1e-6)
        # CutMix leaves some pixels exactly untouched; mixup blends every pixel of distinct images.
        lam = float(targets[0, 0])
        if lam < 1.0:
            modes.add("cutmix" if (mixed[0] == x[0]).any() else "mixup")
    assert modes == {"cutmix", "mixup"}  # switch_prob=0.5 picks each mode over 40 draws


def test_mixup_blends_with_the_flipped_batch() -> None:
    x = _images()
    for seed in range(5):
        mixed, targets = _mix(x, seed, cutmix_alpha=0.0)
        lam = targets[0, 0]  # weight of row 0's own label (its partner is row N-1, label 3)
        assert 0.0 < lam < 1.0
        assert torch.allclose(targets[0, 3], 1 - lam)
        assert torch.allclose(targets[LABELS, LABELS], lam.expand(N))  # one lam for the whole batch
        assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_cutmix_pastes_a_box_whose_area_is_the_target_weight() -> None:
    x = _images()
    flipped = x.flip(0)
    boxes = 0
    for seed in range(10):
        mixed, targets = _mix(x, seed, mixup_alpha=0.0)
        inside = (mixed != x).any(dim=1)  # (N, H, W); x and its flip differ at every pixel (random floats)
        assert torch.equal(inside, inside[:1].expand_as(inside))  # the same box for every image
        box = inside[0]
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if rows.numel():
            boxes += 1
            # The changed region is exactly a rectangle.
            rect = torch.zeros_like(box)
            rect[int(rows.min()):int(rows.max()) + 1, int(cols.min()):int(cols.max()) + 1] = True
            assert torch.equal(box, rect)
        mask = inside[:, None].expand_as(x)
        assert torch.equal(mixed[mask], flipped[mask])
        assert torch.equal(mixed[~mask], x[~mask])
        area = box.float().mean()
        assert torch.allclose(targets[0, 3], area, atol=1e-6)  # weight on the pasted (flipped) image's label
        assert torch.allclose(targets[0, 0], 1 - area, atol=1e-6)
    assert boxes >= 5


@pytest.mark.parametrize("kw", [{"prob": 0.0}, {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}])
def test_no_mixing_returns_input_and_one_hot(kw: dict[str, float]) -> None:
    x = _images()
    mixed, targets = _mix(x, 0, **kw)
    assert torch.equal(mixed, x)
    assert torch.equal(targets, one_hot(LABELS, K))


def test_uint8_is_mixed_as_float32_and_input_untouched() -> None:
    x = _images(torch.uint8)
    before = x.clone()
    mixed, targets = _mix(x, 1, cutmix_alpha=0.0)
    assert mixed.dtype == torch.float32
    lam = targets[0, 0]
    assert torch.allclose(mixed, lam * x.float() + (1 - lam) * x.float().flip(0), atol=1e-4)
    mixed, _ = _mix(x, 1, mixup_alpha=0.0)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, mixed.round())  # cutmix only moves pixels
    unmixed, _ = _mix(x, 1, prob=0.0)
    assert unmixed.dtype == torch.float32 and torch.equal(unmixed, x.float())
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_float_input_keeps_dtype_and_is_not_modified(dtype: torch.dtype) -> None:
    x = _images(dtype)
    before = x.clone()
    for seed in range(4):
        mixed, targets = _mix(x, seed)
        assert mixed.dtype == dtype and targets.dtype == torch.float32
    assert torch.equal(x, before)


def test_soft_targets_are_mixed() -> None:
    soft = torch.full((N, K), 1.0 / K)
    soft[0] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    _, targets = _mix(_images(), 3, y=soft, cutmix_alpha=0.0)
    # Row 0 is [0.5, 0.5, 0, ...] and its partner (row N-1) is uniform, so column 0 reveals lam.
    lam = (targets[0, 0] - 1.0 / K) / (0.5 - 1.0 / K)
    assert 0.0 < lam < 1.0
    assert torch.allclose(targets, lam * soft + (1 - lam) * soft.flip(0), atol=1e-6)
    assert torch.allclose(targets.sum(-1), torch.ones(N))
    low, high = torch.minimum(soft, soft.flip(0)), torch.maximum(soft, soft.flip(0))
    assert ((targets >= low - 1e-6) & (targets <= high + 1e-6)).all()


@pytest.mark.parametrize("kw", [{"cutmix_alpha": 0.0}, {"mixup_alpha": 0.0}, {"prob": 0.0}])
def test_runs_on_meta_device_so_never_reads_device_data(kw: dict[str, float]) -> None:
    """Meta tensors have no data: any .item()/.cpu()/bool() on x or y would raise, as a CUDA sync would cost."""
    x = torch.empty(N, 3, 16, 20, dtype=torch.uint8, device="meta")
    y = torch.empty(N, dtype=torch.int64, device="meta")
    mixed, targets = _mix(x, 0, y=y, **kw)
    assert mixed.device.type == "meta" and mixed.shape == x.shape and mixed.dtype == torch.float32
    assert targets.device.type == "meta" and targets.shape == (N, K)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _mix(_images()[0], 0)
    with pytest.raises(ValueError):
        _mix(_images(), 0, prob=1.5)
    with pytest.raises(ValueError):
        _mix(_images(), 0, mixup_alpha=-1.0)
