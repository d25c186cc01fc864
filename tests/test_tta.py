"""TTA views and their exact inverses: a dense prediction mapped back must land on the original pixels."""

from __future__ import annotations

import pytest
import torch

from kcomp.errors import BadUsage
from kcomp.infer.tta import flips, unflip


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_unflip_inverts_flips(n):
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    views = flips(x, n)
    assert len(views) == n
    assert len({tuple(v.flatten().tolist()) for v in views}) == n  # all views differ
    for back in unflip(views):
        assert torch.equal(back, x)


def test_bad_tta_count():
    with pytest.raises(BadUsage, match="--tta 3"):
        flips(torch.zeros(1, 1, 2, 2), 3)


def test_cls_prediction_is_flip_averaged_softmax():
    from kcomp.tasks import get_task

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    x = torch.rand(6, 3, 4, 4)
    probs = get_task("cls").predict(model, x, 4)
    expected = torch.stack([model(v).softmax(1) for v in flips(x, 4)]).mean(0)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(1), torch.ones(6))


@pytest.mark.parametrize("checkpoints", ["best", "best+last"])
def test_a_runs_folds_predict_each_test_batch_together(demo_run, monkeypatch, checkpoints):
    """Every fold (and checkpoint) of a run predicts each batch as it is read, so a test image is decoded once,
    not once a model; the average equals each model predicting the rows on its own."""
    from collections import Counter

    import numpy as np
    import torch

    from kcomp.data.datasets import ImageDataset
    from kcomp.runs.predict import PredictOptions, _weights, open_run, predict_test
    from kcomp.tasks import get_task

    reads: Counter = Counter()
    read = ImageDataset.read
    monkeypatch.setattr(ImageDataset, "read", lambda self, idx: reads.update([idx]) or read(self, idx))
    frame, meta = predict_test([demo_run["run"]], PredictOptions(device="cpu", workers=0, checkpoints=checkpoints))
    run, task = open_run(demo_run["run"]), get_task("cls")
    rows = run.table.rows("test")
    assert len(run.folds) == 2 and meta["models"] == 2
    assert sorted(reads) == list(range(len(rows))) and set(reads.values()) == {1}

    monkeypatch.setattr(ImageDataset, "read", read)
    ds = task.dataset(run.table, rows, run.opts, run.setup, train=False, with_targets=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).contiguous(memory_format=torch.channels_last)
    alone = []
    for fold in run.folds:
        for which in checkpoints.split("+"):
            model = task.build_model(run.opts, run.setup)
            model.load_state_dict(_weights(run, fold, which, "cls"))
            with torch.inference_mode():
                alone.append(task.predict(model.eval(), x, 1).numpy())
    np.testing.assert_allclose(np.stack(frame["probs"].to_numpy()), np.mean(alone, axis=0), rtol=1e-5, atol=1e-6)
