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


@pytest.mark.parametrize("task_name, cfg, setup, shape", [
    ("cls", {"model": "resnet18", "img_size": 64}, {"classes": ["a", "b", "c"]}, (2, 3, 64, 64)),
    ("seg", {"model": "resnet18", "arch": "unet", "img_size": 64}, {"classes": ["a", "b"]}, (2, 3, 64, 64)),
    ("ink", {"model": "resnet18", "layers": "2x3"}, {"groups": 2, "per_group": 3}, (2, 6, 64, 64)),
    ("det", {"model": "tf_efficientdet_d0", "img_size": 128}, {"classes": ["opacity"]}, (1, 3, 128, 128)),
])
def test_models_built_onto_saved_weights_predict_as_loaded_ones(task_name, cfg, setup, shape):
    """`oof`/`tta` build on the meta device and assign the checkpoint; outputs must equal a plain build + load,
    with no tensor left on meta (constants such as the normalisation buffers included)."""
    from kcomp.models._factory import build_with_weights
    from kcomp.runs import config
    from kcomp.tasks import get_task

    task = get_task(task_name)
    full = config.resolve(task=task_name, **cfg)
    torch.manual_seed(0)
    ref = task.build_model(full, setup).eval()
    fast = build_with_weights(lambda: task.build_model(full, setup), ref.state_dict()).eval()
    assert not any(t.is_meta for t in (*fast.parameters(), *fast.buffers()))
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    with torch.inference_mode():
        a, b = ref(x), fast(x)
    for u, v in zip(a if isinstance(a, (tuple, list)) else [a], b if isinstance(b, (tuple, list)) else [b],
                    strict=True):
        for p, q in zip(u if isinstance(u, (tuple, list)) else [u], v if isinstance(v, (tuple, list)) else [v],
                        strict=True):
            assert torch.equal(p, q)


def test_build_with_weights_reports_mismatched_keys_like_a_plain_load():
    from kcomp.models._factory import build_with_weights

    state = create_cls_model("resnet18", 3).state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(BadInput, match=r"ck\.pt: weights do not fit the model .*Missing key"):
        build_with_weights(lambda: create_cls_model("resnet18", 3), state, "ck.pt")
