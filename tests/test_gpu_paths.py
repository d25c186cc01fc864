"""The CUDA paths, checked without a GPU: torch.cuda's device queries are replaced by what a given GPU answers
(a T4 is sm_75, one GPU bound per SLURM task is cuda:0 whatever the local rank, ...), and what kcomp then does is
compared with what that GPU needs. `benchmarks/gpu_check.sh` runs the same paths on a real GPU."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from pathlib import Path

import pytest
import torch

from kcomp import console
from kcomp.runtime import device as dev
from kcomp.runtime import distributed
from tests.conftest import run_cli

T4 = {"name": "Tesla T4", "capability": (7, 5), "memory": 15 * 2**30}
A100 = {"name": "NVIDIA A100-SXM4-40GB", "capability": (8, 0), "memory": 40 * 2**30}


class _Props:
    def __init__(self, memory: int) -> None:
        self.total_memory = memory


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    """torch.cuda answering as a machine with `count` GPUs of kind `gpu` would; `set(...)` changes it. Records the
    devices made current."""

    class Fake:
        current: list[int] = []

        def set(self, gpu: dict, count: int = 1) -> Fake:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
            monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what sm_75 answers too
            monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: gpu["capability"])
            monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: gpu["name"])
            monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: _Props(gpu["memory"]))
            monkeypatch.setattr(torch.cuda, "set_device", lambda d: self.current.append(torch.device(d).index))
            monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current[-1] if self.current else 0)
            return self

    return Fake()


@pytest.fixture(scope="module")
def tiny_cls_fold(tmp_path_factory: pytest.TempPathFactory):
    """A real fold of a miniature cls competition (6 training batches of 4), on the CPU."""
    from kcomp.artifacts import read_index
    from kcomp.runs import config
    from kcomp.runs._fold import build_fold
    from kcomp.tasks import get_task
    from tests.tiny_tasks import OPTIONS, make_folds

    root = tmp_path_factory.mktemp("tiny_cls")
    folds = make_folds("cls", root)
    cfg = config.resolve(task="cls", folds=str(folds), device="cpu", workers=0, epochs=1,
                         **{**OPTIONS["cls"], "batch_size": 4})
    table = read_index(folds, "folds")
    task = get_task("cls")
    return build_fold(cfg, table, task, task.setup(table, cfg), root / "run", 0)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(console, "log", lines.append)
    return lines


# ------------------------------------------------------------------------------------------- certain defects


def test_amp_auto_is_fp16_before_ampere_even_where_bf16_is_emulated(fake_cuda):
    cuda = torch.device("cuda", 0)
    fake_cuda.set(T4)
    assert dev.amp_dtype(cuda, "auto") == torch.float16
    fake_cuda.set(A100)
    assert dev.amp_dtype(cuda, "auto") == torch.bfloat16
    assert dev.amp_dtype(torch.device("cpu"), "auto") is None


def test_an_op_without_a_deterministic_kernel_runs_and_is_named_once(logged):
    """On CUDA, the backward of bilinear upsampling (seg, ink decoders) and of adaptive average pooling have no
    deterministic kernel; `put_` takes the same path on the CPU. --deterministic used to make them raise."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    dev._SAID.discard("put_")
    t = torch.zeros(4)
    try:
        with warnings.catch_warnings():  # puts the warning hooks and filters back afterwards
            dev.seed_everything(0, deterministic=True)
            for _ in range(3):
                t.put_(torch.tensor([1]), torch.tensor([1.0]))
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert t[1] == 1.0
    assert [ln for ln in logged if "put_" in ln] == [
        "[yellow]--deterministic: put_ has no deterministic kernel on this device; it runs nondeterministically "
        "(results may differ between identical runs in the last bits)"]


def test_cuda_rng_state_is_this_process_devices_only(fake_cuda, monkeypatch):
    """Saved on a 2-GPU box, resumed where one GPU is visible: each process has one device's state, its own."""
    per_device = {0: torch.full((8,), 10, dtype=torch.uint8), 1: torch.full((8,), 11, dtype=torch.uint8)}
    restored: list[tuple[int, int]] = []

    def set_state(state: torch.Tensor, device: int | str = "cuda") -> None:
        index = torch.cuda.current_device() if device == "cuda" else torch.device("cuda", device).index
        if index >= torch.cuda.device_count():
            raise IndexError("list index out of range")  # what torch.cuda.default_generators[index] raises
        restored.append((index, int(state[0])))

    for mod in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(mod, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": per_device[torch.cuda.current_device()])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [per_device[0], per_device[1]])
    fake_cuda.set(A100, count=2)
    torch.cuda.set_device(1)  # rank 1 of a 2-GPU DDP run
    saved = dev.rng_state()
    assert [int(s[0]) for s in saved["cuda"]] == [11]
    fake_cuda.set(A100, count=1)  # resumed alone, its GPU as cuda:0
    fake_cuda.current.clear()
    dev.set_rng_state(saved)
    assert restored == [(0, 11)]
    restored.clear()
    dev.set_rng_state({**saved, "cuda": [per_device[0], per_device[1]]})  # a checkpoint of earlier kcomp
    assert restored == [(0, 10)]


class _OnCuda1(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (the data path of the copy stays the CPU's)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 1)


def test_the_host_copy_event_is_recorded_on_the_tensors_own_device(fake_cuda, monkeypatch):
    """`oof --device cuda:1`: the copy runs on cuda:1's stream, so its event must be recorded there; recorded on
    cuda:0's current stream it would fire before the copy landed and the host would read a half-written map."""
    from kcomp.runtime import host_stage

    fake_cuda.set(A100, count=2)
    recorded: list[object] = []

    class Event:
        def record(self, stream: object = None) -> None:
            recorded.append(stream)

        def synchronize(self) -> None:
            pass

    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: real_empty(*a, **k))
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", torch.device(device).index))
    t = torch.arange(6.0).reshape(2, 3).as_subclass(_OnCuda1)
    host, event = host_stage.to_host_async(t)
    assert recorded == [("stream of", 1)]
    assert torch.equal(host, torch.arange(6.0).reshape(2, 3)) and type(host) is torch.Tensor
    stage = host_stage.HostStage(lambda a: [a.copy()])
    stage.submit(t)
    assert stage.results()[0].tolist() == [[0, 1, 2], [3, 4, 5]] and recorded[-1] == ("stream of", 1)


def test_a_device_index_becomes_the_current_device(fake_cuda):
    fake_cuda.set(A100, count=2)
    assert distributed.local_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert fake_cuda.current == [1]
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu") and fake_cuda.current == [1]


def test_resuming_fp32_state_where_amp_picks_fp16(tiny_cls_fold):
    """A fold saved with a disabled GradScaler (bf16 on an A100, or fp32) resumed on a T4 (fp16, scaler on)."""
    from kcomp.runs._fold import Position, resume, save_last

    f = tiny_cls_fold
    f.last.parent.mkdir(parents=True, exist_ok=True)
    save_last(f, Position.start(f.device))
    assert torch.load(f.last, weights_only=True)["scaler"] == {}
    f.scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**12)
    pos = resume(f, True)
    assert pos.epoch == 0 and f.scaler.is_enabled() and f.scaler.get_scale() == 2.0**12


def test_det_anchor_labels_from_the_loader_give_effdets_own_loss(tmp_path):
    """Labelling anchors in the loader (on the CPU, per image) gives the loss and gradients that effdet's
    DetBenchTrain computes, labelling the same batch inside its forward (what kcomp's loss did in the step)."""
    from effdet.bench import DetBenchTrain

    from kcomp.artifacts import read_index
    from kcomp.runs import config
    from kcomp.tasks import get_task
    from tests.test_det import make_det_index

    table = read_index(make_det_index(tmp_path, n_train=4, n_test=0))
    task = get_task("det")
    cfg = config.resolve(task="det", model="tf_efficientdet_d0", img_size=128, batch_size=4)
    setup = task.setup(table, cfg)
    ds = task.dataset(table, table.rows("train"), cfg, setup, train=True)
    items = [ds[(i, 7)] for i in range(4)]
    model = task.build_model(cfg, setup)
    x, labelled = task.train_collate(cfg, setup)(items)
    torch.manual_seed(0)  # the same drop-path masks in both forward passes
    ours = task.loss(cfg, setup)(model(x), labelled)
    ours.backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    raw = torch.stack([y for _, y in items])  # (B, M, 5) yxyx, classes from 1, -1 padding
    bench = DetBenchTrain(model, create_labeler=True)
    torch.manual_seed(0)
    theirs = bench(x, {"bbox": raw[..., :4], "cls": raw[..., 4]})["loss"]
    theirs.backward()
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, p.grad) for a, p in zip(ours_grads, model.parameters(), strict=True))


# --------------------------------------------------------------------------------------------- likely defects


def test_slurm_one_gpu_per_task_uses_the_gpu_it_sees(fake_cuda, monkeypatch):
    """srun with --gpus-per-task=1: every task sees one GPU, cuda:0, whatever its LOCAL_RANK."""
    fake_cuda.set(A100, count=1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda", 0)
    fake_cuda.set(A100, count=4)
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda", 3)


def test_the_start_up_line_names_device_gpu_precision_and_processes(fake_cuda):
    fake_cuda.set(T4)
    cuda = torch.device("cuda", 0)
    assert dev.describe(cuda, dev.amp_dtype(cuda, "auto"), 2) == \
        "device cuda:0 (Tesla T4, sm_75, 15 GiB); amp fp16 + GradScaler; 2 processes"
    threads = torch.get_num_threads()
    assert dev.describe(torch.device("cpu"), None, 1) == \
        f"device cpu (--device auto found no CUDA GPU), {threads} threads; amp off (float32); 1 process"


def test_oof_says_where_it_computes(demo_run, capsys, tmp_path):
    from kcomp.runs.predict import PredictOptions, predict_oof

    console.set_quiet(False)
    predict_oof([demo_run["run"]], PredictOptions(device="cpu", workers=0))
    err = " ".join(capsys.readouterr().err.split())
    assert "device cpu, " in err and "amp off (float32); 1 process" in err


def test_parallel_folds_without_a_gpu_are_refused(demo_run, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run_cli("train", "cls", "--folds", demo_run["folds"], "--fold", "all", "--gpus", "2", "--parallel-folds",
                "--img-size", "32", "--epochs", "1", "-o", tmp_path / "run")
    assert r.code == 2, r.stderr
    assert "this machine has 0 CUDA device(s) (add --device cpu" in r.last_error_line
    assert not (tmp_path / "run").exists()


def test_ranks_agree_on_stopping_only_every_log_every_steps(tiny_cls_fold, monkeypatch):
    """The stop flag is a collective under DDP: once every --log-every steps (and at saves), not every step."""
    from kcomp.runs import _fold, train

    f = tiny_cls_fold
    calls: list[bool] = []
    monkeypatch.setattr(_fold.Fold, "world", property(lambda self: 2))
    monkeypatch.setattr(distributed, "any_flag", lambda flag: calls.append(flag) or flag)
    monkeypatch.setattr(f, "opts", dataclasses.replace(f.opts, log_every=2, save_every=0))
    pos = _fold.Position.start(f.device)
    train.train_one_epoch(f, pos, console_bar(), {"stop": False})
    assert f.batches >= 4 and len(calls) == f.batches // 2


def console_bar():
    class Bar:
        def advance(self, n: float = 1, **fields: object) -> None:
            pass

    return Bar()


def test_fused_adamw_on_cuda_for_each_on_cpu(monkeypatch):
    from kcomp.runs import config
    from kcomp.models.optim import build_optimizer

    model = torch.nn.Linear(3, 2)
    cfg = config.resolve(lr=1e-3, weight_decay=0.05)
    assert not build_optimizer(model, cfg).defaults["fused"]  # the CPU keeps the for-each kernel
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert build_optimizer(model, cfg).defaults["fused"]


def test_cuda_backends_tf32_and_cudnn_benchmark(monkeypatch):
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    try:
        matmul.allow_tf32 = False
        dev.configure_backends(torch.device("cpu"))
        assert not matmul.allow_tf32
        dev.configure_backends(torch.device("cuda", 0))
        assert matmul.allow_tf32 and torch.backends.cudnn.benchmark
        dev.configure_backends(torch.device("cuda", 0), deterministic=True)
        assert not torch.backends.cudnn.benchmark
    finally:
        matmul.allow_tf32 = before


def test_predictions_configure_the_backends(demo_run, monkeypatch):
    from kcomp.runs import predict

    seen: list[torch.device] = []
    monkeypatch.setattr(predict, "configure_backends", lambda d, deterministic=False: seen.append(d))
    predict.predict_test([demo_run["run"]], predict.PredictOptions(device="cpu", workers=0))
    assert seen and all(d == torch.device("cpu") for d in seen)


def test_default_workers_from_the_cores_on_a_gpu(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert dev.resolve_workers(None, cuda) == 8
    assert dev.resolve_workers(None, cuda, processes=4) == 4
    assert dev.resolve_workers(None, cpu) == 2
    assert dev.resolve_workers(0, cuda) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert dev.resolve_workers(None, cuda) == 2


def _invoke(*args: str | Path) -> tuple[int, str]:
    from kcomp.commands._common import run_app
    from kcomp.commands.main import app

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_app(app, ["--quiet", *map(str, args)])
        except SystemExit as e:
            return int(e.code or 0), err.getvalue()
    return 0, err.getvalue()


@pytest.mark.parametrize("command", ["train", "tta"])
def test_out_of_memory_is_one_line_naming_the_batch_size(command, demo_run, monkeypatch, tmp_path):
    from kcomp.runs import train
    from kcomp.tasks.cls import ClsTask

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "train_one_epoch", oom)
    monkeypatch.setattr(ClsTask, "predict", oom)
    argv = {"train": ("train", "cls", "--folds", demo_run["folds"], "--img-size", "32", "--batch-size", "16",
                      "--workers", "0", "-o", tmp_path / "run"),
            "tta": ("tta", demo_run["run"], "--batch-size", "16", "--workers", "0", "-o", tmp_path / "t.parquet")}
    code, err = _invoke(*argv[command])
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], err
    assert lines[0].startswith("kcomp: error: out of GPU memory on cpu at --batch-size 16: re-run with a lower "
                               "--batch-size")


def test_outputs_leave_the_device_batch_by_batch(monkeypatch):
    """Validation and oof copy each batch's outputs to the host as they are made: kept on the device until the end,
    a seg fold's float maps took GBs of GPU memory (and twice that for the concatenation)."""
    from torch.utils.data import DataLoader, TensorDataset

    from kcomp.infer.predict import predict_loader
    from kcomp.runtime import host_stage

    copied: list[int] = []
    real = host_stage.to_host_async
    monkeypatch.setattr(host_stage, "to_host_async", lambda t: copied.append(t.shape[0]) or real(t))

    class Task:
        def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int, scales: tuple = (1.0,)) -> torch.Tensor:
            return model(x)

    x = torch.arange(10.0).reshape(5, 2)
    [out] = predict_loader([torch.nn.Identity()], DataLoader(TensorDataset(x, torch.zeros(5)), batch_size=2),
                           Task(), tta=1, device=torch.device("cpu"), dtype=None)
    assert copied == [2, 2, 1]
    assert out.tolist() == x.tolist()


# ---------------------------------------------------------------------------------------------- TTA and groups


def test_tta_views_go_through_the_model_one_batch_at_a_time():
    from kcomp.tasks import get_task

    sizes: list[int] = []

    class Seg(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            sizes.append(x.shape[0])
            return x[:, :2].float() / 255

    class Cls(Seg):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x).mean((2, 3))

    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    for task, model in (("seg", Seg()), ("cls", Cls())):
        sizes.clear()
        one = get_task(task).predict(model, x, 1)
        eight = get_task(task).predict(model, x, 8)
        assert sizes == [3] * 9  # the batch once, then 8 views of 3 images, never 24 at once
        torch.testing.assert_close(eight, one)  # these models are flip-equivariant (seg) / invariant (cls)


def test_a_runs_models_are_held_in_groups_that_fit(monkeypatch, fake_cuda):
    """Twenty models (10 folds x best+last) of a classifier: groups of at most MODELS_TOGETHER on the CPU; on a GPU
    as many as fit in a quarter of its memory; each group is released before the next is built."""
    from torch.utils.data import DataLoader, TensorDataset

    from kcomp.infer import predict as pr

    alive: list[int] = []
    built: list[int] = []

    class Model(torch.nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            self.i, self.w = i, torch.nn.Parameter(torch.full((1000,), float(i)))
            alive.append(i)
            built.append(len(alive))

        def __del__(self) -> None:
            alive.remove(self.i)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.w[0]

    class Task:
        def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int, scales: tuple = (1.0,)) -> torch.Tensor:
            return model(x)

    loader = DataLoader(TensorDataset(torch.zeros(5, 2), torch.zeros(5)), batch_size=2)
    models = (Model(i) for i in range(20))
    preds = list(pr.predict_in_groups(models, loader, Task(), tta=1, device=torch.device("cpu"), dtype=None,
                                      labels=[str(i) for i in range(20)]))
    assert [p[0, 0] for p in preds] == list(range(20)) and max(built) == pr.MODELS_TOGETHER
    fake_cuda.set({**A100, "memory": 4 * 12_000})  # a quarter fits 3 models of 4,000 bytes
    assert pr._group_size(Model(99), torch.device("cuda", 0)) == 3
