"""Host syncs per training step and per inference batch, counted on the CPU for every task (`tests/sync_count.py`
says what counts). A training step must not make the host wait for the device at all: losses are summed on the
device, progress counts images on the host, det's anchors are labelled in the DataLoader (as effdet's own loader
does), and AdamW's step counters are host tensors on a CPU (for-each kernel) and device tensors on a GPU (fused
kernel), read by neither on the host.

Inference counts are documented here and in the README: one batch of `task.predict` (the model, TTA views and
their inverses) reads nothing back except det's per-image NMS (effdet's; 2 per image with today's effdet, a bound
here, as a new effdet release may count differently).
"""

from __future__ import annotations


import pytest
import torch

from kcomp.artifacts import read_index
from kcomp.runs import config
from kcomp.runs._fold import Position, build_fold
from kcomp.runs.train import _train_step
from kcomp.tasks import get_task
from tests.sync_count import SyncCounter, device_tensors
from tests.tiny_tasks import OPTIONS, TASK_NAMES, make_folds

# syncs one inference batch of `task.predict` makes (4 images, --tta 1), per task: see the module docstring
INFERENCE_SYNCS = {"cls": 0, "seg": 0, "ink": 0}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=TASK_NAMES)
def fold(request, tmp_path_factory):
    task = request.param
    root = tmp_path_factory.mktemp(f"sync_{task}")
    folds = make_folds(task, root)
    cfg = config.resolve(task=task, folds=str(folds), device="cpu", workers=0, epochs=1, **OPTIONS[task])
    table = read_index(folds, "folds")
    t = get_task(task)
    return build_fold(cfg, table, t, t.setup(table, cfg), root / "run", 0)


def test_a_training_step_never_waits_for_the_device(fold):
    pos = Position.start(fold.device)
    batches = iter(fold.train_dl)
    _train_step(fold, pos, *next(batches))  # the first step creates the optimizer's state
    x, y = next(batches)
    with SyncCounter(device_tensors(fold.model, fold.ema.module if fold.ema else None, fold.optimizer, x, y,
                                    pos.loss_sum)) as syncs:
        _train_step(fold, pos, x, y)
    assert syncs.total == 0, f"{fold.task.name}: {dict(syncs.counts)}"


def test_inference_batch_syncs_are_the_documented_ones(fold):
    task = fold.task
    x, _ = next(iter(fold.val_dl))
    model = fold.eval_model.eval()
    with torch.inference_mode(), SyncCounter(device_tensors(model, x)) as syncs:
        task.predict(model, x, 1)
    if task.name == "det":  # effdet's NMS, per image: at least one read-back, never one per box
        assert 1 <= syncs.total <= 8 * x.shape[0], dict(syncs.counts)
    else:
        assert syncs.total == INFERENCE_SYNCS[task.name], dict(syncs.counts)
