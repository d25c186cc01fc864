"""The sliding-window loop gives, byte for byte, the maps of the previous implementation (float16 tiles converted on
the host, host-side copies per tile row, mask applied at the end), kept here as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kcomp.data.ink_patches import read_window, window_positions
from kcomp.data.layers import LayerStack, read_png_mask
from kcomp.infer.sliding import blend_window, predict_region
from kcomp.models.ink import InkNet
from kcomp.tasks import get_task
from tests.vesuvius_fixture import make_vesuvius_layout


@torch.inference_mode()
def previous_predict_region(model, task, stack, layers, mask, y0, *, patch, stride, tta, batch_size, dtype):
    """kcomp's predict_region before the loop kept the map on the device (workers=0, CPU)."""
    h, w = mask.shape
    positions = window_positions(mask, patch, stride)
    out = np.zeros((h, w), dtype=np.uint8)
    width = max(w, patch)
    acc, weight, top = torch.zeros((patch, width)), torch.zeros((patch, width)), 0
    win = blend_window(patch)

    def flush(until: int) -> None:
        nonlocal acc, weight, top
        n = min(until, h) - top
        if n <= 0:
            return
        k = min(n, patch)
        band = (acc[:k, :w] / weight[:k, :w].clamp_min(1e-6) * 255).round_().clamp_(0, 255).to(torch.uint8)
        out[top:top + k] = band.numpy()
        acc = torch.cat([acc[k:], torch.zeros((k, width))])
        weight = torch.cat([weight[k:], torch.zeros((k, width))])
        top += n

    for b in range(0, len(positions), batch_size):
        pos = positions[b:b + batch_size]
        x = torch.stack([torch.from_numpy(read_window(stack, layers, y0 + y, x, patch)).to(torch.float16)
                         for y, x in pos])
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            probs = model(torch.cat([x])).float().sigmoid() if tta == 1 else task.predict(model, x, tta).float()
        for p, (ty, tx) in zip(probs, pos.tolist(), strict=True):
            if ty > top:
                flush(ty)
            acc[ty - top:ty - top + patch, tx:tx + patch] += p * win
            weight[ty - top:ty - top + patch, tx:tx + patch] += win
    flush(h)
    out[~mask] = 0
    return out


@pytest.fixture(scope="module")
def fragment(tmp_path_factory: pytest.TempPathFactory) -> tuple[LayerStack, np.ndarray]:
    raw = make_vesuvius_layout(tmp_path_factory.mktemp("sliding") / "raw", fragments={},
                               test={"t": (176, 150)}, n_layers=8, seed=3)
    frag = Path(raw) / "test" / "t"
    return LayerStack(frag / "surface_volume"), read_png_mask(frag / "mask.png")


@pytest.mark.parametrize(("tta", "dtype", "workers", "y0"),
                         [(1, None, 0, 0), (8, None, 2, 0), (2, torch.bfloat16, 0, 0), (4, None, 0, 40)])
def test_maps_equal_the_previous_implementation(fragment, tta, dtype, workers, y0, monkeypatch):
    import kcomp.infer.predict as predict

    monkeypatch.setattr(predict, "loader_workers", lambda n, device, ds=None: n)  # start workers, as on a GPU
    stack, mask = fragment
    mask = mask[y0:y0 + 120] if y0 else mask  # a row range of the fragment, as `prep --split-fragment` makes
    torch.manual_seed(0)
    model = InkNet("resnet18", 2, 3).eval().to(memory_format=torch.channels_last)
    task, layers = get_task("ink"), [2, 3, 4, 5, 6, 7]
    kw = {"patch": 64, "stride": 32, "tta": tta, "batch_size": 5, "dtype": dtype}
    expected = previous_predict_region(model, task, stack, layers, mask, y0, **kw)
    got = predict_region(model, task, stack, layers, mask, y0, device=torch.device("cpu"), workers=workers, **kw)
    assert got.dtype == np.uint8 and got.shape == mask.shape
    assert 0 < np.count_nonzero(got) and not got[~mask].any()
    np.testing.assert_array_equal(got, expected)


def test_raw_tiles_become_the_same_float16_as_before():
    """uint16 -> float16 on the device equals the host's float32 * 1/256 -> float16, over the whole uint16 range."""
    from kcomp.data.ink_patches import raw_to_input

    raw = np.arange(65536, dtype=np.uint16).reshape(1, 256, 256)
    before = torch.from_numpy(raw.astype(np.float32) * (1 / 256)).to(torch.float16)
    assert torch.equal(raw_to_input(torch.from_numpy(raw)), before)
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert torch.equal(raw_to_input(torch.from_numpy(u8)), torch.from_numpy(u8.astype(np.float32) / 256).half())


def test_cpu_loader_uses_only_cores_the_model_leaves_free(monkeypatch):
    from kcomp.infer.predict import loader_workers

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert loader_workers(2, cuda) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1_000_000)
    assert loader_workers(2, cpu) == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert loader_workers(2, cpu) == 2 and loader_workers(12, cpu) == 7


def test_cpu_loader_reads_a_decoded_cache_in_process(monkeypatch):
    """Cache reads are memory copies: even with cores left free, a worker process would cost more than it saves."""
    from kcomp.data.datasets import ImageDataset
    from kcomp.infer.predict import inference_loader, loader_workers

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    files = [Path("a.jpg"), Path("b.jpg")]
    cached = ImageDataset(files, None, lambda image: {"image": image}, cache=[np.zeros((4, 4, 3), np.uint8)] * 2)
    decoding = ImageDataset(files, None, lambda image: {"image": image})
    assert loader_workers(2, cpu, cached) == 0 and loader_workers(2, cpu, decoding) == 2
    assert loader_workers(2, cuda, cached) == 2
    assert inference_loader(cached, batch_size=2, workers=2, device=cpu).num_workers == 0
