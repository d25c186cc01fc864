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
