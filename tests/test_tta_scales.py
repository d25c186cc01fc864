"""Multi-scale TTA and prediction at another input size: every scale's output must map back exactly onto the
original image, which models equivariant by construction show (a pointwise seg model on a linear ramp, a box model
that finds a bright rectangle), together with the flip views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kcomp.errors import BadUsage
from kcomp.infer.tta import at_scales, scaled_size
from kcomp.tasks import get_task


class Pointwise(nn.Module):
    """Seg logits whose sigmoid is the input's first channel / 255, for `classes` classes: equivariant to any
    resampling that is exact on the input."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (x[:, :1].float() / 255).clamp(1e-6, 1 - 1e-6)
        return torch.logit(p).expand(-1, self.classes, -1, -1)


class BrightBox(nn.Module):
    """A detector by construction: one box around the pixels brighter than 127.5, score 1, label 0 (its boxes
    move and scale with the image content exactly when the resampling is exact on the rectangle's edges)."""

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [x.float()], [x.float()]

    def decode(self, class_out: list[torch.Tensor], box_out: list[torch.Tensor]) -> torch.Tensor:
        x = class_out[0][:, 0] > 127.5
        out = torch.zeros(x.shape[0], 3, 6)
        out[..., 5] = -1
        for i, m in enumerate(x):
            ys, xs = torch.nonzero(m, as_tuple=True)
            out[i, 0] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 1.0, 0.0])
        return out


def _ramp(h: int, w: int, batch: int = 2) -> torch.Tensor:
    i = torch.arange(h, dtype=torch.float32)[:, None]
    j = torch.arange(w, dtype=torch.float32)[None, :]
    img = 30 + 3.0 * i + 2.0 * j  # 30..~300 would overflow uint8 meaning; keep it inside 0..255 below
    img = img * (220 / img.max())
    return img.expand(batch, 3, h, w).clone()


@pytest.mark.parametrize("tta", [1, 2, 4])
@pytest.mark.parametrize("scales", [(0.75,), (1.5,), (0.5, 1.0, 1.25)])
def test_seg_scales_map_back_onto_the_original_pixels(scales, tta):
    """A linear ramp through a pointwise model: resized to each scale and back, the probability map is the ramp
    again away from the border (bilinear resampling is exact on linear functions, where the filter does not reach
    the image edge); a half-pixel or transposed misalignment would be off by >= 1e-3 everywhere."""
    x = _ramp(40, 56)
    probs = get_task("seg").predict(Pointwise(), x, tta, scales)
    assert probs.shape == (2, 2, 40, 56)
    expected = (x[:, :1] / 255).expand(-1, 2, -1, -1)
    b = 4  # the resampling filters' reach at the border, in original pixels
    torch.testing.assert_close(probs[..., b:-b, b:-b], expected[..., b:-b, b:-b], rtol=0, atol=2e-5)
    assert (probs - expected).abs().max() < 0.02  # the border is near too


def test_seg_scale_one_is_the_plain_prediction_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 16, 24) * 255
    task = get_task("seg")
    assert torch.equal(task.predict(model, x, 2), task.predict(model, x, 2, (1.0,)))
    assert torch.equal(task.predict(model, x, 1, (1.0,)), model(x).sigmoid())


def _bright_rectangle(batch: int = 2) -> torch.Tensor:
    x = torch.zeros(batch, 3, 64, 64)
    x[:, :, 8:32, 16:40] = 255.0  # x 16..40, y 8..32 (pixel edges)
    return x


@pytest.mark.parametrize("tta", [1, 2, 4, 8])
def test_det_scales_and_flips_map_boxes_back_exactly(tta):
    """Each view's box, found at 0.5x, 1x or 1.5x and flipped or transposed, lands on the same normalised box."""
    scales = (0.5, 1.0, 1.5)
    det = get_task("det").predict(BrightBox(), _bright_rectangle(), tta, scales)
    assert det.shape == (2, len(scales) * tta * 3, 7)
    valid = det[det[..., 4] > 0]
    assert len(valid) == 2 * len(scales) * tta
    expected = torch.tensor([16 / 64, 8 / 64, 40 / 64, 32 / 64])
    assert torch.equal(valid[:, :4], expected.expand(len(valid), 4))  # dyadic fractions: exact
    assert sorted(set(det[0, :, 6].tolist())) == list(range(len(scales) * tta))  # every view its own index
    fused = get_task("det").fuse_views(det.numpy())
    np.testing.assert_allclose(fused.rows()[0][:, :4], [expected.numpy()], atol=1e-6)


def test_det_scaled_views_differ_from_unscaled_ones_without_the_inverse():
    """The box at 1.5x in its view's pixels is not the original one: the inverse is doing the work."""
    [x15] = at_scales(_bright_rectangle(), (1.5,))
    assert x15.shape[-1] == 96
    raw = BrightBox().decode(*BrightBox()(x15))
    assert raw[0, 0, :4].tolist() == [24.0, 12.0, 60.0, 48.0]


def test_cls_scales_average_the_views_at_each_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.rand(4, 3, 20, 20) * 255
    task = get_task("cls")
    probs = task.predict(model, x, 2, (0.8, 1.2))
    by_hand = [task.predict(model, xs, 2) for xs in at_scales(x, (0.8, 1.2))]
    assert [tuple(xs.shape[-2:]) for xs in at_scales(x, (0.8, 1.2))] == [(16, 16), (24, 24)]
    torch.testing.assert_close(probs, torch.stack(by_hand).mean(0))
    assert torch.equal(task.predict(model, x, 2), task.predict(model, x, 2, (1.0,)))


def test_scaled_sizes_round_and_stay_positive():
    assert scaled_size((350, 525), 0.9) == (315, 472)
    assert scaled_size((1, 3), 0.25) == (1, 1)


def test_det_net_at_another_size_equals_one_built_for_it():
    """DetNet pads to its stride and runs a twin of its network for the padded size, sharing the trained tensors:
    its detections equal those of a DetNet built for that size with the same weights."""
    from kcomp.models.det import create_det_model

    torch.manual_seed(0)
    trained = create_det_model("tf_efficientdet_d0", 2, 128).eval()
    built = create_det_model("tf_efficientdet_d0", 2, 256).eval()
    built.load_state_dict(trained.state_dict())
    x = torch.rand(1, 3, 256, 256) * 255
    with torch.inference_mode():
        ours = trained.decode(*trained(x))
        ref = built.decode(*built(x))
        torch.testing.assert_close(ours, ref)
        odd = get_task("det").predict(trained, x[..., :200, :230], 1)  # padded to 256 x 256 inside
    assert odd.shape == (1, 100, 7)
    assert (odd[0, :, :4] >= 0).all() and (odd[0, :, :4] <= 1).all()  # clipped to the 200 x 230 view
    twin = next(iter(trained._twins.values()))[0]
    assert twin.class_net.predict.conv_pw.weight.data_ptr() == trained.model.class_net.predict.conv_pw.weight \
        .data_ptr()


def test_predict_options_check_scales_and_sizes_against_the_task():
    from kcomp.runs.predict import PredictOptions

    opts = PredictOptions(tta_scales="0.9, 1,1.1", img_size=288)
    assert opts.scales == (0.9, 1.0, 1.1)
    for task in ("cls", "seg", "det"):
        opts.check_task(task)
    with pytest.raises(BadUsage, match=r"--tta-scales does not apply to task ink \(only to cls, seg, det\)"):
        PredictOptions(tta_scales="1,1.1").check_task("ink")
    with pytest.raises(BadUsage, match=r"--img-size does not apply to task ink"):
        PredictOptions(img_size=256).check_task("ink")
    with pytest.raises(BadUsage, match=r"--tta-scales 0\.1,1: must be in \[0\.25, 4\] \(each value\)"):
        PredictOptions(tta_scales="0.1,1")
    with pytest.raises(BadUsage, match=r"--tta-scales nan: expected a finite number"):
        PredictOptions(tta_scales="nan")
    assert PredictOptions().scales == (1.0,)


def test_tta_at_scales_and_another_size_end_to_end(demo_run, tmp_path):
    """The CLI takes both, writes them to the predictions' metadata, and each changes what is predicted."""
    from kcomp.artifacts.predictions import read_predictions
    from tests.conftest import run_cli

    out = {"plain": read_predictions(demo_run["test"])}  # `kcomp tta RUN -o test.parquet --workers 0`
    for name, extra in (("scaled", ("--tta-scales", "0.75,1,1.25")), ("sized", ("--img-size", "48"))):
        r = run_cli("tta", demo_run["run"], "-o", tmp_path / f"{name}.parquet", "--workers", "0", *extra)
        assert r.code == 0, r.stderr
        out[name] = read_predictions(tmp_path / f"{name}.parquet")
    assert out["scaled"].meta["tta_scales"] == [0.75, 1.0, 1.25] and out["plain"].meta["tta_scales"] == [1.0]
    assert out["sized"].meta["img_size"] == 48 and out["plain"].meta["img_size"] is None
    plain = out["plain"].probs()
    for name in ("scaled", "sized"):
        probs = out[name].probs()
        np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
        assert not np.allclose(probs, plain)
