"""Local weights: timm state dicts and kcomp checkpoints load, heads of another size are skipped, junk is refused."""

from __future__ import annotations

import pytest
import torch

from kcomp.errors import BadInput, BadUsage
from kcomp.models import create_cls_model


def test_timm_state_dict_loads_except_a_head_of_another_size(tmp_path):
    import timm

    src = timm.create_model("resnet18", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    model = create_cls_model("resnet18", 5, weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.net.conv1.weight, src.conv1.weight)
    assert model.net.fc.weight.shape == (5, 512)


def test_prefixed_and_wrapped_state_dicts_load(tmp_path):
    import timm

    src = timm.create_model("resnet18", num_classes=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    model = create_cls_model("resnet18", 5, weights=str(tmp_path / "w.pth"))
    torch.testing.assert_close(model.net.fc.weight, src.fc.weight)


def test_weights_of_another_model_are_refused(tmp_path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(BadInput, match="no tensor matches"):
        create_cls_model("resnet18", 5, weights=str(tmp_path / "other.pth"))


def test_unknown_model_name():
    with pytest.raises(BadUsage, match="unknown timm model"):
        create_cls_model("not_a_model_xyz", 5)


def test_model_normalises_uint8_itself():
    model = create_cls_model("resnet18", 3).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = model.mean, model.std
    expected = model.net((x.float() - mean) / std)
    torch.testing.assert_close(model(x), expected)
