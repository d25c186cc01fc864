"""Pretrained weights through timm, smp and effdet's own loading code, from caches these tests build themselves
(the Hugging Face hub cache layout, the torch hub cache), with every network connection refused: the loaded
tensors are the saved ones bit for bit, a missing file is a one-line usage error naming the cache (fast, without
waiting on the network), and `--no-pretrained` reads neither network nor cache."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kcomp.errors import BadUsage, ConfigMismatch
from kcomp.models import Init
from kcomp.models import pretrained as pre
from kcomp.tasks.options import TrainOptions
from tests.conftest import run_cli

REV = "0123456789abcdef0123456789abcdef01234567"  # a snapshot (commit) id of the hub cache layout


def hub_cache(root: Path, repo: str, files: dict[str, bytes | dict[str, torch.Tensor]], revision: str = REV,
              ref: str | None = "main") -> Path:
    """`root/models--org--name/snapshots/<revision>/<file>` (+ `refs/<ref>` naming the revision), as
    huggingface_hub lays out its cache; tensors are written as safetensors. Returns the snapshot dir."""
    from safetensors.torch import save_file

    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(revision)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file({k: v.contiguous() for k, v in content.items()}, snap / name)
        else:
            (snap / name).write_bytes(content)
    return snap


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every connection attempt (and name lookup) fails at once; the list records the attempts."""
    attempts: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network disabled by the test")

    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An empty Hugging Face hub cache and torch hub dir of this test's own, online mode (no HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    hf, torch_home = tmp_path / "hf", tmp_path / "torch"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return {"hf": hf, "torch": torch_home}


def _equal_except(got: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], skip: str) -> list[str]:
    """Names of the saved tensors (those not starting with `skip`) that were not loaded bit for bit."""
    return [k for k, v in saved.items() if not k.startswith(skip) and not (k in got and torch.equal(got[k], v))]


# ------------------------------------------------------------------------------------ each library, bit-equal


def test_timm_pretrained_loads_the_cached_file_bit_for_bit(caches, no_network):
    import timm

    from kcomp.models import create_cls_model

    saved = timm.create_model("test_resnet.r160_in1k").state_dict()
    snap = hub_cache(caches["hf"], "timm/test_resnet.r160_in1k", {"model.safetensors": saved})
    init = Init(pretrained=True)
    model = create_cls_model("test_resnet", 3, init=init)  # the default tag of test_resnet is r160_in1k
    got = model.net.state_dict()
    assert _equal_except(got, saved, skip="fc.") == []
    assert got["fc.weight"].shape == (3, saved["fc.weight"].shape[1])  # the head is ours, for 3 classes
    assert init.source == {"kind": "hf-hub", "library": "timm", "id": "timm/test_resnet.r160_in1k", "revision": REV,
                           "file": str(snap / "model.safetensors"),
                           "sha256": pre.sha256(snap / "model.safetensors")}
    assert no_network == []  # cached: the hub was never asked


def test_timm_falls_back_to_pytorch_model_bin_like_timm(caches, no_network):
    import timm

    from kcomp.models import create_cls_model

    saved = timm.create_model("test_resnet.r160_in1k").state_dict()
    snap = hub_cache(caches["hf"], "timm/test_resnet.r160_in1k", {})
    torch.save(saved, snap / "pytorch_model.bin")
    init = Init(pretrained=True)
    got = create_cls_model("test_resnet", 3, init=init).net.state_dict()
    assert _equal_except(got, saved, skip="fc.") == [] and init.source["file"].endswith("pytorch_model.bin")
    assert no_network == []


def test_smp_encoder_weights_load_from_its_pinned_snapshot(caches, no_network):
    import segmentation_models_pytorch as smp

    from kcomp.models.seg import create_seg_model

    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    saved = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    hub_cache(caches["hf"], settings["repo_id"], {"model.safetensors": saved, "config.json": b"{}"},
              revision=settings["revision"], ref=None)  # smp asks for the commit itself: no ref needed
    init = Init(pretrained=True)
    model = create_seg_model("unet", "resnet18", 4, init=init)
    assert _equal_except(model.net.net.encoder.state_dict(), saved, skip="<none>") == []
    assert init.source["id"] == settings["repo_id"] and init.source["revision"] == settings["revision"]
    assert no_network == []


def test_effdet_coco_detector_loads_from_the_torch_hub_cache(caches, no_network):
    """effdet's create_model(pretrained=True, num_classes=2): every COCO tensor but the class head, which effdet
    resets for our classes; the file sits where torch hub caches effdet's URL."""
    from effdet import EfficientDet
    from effdet.config import get_efficientdet_config

    from kcomp.models.det import create_det_model

    coco = get_efficientdet_config("tf_efficientdet_d0")
    saved = EfficientDet(coco, pretrained_backbone=False).state_dict()
    path = caches["torch"] / "hub" / "checkpoints" / os.path.basename(coco.url)
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    init = Init(pretrained=True)
    net = create_det_model("tf_efficientdet_d0", 2, 128, init=init)
    got = net.model.state_dict()
    assert _equal_except(got, saved, skip="class_net.") == []
    assert got["class_net.predict.conv_pw.weight"].shape[0] == 9 * 2  # 9 anchors x our 2 classes
    assert init.source == {"kind": "url", "library": "effdet", "id": coco.url, "file": str(path),
                           "sha256": pre.sha256(path)}
    assert no_network == []


def test_ink_encoder_is_timms_pretrained_encoder_with_its_stem_adapted(caches, no_network):
    import timm

    from kcomp.models.ink import create_ink_model

    saved = timm.create_model("test_resnet.r160_in1k").state_dict()
    hub_cache(caches["hf"], "timm/test_resnet.r160_in1k", {"model.safetensors": saved})
    model = create_ink_model("test_resnet", 2, 4, init=Init(pretrained=True))
    got = model.encoder.state_dict()
    stem = [k for k in got if got[k].ndim == 4 and got[k].shape[1] == 4]
    assert len(stem) == 1  # timm turned the RGB stem into a 4-channel one (adapt_input_conv)
    assert _equal_except(got, {k: v for k, v in saved.items() if k in got and k not in stem}, "<none>") == []
    assert no_network == []


def test_a_tag_picks_the_weights_and_the_normalisation_at_train_and_predict_time(caches, no_network):
    """The tag's pretrained config sets the model's mean/std; a model rebuilt for oof/tta (no Init) gets the same."""
    import timm

    from kcomp.tasks import get_task

    saved = timm.create_model("test_efficientnet.r160_in1k").state_dict()
    hub_cache(caches["hf"], "timm/test_efficientnet.r160_in1k", {"model.safetensors": saved})
    opts = TrainOptions(model="test_efficientnet", pretrained_tag="r160_in1k")
    task = get_task("cls")
    trained = task.build_model(opts, {"classes": ["a", "b"]}, init=Init(pretrained=True))
    rebuilt = task.build_model(opts, {"classes": ["a", "b"]})
    mean = timm.models.get_pretrained_cfg("test_efficientnet.r160_in1k").mean
    torch.testing.assert_close(trained.mean.flatten(), torch.tensor(mean) * 255)
    assert torch.equal(trained.mean, rebuilt.mean) and torch.equal(trained.std, rebuilt.std)
    with pytest.raises(BadUsage, match=r"timm has no pretrained weights tagged 'nope' for test_efficientnet "
                                       r"\(tags: r160_in1k\)"):
        task.build_model(replace(opts, pretrained_tag="nope"), {"classes": ["a", "b"]}, init=Init(pretrained=True))


# -------------------------------------------------------------------------------- weights that cannot be had


def test_offline_and_not_cached_is_one_usage_line_without_a_connection(caches, no_network, monkeypatch):
    from huggingface_hub import constants

    from kcomp.models import create_cls_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BadUsage) as e:
        create_cls_model("resnet18", 3, init=Init(pretrained=True))
    message = str(e.value)
    assert "\n" not in message and "timm/resnet18.a1_in1k" in message and "HF_HUB_OFFLINE" in message
    assert str(caches["hf"] / "models--timm--resnet18.a1_in1k") in message and "--no-pretrained" in message
    assert no_network == []


def test_unreachable_hub_fails_fast_instead_of_retrying(caches, no_network, monkeypatch):
    """huggingface_hub alone would retry for ~20 s; one refused probe is enough to say so."""
    import huggingface_hub

    from kcomp.models import create_cls_model

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("went to the network"))
    start = time.perf_counter()
    with pytest.raises(BadUsage, match=r"not in the cache .* and huggingface\.co cannot be reached \(no network\?\)"
                                       r".*--no-pretrained trains from scratch"):
        create_cls_model("resnet18", 3, init=Init(pretrained=True))
    assert time.perf_counter() - start < pre.PROBE_TIMEOUT + 2
    assert len(no_network) == 1  # the probe, and nothing after it


def test_effdet_weights_missing_from_the_torch_hub_cache(caches, no_network):
    from kcomp.models.det import create_det_model

    with pytest.raises(BadUsage, match=r"effdet tf_efficientdet_d0 \(COCO\).*not in the cache "
                                       rf"{caches['torch']}/hub/checkpoints/tf_efficientdet_d0_34-f153e0cf\.pth"):
        create_det_model("tf_efficientdet_d0", 2, 128, init=Init(pretrained=True))


def test_a_model_without_pretrained_weights_is_a_usage_error(caches, no_network):
    from kcomp.models import create_cls_model

    with pytest.raises(BadUsage, match=r"--model botnet50ts_256: timm has no pretrained weights for it .*"
                                       r"--no-pretrained trains from scratch"):
        create_cls_model("botnet50ts_256", 3, init=Init(pretrained=True))
    assert no_network == []


def test_no_pretrained_reads_neither_network_nor_cache(caches, no_network, monkeypatch):
    """Random init for every task's model without one look at a cache (each lookup would fail the test)."""
    import huggingface_hub
    import torch.hub

    from kcomp.tasks import get_task

    def touched(*args: object, **kwargs: object) -> None:
        pytest.fail(f"a cache or the network was touched: {args}")

    for mod, name in ((pre, "cached"), (pre, "fetch"), (huggingface_hub, "hf_hub_download"),
                      (huggingface_hub, "try_to_load_from_cache"), (torch.hub, "load_state_dict_from_url"),
                      (torch.hub, "download_url_to_file")):
        monkeypatch.setattr(mod, name, touched)
    cases = [("cls", {"model": "resnet18"}, {"classes": ["a", "b"]}),
             ("seg", {"model": "resnet18", "arch": "unet"}, {"classes": ["a", "b"]}),
             ("seg", {"model": "tu-test_resnet", "arch": "fpn"}, {"classes": ["a", "b"]}),
             ("det", {"model": "tf_efficientdet_d0", "img_size": 128}, {"classes": ["a"]}),
             ("ink", {"model": "resnet18"}, {"groups": 2, "per_group": 3})]
    for task, cfg, setup in cases:
        init = Init(pretrained=False)
        get_task(task).build_model(TrainOptions(task=task, **cfg), setup, init=init)
        assert init.source == {"kind": "random"}
    assert no_network == [] and not caches["hf"].exists() and not caches["torch"].exists()


# ------------------------------------------------------------------------------------------ options, run dir


def test_pretrained_is_the_default_except_with_weights_or_on_demo_data():
    from kcomp.runs import config

    assert config.resolve().pretrained is None  # settled once the folds' competition is known
    assert config.settle_pretrained(config.resolve(), "cassava").pretrained is True
    assert config.settle_pretrained(config.resolve(), None).pretrained is True
    assert config.settle_pretrained(config.resolve(), "demo").pretrained is False
    assert config.settle_pretrained(config.resolve(pretrained=True), "demo").pretrained is True
    # a tag asks for pretrained weights, whatever the preset's default (it would mean nothing on random ones)
    assert config.settle_pretrained(config.resolve(pretrained_tag="a1_in1k"), "demo").pretrained is True
    assert config.resolve(weights="w.pth").pretrained is False
    assert config.resolve(pretrained=False, weights="w.pth").pretrained is False
    with pytest.raises(BadUsage, match=r"--pretrained with --weights w\.pth: both name the starting weights"):
        config.resolve(pretrained=True, weights="w.pth")
    with pytest.raises(BadUsage, match=r"--pretrained-tag a1_in1k applies only with --pretrained"):
        config.resolve(pretrained=False, pretrained_tag="a1_in1k")
    with pytest.raises(BadUsage, match=r"--pretrained-tag does not apply to task det"):
        config.resolve(task="det", pretrained_tag="a1_in1k")
    with pytest.raises(BadUsage, match=r"--pretrained-tag a b: expected a pretrained tag"):
        config.resolve(pretrained_tag="a b")


def test_runs_started_before_pretrained_existed_resume_as_random_init():
    from kcomp.runs import config

    settled = config.settle_pretrained(config.resolve(), "demo").to_config()
    old = {k: v for k, v in settled.items() if k != "pretrained"}
    assert config.differences(old, {**old, "pretrained": False}) == []
    assert config.differences(old, {**old, "pretrained": True}) == ["pretrained"]


def test_every_fold_of_a_run_starts_from_the_same_file(tmp_path):
    from kcomp.runs import config
    from kcomp.runs._fold import write_run_config

    opts = config.settle_pretrained(config.resolve(folds="f.parquet"), None)  # read_run_config needs a folds path
    first = {"kind": "hf-hub", "id": "timm/x", "file": "/a/model.safetensors", "sha256": "aa"}
    write_run_config(tmp_path, opts, {"classes": ["a"]}, first)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["weights_source"] == first and saved["config"]["pretrained"] is True
    write_run_config(tmp_path, opts, {"classes": ["a"]}, {**first, "file": "/elsewhere/model.safetensors"})
    write_run_config(tmp_path, opts, {"classes": ["a"]}, None)  # a resumed fold read no weights
    with pytest.raises(ConfigMismatch, match=r"other weights \(timm/x, sha256 bb\) than the run's first fold"):
        write_run_config(tmp_path, opts, {"classes": ["a"]}, {**first, "sha256": "bb"})


# ------------------------------------------------------------------------------------------------- the CLI


# the interpreter run_cli starts: every connection attempt and name lookup fails at once and is logged
SOCKET_GUARD = """\
import os
import socket


def _offline(*args, **kwargs):
    with open(os.environ["KCOMP_TEST_NETWORK_LOG"], "a") as log:
        log.write(repr(args[:2]) + "\\n")
    raise OSError("network disabled by the test")


socket.socket.connect = socket.socket.connect_ex = _offline
socket.create_connection = socket.getaddrinfo = _offline
"""


def _guarded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf: Path) -> Path:
    """run_cli's interpreter: its own caches, online mode, and a socket guard (sitecustomize) refusing and logging
    every connection. Returns the log."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("KCOMP_TEST_NETWORK_LOG", str(tmp_path / "network.log"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "network.log"


def test_train_from_the_cache_and_refused_without_it(demo_run, tmp_path, monkeypatch):
    """`--pretrained` on the demo data (whose default is random init): without the weights in the cache, exit 2 in
    one line and no run dir; with them, training records where they came from."""
    import timm

    network = _guarded_env(tmp_path, monkeypatch, tmp_path / "hf")
    argv = ["train", "cls", "--folds", demo_run["folds"], "--fold", "0", "--img-size", "32", "--epochs", "1",
            "--workers", "0", "--model", "test_resnet", "--pretrained", "-o", tmp_path / "run"]
    r = run_cli(*argv)
    assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "test_resnet.r160_in1k" in r.last_error_line and "cannot be reached" in r.last_error_line
    assert not (tmp_path / "run").exists()
    assert len(network.read_text().splitlines()) == 1  # one probe of the hub, no retries
    network.unlink()

    snap = hub_cache(tmp_path / "hf", "timm/test_resnet.r160_in1k",
                     {"model.safetensors": timm.create_model("test_resnet.r160_in1k").state_dict()})
    r = run_cli(*argv)
    assert r.code == 0, r.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["pretrained"] is True
    assert saved["weights_source"]["sha256"] == pre.sha256(snap / "model.safetensors")
    assert saved["weights_source"]["revision"] == REV
    assert not network.exists()  # cached: nothing reached for the network, albumentations' update check included
