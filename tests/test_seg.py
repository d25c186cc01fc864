"""Task seg: smp models of every architecture (any input size), encoder weights, flip TTA inversion, masks sampled
from RLE, augmentations moving image and masks together, losses, per-task defaults."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kcomp.data.seg_dataset import SegDataset, sample_mask, seg_train_transform
from kcomp.errors import BadInput, BadUsage
from kcomp.formats.rle import check as check_rle
from kcomp.formats.rle import decode, encode
from kcomp.models.losses import SEG_LOSSES, build_seg_loss
from kcomp.models.seg import create_seg_model, load_encoder_weights
from kcomp.tasks import get_task
from kcomp.tasks.seg import output_sizes, to_uint8_map

ARCHS = ["unet", "fpn", "pspnet", "linknet", "unetplusplus", "deeplabv3plus"]

# ------------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_builds_and_keeps_the_input_size(arch: str):
    torch.manual_seed(0)
    model = create_seg_model(arch, "resnet18", 4).eval()
    with torch.inference_mode():
        y = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert y.shape == (2, 4, 64, 64) and torch.isfinite(y).all()


@pytest.mark.parametrize("shape", [(100, 100), (100, 70), (33, 47)])
def test_sizes_the_encoder_cannot_take_are_padded_and_cropped(shape: tuple[int, int]):
    model = create_seg_model("unet", "resnet18", 4).eval()
    x = torch.randint(0, 256, (1, 3, *shape), dtype=torch.uint8)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (1, 4, *shape)


def test_padding_does_not_shift_the_output():
    """Cropping must take back exactly the padded-in region: a per-pixel net's output equals its input map."""
    from kcomp.models.seg import PadCrop

    net = PadCrop(torch.nn.Identity(), 32)
    x = torch.randn(1, 4, 100, 70)
    torch.testing.assert_close(net(x), x)


def test_timm_encoders_as_tu_names_and_bare_timm_names():
    from kcomp.models.seg import resolve_encoder

    assert resolve_encoder("resnet18") == "resnet18"  # smp's own
    assert resolve_encoder("tu-resnet18") == "tu-resnet18"
    assert resolve_encoder("resnet10t") == "tu-resnet10t"  # timm only
    model = create_seg_model("fpn", "tu-resnet10t", 4).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape == (1, 4, 64, 64)


@pytest.mark.parametrize("name", ["not_an_encoder", "tu-not_an_encoder"])
def test_unknown_encoder_is_a_usage_error_naming_where_to_look(name: str):
    with pytest.raises(BadUsage, match="timm.list_models"):
        create_seg_model("unet", name, 4)


def test_unknown_architecture_is_a_usage_error():
    with pytest.raises(BadUsage, match="--arch segnet: choose one of unet, fpn"):
        create_seg_model("segnet", "resnet18", 4)


def test_head_starts_at_the_prior():
    from kcomp.models.seg import PRIOR

    model = create_seg_model("unet", "resnet18", 4).eval()
    with torch.inference_mode():
        p = model(torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)).sigmoid()
    assert abs(float(p.mean()) - PRIOR) < 0.08


def _encoder_weight(model: torch.nn.Module) -> torch.Tensor:
    enc = model.net.net.encoder
    return (enc.model if hasattr(enc, "model") else enc).conv1.weight


def test_encoder_weights_from_timm_smp_and_kcomp_files(tmp_path: Path):
    import timm

    src = timm.create_model("resnet18", num_classes=1000)  # a timm classifier: fc is not in the encoder
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    for encoder in ("resnet18", "tu-resnet18"):
        model = create_seg_model("unet", encoder, 4, weights=str(tmp_path / "timm.pth"))
        torch.testing.assert_close(_encoder_weight(model), src.conv1.weight)
    # a kcomp seg checkpoint (keys under net.net.encoder.) loads into a fresh model's encoder
    trained = create_seg_model("unet", "tu-resnet18", 4)
    torch.save({"schema": {"name": "checkpoint", "version": 1}, "model": trained.state_dict()}, tmp_path / "ck.pt")
    fresh = create_seg_model("fpn", "tu-resnet18", 4)
    assert load_encoder_weights(fresh.net.net.encoder, tmp_path / "ck.pt") > 50
    torch.testing.assert_close(_encoder_weight(fresh), _encoder_weight(trained))


def test_encoder_weights_of_another_model_are_refused(tmp_path: Path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(BadInput, match="no tensor matches"):
        create_seg_model("unet", "resnet18", 4, weights=str(tmp_path / "other.pth"))


# ------------------------------------------------------------------------------------------------------ TTA


@pytest.mark.parametrize("tta", [1, 2, 4, 8])
def test_flip_tta_is_inverted_exactly(tta: int):
    """Through a per-pixel model every view, once inverted, is the identity's output: any misaligned inverse
    would change the average."""

    class PerPixel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.float() * 0.05 - 3

    task = get_task("seg")
    x = torch.randint(0, 120, (2, 4, 16, 16), dtype=torch.uint8)
    got = task.predict(PerPixel(), x, tta)
    torch.testing.assert_close(got, (x.float() * 0.05 - 3).sigmoid(), rtol=0, atol=1e-6)


def test_tta_8_needs_square_inputs():
    with pytest.raises(BadUsage, match="square"):
        get_task("seg").predict(torch.nn.Identity(), torch.zeros(1, 4, 16, 12), 8)


# ------------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("order", ["column", "row"])
def test_sampled_masks_are_a_nearest_neighbour_resize_of_the_decode(order: str):
    rng = np.random.default_rng(0)
    full = (cv2.resize(rng.random((9, 13)).astype(np.float32), (210, 140)) > 0.6).astype(np.uint8)
    rle = encode(full, order=order)
    for out in [(140, 210), (35, 52), (64, 64), (200, 300)]:
        rows = np.minimum(((np.arange(out[0]) + 0.5) * 140 / out[0]).astype(int), 139)
        cols = np.minimum(((np.arange(out[1]) + 0.5) * 210 / out[1]).astype(int), 209)
        np.testing.assert_array_equal(sample_mask(rle, (140, 210), out, order), full[np.ix_(rows, cols)])
    np.testing.assert_array_equal(sample_mask(rle, (140, 210), (140, 210), order), decode(rle, (140, 210), order))
    assert sample_mask("", (140, 210), (7, 9), order).shape == (7, 9)


@pytest.mark.parametrize(("rle", "message"), [
    ("1 2 5", "odd number of values"),
    ("10 5 12 3", "overlaps or comes before"),
    ("20 2 10 2", "overlaps or comes before"),
    ("1 2 99 5", "runs past the end of the 10x10 image"),
    ("0 3", "is < 1"),
    ("3 0", "is < 1"),
    ("1 x", "'x' \\(pair 1\\) is not an integer"),
])
def test_malformed_rle_is_named(rle: str, message: str):
    with pytest.raises(BadInput, match=message):
        check_rle(rle, (10, 10), where="train.csv line 3")
    with pytest.raises(BadInput, match="train.csv line 3"):
        sample_mask(rle, (10, 10), (5, 5), where="train.csv line 3")


def _marker_layout(tmp_path: Path) -> tuple[Path, str]:
    """A 96x144 PNG, dark but for a bright off-centre block, and the block's RLE (column-major)."""
    img = np.full((96, 144, 3), 20, np.uint8)
    mask = np.zeros((96, 144), np.uint8)
    mask[10:34, 90:130] = 1
    img[mask > 0] = 250
    path = tmp_path / "marker.png"
    cv2.imwrite(str(path), img)
    return path, encode(mask, order="column")


def test_augmentations_move_image_and_masks_together(tmp_path: Path):
    path, rle = _marker_layout(tmp_path)
    ds = SegDataset([path], [(96, 144)], [["", rle, "", ""]], 64, transform=seg_train_transform("strong"))
    moved = 0
    for seed in range(12):
        x, y = ds[(0, seed)]
        assert x.dtype == torch.uint8 and x.shape == (3, 64, 64)
        assert y.dtype == torch.uint8 and y.shape == (4, 64, 64)
        assert y[[0, 2, 3]].sum() == 0
        bright = x.float().mean(0) > 135
        m = y[1].bool()
        if m.sum() == 0:
            assert bright.sum() < 8  # the block left the frame with its mask
            continue
        iou = float((bright & m).sum()) / float((bright | m).sum())
        assert iou > 0.8, (seed, iou)
        moved += not torch.equal(m, ds[0][1][1].bool())
    assert moved >= 6  # the augmentations did move things


def test_same_seed_same_item_and_no_targets(tmp_path: Path):
    path, rle = _marker_layout(tmp_path)
    ds = SegDataset([path], [(96, 144)], [[rle] * 4], 48, transform=seg_train_transform("medium"))
    a, b = ds[(0, 7)], ds[(0, 7)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert ds.targets_array().shape == (1, 4, 48, 48)
    plain = SegDataset([path], [(96, 144)], None, 48)
    x, y = plain[0]
    assert x.shape == (3, 48, 48) and y == -1


# ------------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_losses_are_finite_differentiable_and_prefer_the_truth(name: str):
    torch.manual_seed(0)
    target = (torch.rand(2, 4, 16, 16) > 0.7).to(torch.uint8)
    loss = build_seg_loss(name)
    good = (target.float() * 2 - 1) * 6
    bad = -good
    logits = torch.zeros(2, 4, 16, 16, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and logits.grad.abs().sum() > 0
    assert loss(good, target) < loss(bad, target)
    assert loss(good.half(), target).dtype == torch.float32


def test_unknown_loss_is_a_usage_error():
    with pytest.raises(BadUsage, match="--seg-loss hinge: unknown seg loss; choose one of: bce_dice"):
        build_seg_loss("hinge")


# ------------------------------------------------------------------------------------------------------ maps


def test_uint8_maps_at_the_output_size():
    p = np.zeros((4, 32, 32), np.float32)
    p[1, :, 16:] = 1.0
    p[2] = 0.5
    m = to_uint8_map(p, (35, 52))
    assert m.shape == (4, 35, 52) and m.dtype == np.uint8
    assert m[0].max() == 0 and m[1, :, -5:].min() == 255 and m[1, :, :20].max() == 0
    assert set(np.unique(m[2])) == {128}  # rint(0.5 * 255) = 128 (numpy rounds half to even)


def test_output_size_from_option_then_index_then_a_quarter():
    import pandas as pd

    rows = pd.DataFrame({"height": [1400, 101], "width": [2100, 99]})
    assert output_sizes(rows, (64, 96), [350, 525]) == [(64, 96)] * 2
    assert output_sizes(rows, None, [350, 525]) == [(350, 525)] * 2
    assert output_sizes(rows, None, None) == [(350, 525), (25, 25)]
    with pytest.raises(BadUsage):
        output_sizes(rows, (0, 5), None)


def test_seg_gets_its_own_default_batch_size():
    from kcomp.runs import config

    assert config.resolve(task="seg").batch_size == 8
    assert config.resolve(task="seg", batch_size=3).batch_size == 3
    assert config.resolve(task="cls").batch_size == config.DEFAULTS["batch_size"]
    assert config.resolve(task="seg").arch == "unet" and config.resolve(task="seg").seg_loss == "bce_dice"
