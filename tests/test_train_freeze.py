"""Issue 25, what trains and for how long: `--freeze-bn`, `--freeze-epochs`, `--patience`, `--class-weights balanced`,
`--sampler balanced`, `--grad-checkpointing`. Each test shows the option changes what is computed as it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kcomp.errors import BadUsage
from tests.conftest import run_cli

CLS = {"task": "cls", "model": "test_efficientnet", "img_size": 32, "batch_size": 8, "workers": 0, "device": "cpu",
       "pretrained": False}


@pytest.fixture(scope="module")
def cls_folds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_tasks import make_folds

    return make_folds("cls", tmp_path_factory.mktemp("cls"))


def _train(run: Path, folds: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> list[dict]:
    """Train fold 0 in-process; returns the model's state at the start of every epoch (after the previous epoch's
    training and validation) and, last, the final one."""
    from kcomp.runs import config, freeze
    from kcomp.runs.train import train

    states: list[dict] = []
    real = freeze.enter_epoch

    def spy(f, epoch):  # noqa: ANN001, ANN202
        states.append({k: v.clone() for k, v in f.model.state_dict().items()})
        real(f, epoch)

    monkeypatch.setattr(freeze, "enter_epoch", spy)
    train(config.resolve(**{**CLS, **options, "folds": str(folds)}), run=run)
    states.append(torch.load(run / "fold0" / "last.pt", weights_only=True)["model"])
    return states


def _same(a: dict, b: dict, keys: list[str]) -> list[str]:
    return [k for k in keys if not torch.equal(a[k], b[k])]


# --------------------------------------------------------------------------------------------------- freezing


SEG = {"task": "seg", "arch": "unet", "model": "resnet18", "img_size": 64, "batch_size": 2}


@pytest.mark.parametrize("task", ["cls", pytest.param("seg", marks=pytest.mark.slow)])
def test_freeze_epochs_keeps_the_backbone_bit_identical_then_trains_it(task, cls_folds, tmp_path, monkeypatch):
    if task == "seg":
        from tests.tiny_tasks import make_folds

        folds, options = make_folds("seg", tmp_path / "seg"), SEG
        is_backbone, first = (lambda k: k.startswith("net.net.encoder.")), "net.net.encoder.conv1.weight"
    else:
        folds, options = cls_folds, {}
        is_backbone, first = (lambda k: not k.startswith("net.classifier.")), "net.conv_stem.weight"
    start, after1, after2 = _train(tmp_path / "run", folds, monkeypatch, epochs=2, freeze_epochs=1, **options)
    backbone = [k for k in start if is_backbone(k)]
    head = [k for k in start if k not in backbone and start[k].is_floating_point() and "running" not in k]
    assert head and len(backbone) > 50
    assert _same(start, after1, backbone) == []  # weights, BN statistics and counters alike
    assert _same(start, after1, head)  # the head trained in epoch 1
    moved = _same(after1, after2, backbone)
    assert first in moved
    assert any(k.endswith("running_mean") for k in moved)  # epoch 2 trains the backbone, its BN statistics too


def test_freeze_bn_keeps_statistics_and_affine_parameters(cls_folds, tmp_path, monkeypatch):
    start, end = _train(tmp_path / "run", cls_folds, monkeypatch, epochs=1, freeze_bn=True)
    bn = [k for k in start if any(k.endswith(s) for s in ("running_mean", "running_var", "num_batches_tracked"))]
    bn += [k.rsplit(".", 1)[0] + s for k in bn if k.endswith("running_mean") for s in (".weight", ".bias")]
    assert len(bn) == 13 * 5  # test_efficientnet's 13 BatchNorm layers
    assert _same(start, end, bn) == []
    convs = [k for k in start if k.endswith("conv_stem.weight") or k.startswith("net.classifier.")]
    assert _same(start, end, convs) == convs  # the rest trained


def test_backbones_per_task():
    """What --freeze-epochs freezes: the classifier trains (cls), the smp decoder and head (seg), BiFPN and class/box
    nets (det), depth fusion, decoder and head (ink)."""
    from kcomp.models import create_cls_model
    from kcomp.models.seg import create_seg_model
    from kcomp.runs.freeze import backbone_parameters

    cls = create_cls_model("test_efficientnet", 3)
    frozen = {id(p) for p in backbone_parameters("cls", cls)}
    assert {n for n, p in cls.named_parameters() if id(p) not in frozen} == {"net.classifier.weight",
                                                                               "net.classifier.bias"}
    seg = create_seg_model("unet", "resnet18", 2)
    frozen = {id(p) for p in backbone_parameters("seg", seg)}
    trained = {n.split(".")[2] for n, p in seg.named_parameters() if id(p) not in frozen}
    assert trained == {"decoder", "segmentation_head"}
    assert all(n.split(".")[2] == "encoder" for n, p in seg.named_parameters() if id(p) in frozen)
    from kcomp.models.det import create_det_model
    from kcomp.models.ink import create_ink_model

    for task, model, part, backbone in (("det", create_det_model("tf_efficientdet_d0", 2, 128), 1, {"backbone"}),
                                        ("ink", create_ink_model("resnet18", 2, 3), 0, {"encoder"})):
        frozen = {id(p) for p in backbone_parameters(task, model)}
        assert {n.split(".")[part] for n, p in model.named_parameters() if id(p) in frozen} == backbone
        assert backbone.isdisjoint({n.split(".")[part] for n, p in model.named_parameters() if id(p) not in frozen})


# ----------------------------------------------------------------------------------------------- grad checkpointing


def _grads(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(x).float().square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("task", "name"), [("cls", "resnet18"), ("seg", "tu-resnet18")])
def test_grad_checkpointing_is_enabled_and_gives_the_same_gradients(task, name):
    import copy

    from kcomp.models import create_cls_model
    from kcomp.models.seg import create_seg_model
    from kcomp.runs.freeze import _checkpointed, enable_checkpointing

    torch.manual_seed(0)
    plain = create_cls_model(name, 3) if task == "cls" else create_seg_model("unet", name, 1)
    ckpt = copy.deepcopy(plain)
    enable_checkpointing(task, ckpt, name)
    timm_part = _checkpointed(task, ckpt)
    assert timm_part.grad_checkpointing is True and _checkpointed(task, plain).grad_checkpointing is False
    conv = timm_part.layer1[0].conv1
    calls, forward = [], conv.forward
    conv.forward = lambda t: (calls.append(1), forward(t))[1]  # hooks do not fire when a checkpoint recomputes
    x = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1)).float()
    a, b = _grads(plain, x), _grads(ckpt, x)
    assert len(calls) == 2  # the forward pass and its recomputation in the backward pass: checkpointed
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_grad_checkpointing_is_refused_where_there_is_none():
    from kcomp.models.seg import create_seg_model
    from kcomp.runs.freeze import enable_checkpointing

    with pytest.raises(BadUsage, match=r"--grad-checkpointing: --model resnet18 does not support .* tu-NAME"):
        enable_checkpointing("seg", create_seg_model("unet", "resnet18", 1), "resnet18")


# ------------------------------------------------------------------------------------------------- early stopping


def test_patience_counts_epochs_since_the_best():
    from kcomp.runs.stopping import exhausted

    assert not exhausted(5, 3, 0)  # off
    assert not exhausted(4, 3, 2) and exhausted(5, 3, 2) and exhausted(6, 3, 2)
    assert not exhausted(3, -1, 1)  # no score yet


# the scores a scripted validation returns, epoch by epoch; lower is better for log_loss, higher for accuracy
SCRIPT = [0.9, 0.7, 0.8, 0.75, 0.6, 0.5, 0.4, 0.3]


@pytest.mark.parametrize(("metric", "best", "stop"), [("log_loss", 2, 4), ("accuracy", 1, 3)])
def test_patience_stops_where_the_scripted_metric_says(cls_folds, tmp_path, monkeypatch, metric, best, stop):
    import kcomp.runs.train as train_mod
    from kcomp.artifacts import read_table

    scores = iter(SCRIPT)
    monkeypatch.setattr(train_mod, "validate", lambda f: next(scores))
    run = tmp_path / "run"
    states = _train(run, cls_folds, monkeypatch, epochs=8, patience=2, metric=metric)
    assert len(states) == stop + 1  # epochs entered, and the end
    history, meta = read_table(run / "fold0" / "metrics.parquet", "metrics")
    assert len(history) == stop and meta["stopped_early"] is True
    assert torch.load(run / "fold0" / "best.pt", weights_only=True)["epoch"] == best
    # run again, it stays stopped: nothing is trained, the result is the same
    from kcomp.runs import config
    from kcomp.runs.train import train

    [result] = train(config.resolve(**{**CLS, "epochs": 8, "patience": 2, "metric": metric,
                                       "folds": str(cls_folds)}), run=run)
    assert (result.best_epoch, result.epochs, result.stopped_early) == (best, stop, True)


def test_patience_end_to_end(cls_folds, tmp_path):
    import json

    from kcomp.artifacts import read_table

    run = tmp_path / "run"
    r = run_cli("train", "cls", "--folds", cls_folds, "-o", run, "--model", "test_efficientnet", "--img-size", "32",
                "--batch-size", "8", "--workers", "0", "--epochs", "4", "--patience", "1", "--json")
    assert r.code == 0, r.stderr
    fold = json.loads(r.stdout)["folds"]["0"]
    trained = len(read_table(run / "fold0" / "metrics.parquet", "metrics")[0])
    assert fold["epochs"] == trained == min(4, fold["epoch"] + 1)
    assert fold["stopped_early"] == (trained < 4)


# --------------------------------------------------------------------------------------------------- class balance


def test_balanced_class_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    from kcomp.data.balance import balanced_class_weights, class_labels

    labels = np.random.default_rng(0).choice(4, size=503, p=[0.7, 0.2, 0.07, 0.03])
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    np.testing.assert_allclose(balanced_class_weights(labels, 4), expected, rtol=1e-6)
    # float target rows (soft pseudo labels, [labels | teacher]) count as the class of their label columns
    packed = np.concatenate([np.eye(4)[labels], np.full((503, 4), 0.25)], axis=1)
    assert (class_labels(packed, 4) == labels).all()


def test_class_weights_weigh_cross_entropy_as_torch_does():
    from kcomp.models.losses import build_loss, soft_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 4, generator=g), torch.randint(0, 4, (16,), generator=g)
    w = torch.tensor([0.3, 1.0, 2.5, 4.0])
    soft = torch.softmax(torch.randn(16, 4, generator=g), 1)
    for target, probs in ((labels, F.one_hot(labels, 4).float()), (soft, soft)):
        expected = F.cross_entropy(logits, probs, weight=w, label_smoothing=0.1)
        torch.testing.assert_close(soft_cross_entropy(logits, target, 0.1, weight=w), expected)
    assert not torch.equal(build_loss("ce", class_weights=w)(logits, labels), build_loss("ce")(logits, labels))
    with pytest.raises(ValueError, match="ce loss"):
        build_loss("taylor", class_weights=w)


def test_balanced_sampler_draws_classes_equally_and_replays():
    from kcomp.data.balance import BalancedSampler

    labels = np.repeat([0, 1, 2], [900, 90, 10])
    s = BalancedSampler(labels, 3, seed=7)
    np.testing.assert_allclose(s.weights.numpy(), (1000 / (3 * np.array([900, 90, 10])))[labels])
    draws = [i for i, _ in s]
    assert len(draws) == 1000
    counts = np.bincount(labels[draws], minlength=3)
    assert np.abs(counts - 1000 / 3).max() < 60, counts  # 3 sigma of a binomial(1000, 1/3) is 45
    assert [e for e in BalancedSampler(labels, 3, seed=7)] == list(s)  # seeded
    s.set_epoch(0, start=400)
    assert [i for i, _ in s] == draws[400:]  # resumed mid-epoch
    s.set_epoch(1)
    assert [i for i, _ in s] != draws
    # DDP: the ranks take turns in the same draw; repeated rows get their own augmentation seeds
    s.set_epoch(0)
    full = list(s)
    ranks = [list(BalancedSampler(labels, 3, seed=7, num_replicas=3, rank=r)) for r in range(3)]
    assert [e for i in range(334) for r in ranks for e in r[i:i + 1]][:1000] == full
    seeds = {}
    assert any(seeds.setdefault(i, sd) != sd for i, sd in full)


def test_the_shuffle_is_unchanged():
    """SeededSampler's order as it was drawn before the balanced sampler shared its code (runs resume alike)."""
    from kcomp.data.datasets import SeededSampler

    n, world = 10, 3
    g = torch.Generator().manual_seed(5 * 1_000_003 + 2)
    perm, seeds = torch.randperm(n, generator=g), torch.randint(0, 2**31 - 1, (n,), generator=g)
    perm = torch.cat([perm, perm[:2]])
    for rank in range(world):
        s = SeededSampler(n, seed=5, num_replicas=world, rank=rank)
        s.set_epoch(2)
        mine = perm[rank::world]
        assert list(s) == list(zip(mine.tolist(), seeds[mine].tolist(), strict=True))


def test_balance_options_are_cls_only_and_class_weights_need_ce():
    from kcomp.runs import config

    with pytest.raises(BadUsage, match="--sampler does not apply to task seg"):
        config.resolve(task="seg", sampler="balanced")
    with pytest.raises(BadUsage, match="--class-weights balanced applies only with --loss ce"):
        config.resolve(task="cls", class_weights="balanced", loss="taylor")
    with pytest.raises(BadUsage, match="--sampler uniform: unknown sampler"):
        config.resolve(task="cls", sampler="uniform")


def test_balanced_training_end_to_end(cls_folds, tmp_path, monkeypatch):
    """--class-weights and --sampler change what a fold trains on, and are recorded."""
    import json

    plain = _train(tmp_path / "a", cls_folds, monkeypatch, epochs=1)[-1]
    weighted = _train(tmp_path / "b", cls_folds, monkeypatch, epochs=1, class_weights="balanced",
                      sampler="balanced")[-1]
    assert not torch.equal(plain["net.classifier.weight"], weighted["net.classifier.weight"])
    saved = json.loads((tmp_path / "b" / "config.json").read_text())["config"]
    assert (saved["class_weights"], saved["sampler"]) == ("balanced", "balanced")
