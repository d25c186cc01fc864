"""Optimizers and schedules (issue 25 part 2): what `--opt`, `--sched`, `--layer-decay`, `--sam` and `--clip-grad`
compute, checked against hand computations, through the functions `kcomp train` uses (kcomp.models.optim and the
training step of kcomp.runs.train)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kcomp.errors import BadUsage
from kcomp.runs import config
from kcomp.models.optim import build_optimizer, build_scheduler, check_precision, clip_gradients, load_scheduler


def _opts(**kw):
    return config.resolve(folds="f.parquet", **kw)


def _lrs(optimizer, scheduler, updates: int) -> list[float]:
    out = [optimizer.param_groups[0]["lr"]]
    for k in range(1, updates + 1):
        scheduler.step_update(k)
        out.append(optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize(("warmup", "epochs", "per_epoch"), [(1.0, 3, 7), (0.0, 2, 5), (2.5, 4, 3)])
def test_default_schedule_is_the_warmup_cosine_kcomp_always_ran(warmup, epochs, per_epoch):
    """timm's cosine computes what kcomp's LambdaLR did: linear warmup from 1% of lr, cosine to min_lr_ratio x lr."""

    def before(step: int, total: int, warm: int, ratio: float) -> float:  # kcomp's warmup_cosine factor
        if step < warm:
            return 0.01 + 0.99 * step / max(1, warm)
        t = (step - warm) / max(1, total - warm)
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    opts = _opts(warmup_epochs=warmup, epochs=epochs, lr=3e-3)
    opt = build_optimizer(torch.nn.Linear(2, 2), opts)
    total = per_epoch * epochs
    got = _lrs(opt, build_scheduler(opt, opts, per_epoch), total)
    want = [3e-3 * before(k, total, int(warmup * per_epoch), opts.min_lr_ratio) for k in range(total + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_opt_sgd_is_nesterov_sgd_with_the_given_momentum():
    opt = build_optimizer(torch.nn.Linear(2, 2), _opts(opt="sgd", momentum=0.8, lr=0.1))
    assert type(opt) is torch.optim.SGD
    assert all(g["nesterov"] and g["momentum"] == 0.8 and g["lr"] == 0.1 for g in opt.param_groups)
    # weight decay stays off biases and norms, as with the default AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    # at --weight-decay 0 the same two groups (kcomp's checkpoints hold two), both without decay
    opt = build_optimizer(torch.nn.Linear(2, 2), _opts(weight_decay=0.0))
    assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [(1, 0.0), (1, 0.0)]
    assert type(build_optimizer(torch.nn.Linear(2, 2), _opts())) is torch.optim.AdamW


def _resnet_lr(lr: float, decay: float, layer: int) -> float:
    """resnet18 under timm's fine group_matcher: stem = layer 0, layer1.0 .. layer4.1 = 1..8, the head = 9."""
    return lr * decay ** (9 - layer)


def _lr_of(optimizer, param: torch.Tensor) -> float:
    [lr] = [g["lr"] for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return lr


class _Segmenter(torch.nn.Module):
    """A model whose timm network is inside it (an smp encoder, an ink encoder)."""

    def __init__(self, **timm_kwargs) -> None:
        super().__init__()
        import timm

        self.encoder = timm.create_model("resnet18", **timm_kwargs)
        self.head = torch.nn.Conv2d(512, 1, 1)


def test_layer_decay_gives_each_layer_its_documented_lr():
    import timm

    lr, d = 1e-3, 0.5
    opts = _opts(layer_decay=d, lr=lr, warmup_epochs=0)
    net = timm.create_model("resnet18", num_classes=3)
    opt = build_optimizer(net, opts)
    sched = build_scheduler(opt, opts, steps_per_epoch=4)  # the schedule applies each group's lr_scale
    cases = {net.conv1.weight: 0, net.bn1.bias: 0, net.layer1[0].conv1.weight: 1, net.layer3[1].conv2.weight: 6,
             net.layer4[1].bn2.weight: 8, net.fc.weight: 9, net.fc.bias: 9}
    for p, layer in cases.items():
        assert _lr_of(opt, p) == pytest.approx(_resnet_lr(lr, d, layer), rel=1e-12)
    sched.step_update(2)  # down the cosine, every layer keeps its share
    ratio = opt.param_groups[0]["lr"] / opt.param_groups[0]["lr_scale"]
    assert _lr_of(opt, net.layer3[1].conv2.weight) == pytest.approx(ratio * d ** 3, rel=1e-12) and ratio < lr
    # weight decay is still off norms and biases inside each layer
    assert {g["weight_decay"] for g in opt.param_groups if any(p is net.bn1.bias for p in g["params"])} == {0.0}
    # a timm network inside another model (features only, as smp's tu- encoders, the ink encoder and effdet's
    # backbones build it, or whole): its layers decay, everything outside it is the top layer
    for seg in (_Segmenter(features_only=True), _Segmenter(num_classes=0)):
        opt = build_optimizer(seg, opts)
        build_scheduler(opt, opts, steps_per_epoch=4)
        enc = seg.encoder
        for p, layer in {enc.conv1.weight: 0, enc.bn1.weight: 0, enc.layer3[1].conv2.weight: 6,
                         seg.head.weight: 9}.items():
            assert _lr_of(opt, p) == pytest.approx(_resnet_lr(lr, d, layer), rel=1e-12)


def test_layer_decay_refuses_a_model_without_layers_to_decay_over():
    with pytest.raises(BadUsage, match=r"--layer-decay: model resnet18 \(cls\) has no timm layer grouping"):
        build_optimizer(torch.nn.Sequential(torch.nn.Linear(2, 2)), _opts(layer_decay=0.7))


def _step_fold(model: torch.nn.Module, opts, batches: int = 1) -> SimpleNamespace:
    """What kcomp.runs.train's step reads of a Fold, around a model on the CPU (fp32, no DDP)."""
    optimizer = build_optimizer(model, opts)
    return SimpleNamespace(opts=opts, device=torch.device("cpu"), dtype=None, task=SimpleNamespace(supports_mix=False),
                           model=model, ddp=model, step_model=model, loss_fn=torch.nn.functional.mse_loss,
                           scaler=torch.amp.GradScaler("cpu", enabled=False), optimizer=optimizer,
                           scheduler=build_scheduler(optimizer, opts, steps_per_epoch=batches), ema=None,
                           batches=batches, group_batches=[])


def _one_step(f, x, y) -> None:
    from kcomp.runs._fold import Position
    from kcomp.runs.train import _train_step

    assert _train_step(f, Position.start(torch.device("cpu")), x, y)


def test_one_sam_step_is_the_hand_computed_one():
    """w: two weights; loss = mean((x.w - y)^2); SAM ascends to w + rho g/|g|, takes the gradient there and the base
    optimizer (Nesterov SGD, first step: w - lr (1 + momentum) g) steps from w with it."""
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    w0 = np.array([0.3, -0.7])
    lr, momentum, rho = 0.1, 0.9, 0.5
    X, Y = x.double().numpy(), y.double().numpy()[:, 0]

    def grad(w: np.ndarray) -> np.ndarray:
        return 2 / len(X) * X.T @ (X @ w - Y)

    g = grad(w0)
    e = rho * g / np.linalg.norm(g)
    want = w0 - lr * (1 + momentum) * grad(w0 + e)

    def trained(**kw) -> np.ndarray:
        model = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(w0[None]).float())
        f = _step_fold(model, _opts(opt="sgd", lr=lr, momentum=momentum, weight_decay=0.0, warmup_epochs=0, **kw))
        _one_step(f, x, y)
        return model.weight.detach().double().numpy()[0]

    np.testing.assert_allclose(trained(sam=True, sam_rho=rho), want, rtol=1e-6)
    np.testing.assert_allclose(trained(), w0 - lr * (1 + momentum) * g, rtol=1e-6)  # without SAM: the plain step
    assert not np.allclose(want, w0 - lr * (1 + momentum) * g, rtol=1e-3)


def test_sam_with_accumulation_replays_the_groups_batches():
    """--accum 2 over two halves steps as one batch of both (mean losses, halves of equal size): the second pass
    goes over every batch of the group again, not only the last."""
    from kcomp.runs._fold import Position
    from kcomp.runs.train import _train_step

    torch.manual_seed(0)
    x, y = torch.randn(8, 2), torch.randn(8, 1)

    def trained(accum: int) -> torch.Tensor:
        model = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(model.weight, 0.3)
        torch.nn.init.constant_(model.bias, -0.2)
        f = _step_fold(model, _opts(opt="sgd", lr=0.1, accum=accum, warmup_epochs=0, sam=True, sam_rho=0.5),
                       batches=accum)
        pos = Position.start(torch.device("cpu"))
        steps = [_train_step(f, pos, xs, ys) for xs, ys in zip(x.chunk(accum), y.chunk(accum))]
        assert steps == [False] * (accum - 1) + [True]
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(trained(2), trained(1), rtol=1e-6, atol=1e-7)


def test_sam_leaves_batchnorm_statistics_to_the_first_pass():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 1))
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    ref = torch.nn.BatchNorm1d(3).train()
    with torch.no_grad():
        ref(model[0](x))  # one update of the statistics, from the starting weights
    _one_step(_step_fold(model, _opts(opt="sgd", warmup_epochs=0, sam=True)), x, y)
    assert torch.equal(model[1].running_mean, ref.running_mean) and torch.equal(model[1].running_var, ref.running_var)
    assert model[1].momentum == ref.momentum


def test_sam_refuses_fp16_loss_scaling():
    check_precision(_opts(sam=True, amp="bf16"), torch.bfloat16)
    check_precision(_opts(), torch.float16)
    with pytest.raises(BadUsage, match=r"--sam with --amp fp16 trains in fp16.*--amp bf16.*--amp off"):
        check_precision(_opts(sam=True, amp="fp16"), torch.float16)


def _plateau(higher_is_better: bool, patience: int):
    opts = _opts(sched="plateau", plateau_patience=patience, decay_rate=0.5, lr=1.0, warmup_epochs=0)
    opt = build_optimizer(torch.nn.Linear(2, 2), opts)
    return opt, build_scheduler(opt, opts, steps_per_epoch=3, higher_is_better=higher_is_better)


def test_plateau_decays_when_the_validation_metric_stops_improving_and_resumes_its_counters():
    scores = [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7]
    opt, sched = _plateau(True, patience=1)
    lrs = []
    for epoch, score in enumerate(scores, 1):
        sched.step_update(3 * epoch)  # per-step calls leave a plateau's LR alone
        sched.step(epoch, score)
        lrs.append(opt.param_groups[0]["lr"])
    # patience 1: the second epoch without a better score decays
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert all(g["lr"] == lrs[-1] for g in opt.param_groups)
    # a resumed run (state_dict into a fresh scheduler) decays at the same epochs: its counters were saved
    opt, sched = _plateau(True, patience=1)
    for epoch, score in enumerate(scores[:3], 1):
        sched.step(epoch, score)
    state, opt_state = sched.state_dict(), opt.state_dict()
    opt, sched = _plateau(True, patience=1)
    opt.load_state_dict(opt_state)
    sched.load_state_dict(state)
    resumed = []
    for epoch, score in enumerate(scores[3:], 4):
        sched.step(epoch, score)
        resumed.append(opt.param_groups[0]["lr"])
    assert resumed == lrs[3:]
    # a metric where lower is better: a rising loss is no improvement
    opt, sched = _plateau(False, patience=0)
    for epoch, score in enumerate([0.9, 0.8, 0.85], 1):
        sched.step(epoch, score)
    assert opt.param_groups[0]["lr"] == 0.5


def test_plateau_warms_up_per_step_and_ignores_epochs_inside_the_warmup():
    opts = _opts(sched="plateau", plateau_patience=0, lr=1.0, warmup_epochs=2)
    opt = build_optimizer(torch.nn.Linear(2, 2), opts)
    sched = build_scheduler(opt, opts, steps_per_epoch=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    sched.step_update(2)
    sched.step(1, 0.5)
    sched.step(1, 0.4)  # a worse epoch, but inside the warmup
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 + 0.99 / 2)
    sched.step_update(4)
    assert opt.param_groups[0]["lr"] == 1.0


def test_clip_grad_bounds_the_gradient_the_step_uses():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4) * 100, torch.randn(16, 1) * 100  # gradients far above the bound

    def update(**kw) -> torch.Tensor:
        model = torch.nn.Linear(4, 1)
        torch.nn.init.constant_(model.weight, 0.1)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        # plain SGD (`momentum` at 0, weight decay off): the update is lr x the gradient the step used
        _one_step(_step_fold(model, _opts(opt="momentum", momentum=0.0, lr=1.0, weight_decay=0.0, warmup_epochs=0,
                                          **kw)), x, y)
        return before - torch.cat([p.detach().flatten() for p in model.parameters()])

    assert update().norm() > 100
    assert update(clip_grad=0.5).norm() == pytest.approx(0.5, rel=1e-5)
    assert update(clip_grad=0.5, clip_mode="value").abs().max() == pytest.approx(0.5, rel=1e-6)
    params = [torch.nn.Parameter(torch.ones(3))]
    params[0].grad = torch.full((3,), 10.0)
    clip_gradients(params, _opts())  # no --clip-grad: untouched
    assert torch.equal(params[0].grad, torch.full((3,), 10.0))


@pytest.mark.parametrize("sched", ["step", "wsd", "tanh", "constant", "onecycle"])
def test_each_schedule_warms_up_then_moves_the_lr(sched):
    opts = _opts(sched=sched, lr=1.0, warmup_epochs=1, epochs=4)
    opt = build_optimizer(torch.nn.Linear(2, 2), opts)
    lrs = _lrs(opt, build_scheduler(opt, opts, steps_per_epoch=5), 20)
    assert lrs[0] == pytest.approx(0.01)  # every schedule starts its warmup at 1% of lr
    assert max(lrs) == pytest.approx(1.0)
    if sched == "constant":
        assert lrs[5:] == [1.0] * 16
    else:
        assert lrs[-1] < 1.0


def test_a_wsd_decay_longer_than_the_run_is_refused():
    opts = _opts(sched="wsd", decay_epochs=20.0, epochs=4)
    with pytest.raises(BadUsage, match=r"--decay-epochs 20\.0: wsd's decay \(100 steps\) must fit in the 15 steps"):
        build_scheduler(build_optimizer(torch.nn.Linear(2, 2), opts), opts, steps_per_epoch=5)


def test_bad_names_and_values_are_refused_in_one_line():
    cases = {"opt": ("foo", r"--opt foo: unknown optimizer \(timm's\); choose one of: .*adamw.*sgd"),
             "sched": ("foo", r"--sched foo: unknown schedule; choose one of: cosine, .*plateau, onecycle$"),
             "clip_mode": ("l1", r"--clip-mode l1: unknown clip mode; choose one of: norm, value, agc$"),
             "layer_decay": (1.5, r"--layer-decay 1\.5: must be in \(0, 1\]"),
             "sam_rho": (-0.1, r"--sam-rho -0\.1: must be in \(0, 10\]"),
             "clip_grad": (0.0, r"--clip-grad 0\.0: must be positive"),
             "momentum": (1.0, r"--momentum 1\.0: must be in \[0, 1\)")}
    for name, (value, message) in cases.items():
        with pytest.raises(BadUsage, match=message):
            _opts(**{name: value})
    for given, message in [({"momentum": 0.5}, r"--momentum 0\.5 applies only with --opt sgd"),
                           ({"sam_rho": 0.1}, r"--sam-rho 0\.1 applies only with --sam"),
                           ({"plateau_patience": 3}, r"applies only with --sched plateau"),
                           ({"decay_epochs": 2.0, "sched": "plateau"}, r"applies only with --sched step or wsd")]:
        with pytest.raises(BadUsage, match=message):
            _opts(**given)


def test_a_last_pt_from_before_timms_optimizer_and_schedule_resumes():
    """kcomp before timm's machinery: AdamW over [decay, no decay] groups and a LambdaLR; both load, each
    parameter gets its own saved moments back and the schedule goes on as the same cosine."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=3)
    decay = [p for p in net.parameters() if p.ndim > 1]
    old = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": [p for p in net.parameters() if p.ndim <= 1], "weight_decay": 0.0}], lr=1e-3)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(old, lambda step: 1.0)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    old.step()
    lambda_lr.step()
    opts = _opts()
    opt = build_optimizer(net, opts)
    sched = build_scheduler(opt, opts, steps_per_epoch=5)
    opt.load_state_dict(old.state_dict())
    load_scheduler(sched, lambda_lr.state_dict())
    assert all(torch.equal(opt.state[p]["exp_avg"], old.state[p]["exp_avg"]) for p in net.parameters())
    fresh = build_optimizer(net, opts)
    assert _lrs(opt, sched, 50)[1:] == _lrs(fresh, build_scheduler(fresh, opts, steps_per_epoch=5), 50)[1:]


def test_a_last_pt_whose_groups_differ_is_refused_naming_it(tmp_path):
    """An optimizer state grouped otherwise than these options group the model now: one line naming last.pt."""
    from kcomp.errors import ConfigMismatch
    from kcomp.runs._fold import load_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    old = torch.optim.AdamW([{"params": list(net.parameters())}])  # one group where kcomp builds two
    last = tmp_path / "fold0" / "last.pt"
    with pytest.raises(ConfigMismatch, match=r"fold0/last.pt: its optimizer state does not fit"):
        load_optimizer(build_optimizer(net, _opts()), old.state_dict(), last)
