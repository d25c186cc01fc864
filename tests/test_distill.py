"""Distillation from a teacher's OOF probabilities: the loss (alpha = 1 is the cross-entropy to the teacher, alpha =
0 today's loss, checked on a batch), its packed targets through batch mixing, and aligning the teacher to rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from kcomp.artifacts.predictions import read_predictions, write_predictions
from kcomp.data.teacher import teacher_probs
from kcomp.errors import BadInput, BadUsage
from kcomp.models.losses import (
    LOSSES,
    build_distillation,
    build_loss,
    distillation_loss,
    pack_teacher,
)
from kcomp.data.mix import mix_batch

N, C = 16, 5


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, generator=g) * 2
    target = torch.randint(0, C, (N,), generator=g)
    teacher = torch.softmax(torch.randn(N, C, generator=g) * 1.5, dim=1)
    return logits, target, teacher


def test_alpha_one_is_the_cross_entropy_to_the_teacher() -> None:
    logits, target, teacher = _batch()
    loss = build_distillation(build_loss("ce"), alpha=1.0)(logits, pack_teacher(target, teacher))
    expected = -(teacher * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(logits, teacher), atol=1e-6)  # torch's soft-target CE


@pytest.mark.parametrize("name", LOSSES)
def test_alpha_zero_is_todays_loss(name: str) -> None:
    logits, target, teacher = _batch(1)
    today = build_loss(name, smoothing=0.1)
    loss = build_distillation(today, alpha=0.0)(logits, pack_teacher(target, teacher))
    assert torch.allclose(loss, today(logits, target), atol=1e-6)


def test_alpha_mixes_the_two_and_temperature_softens_both_sides() -> None:
    logits, target, teacher = _batch(2)
    label = build_loss("bi_tempered")
    mixed = distillation_loss(logits, target, teacher, label_loss=label, alpha=0.3)
    assert torch.allclose(mixed, 0.7 * label(logits, target) + 0.3 * F.cross_entropy(logits, teacher), atol=1e-6)
    t = 4.0
    soft_teacher = torch.softmax(teacher.log() / t, dim=1)
    hot = distillation_loss(logits, target, teacher, label_loss=label, alpha=1.0, temperature=t)
    assert torch.allclose(hot, F.cross_entropy(logits / t, soft_teacher) * t * t, atol=1e-5)


def test_gradient_at_alpha_one_pulls_towards_the_teacher() -> None:
    logits, target, teacher = _batch(3)
    x = logits.clone().requires_grad_(True)
    build_distillation(build_loss("ce"), alpha=1.0)(x, pack_teacher(target, teacher)).backward()
    assert torch.allclose(x.grad, (torch.softmax(logits, 1) - teacher) / N, atol=1e-6)


def test_packed_targets_go_through_batch_mixing_together() -> None:
    """Mixing is linear in the targets, so mixing [labels | teacher] as one (N, 2C) row mixes each half as the
    label-only loop would, and the loss sees consistent halves."""
    logits, target, teacher = _batch(4)
    x = torch.rand(N, 3, 8, 8)
    packed = pack_teacher(target, teacher)
    _, mixed = mix_batch(x, packed, 2 * C, mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0,
                         generator=torch.Generator().manual_seed(0))
    _, labels_only = mix_batch(x, target, C, mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mixed[:, :C], labels_only) and torch.allclose(mixed[:, C:].sum(1), torch.ones(N))
    loss = build_distillation(build_loss("ce"), alpha=0.5)(logits, mixed)
    expected = 0.5 * F.cross_entropy(logits, labels_only) + 0.5 * F.cross_entropy(logits, mixed[:, C:])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_bad_alpha_temperature_and_targets() -> None:
    ce = build_loss("ce")
    for kwargs, message in (({"alpha": 1.5}, "--distill-alpha 1.5"), ({"alpha": -0.1}, "--distill-alpha -0.1"),
                            ({"alpha": 0.5, "temperature": 0.0}, "--distill-temperature 0.0")):
        with pytest.raises(BadUsage, match=message):
            build_distillation(ce, **kwargs)
    logits, target, _ = _batch()
    with pytest.raises(ValueError, match=r"\(N, 10\)"):
        build_distillation(ce, alpha=0.5)(logits, target)


# --- aligning the teacher's OOF probabilities to training rows ---------------------------------------------------

def _teacher(path: Path, ids: list[str], classes: list[str], kind: str = "oof", probs: np.ndarray | None = None
             ) -> Path:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(len(classes)), len(ids)).astype(np.float32) if probs is None else probs
    df = pd.DataFrame({"id": ids, "fold": 0, "probs": list(p)})
    if kind == "oof":
        df["target"] = p.argmax(1)
    write_predictions(df, path, task="cls", kind=kind, classes=classes)
    return path


def test_teacher_probabilities_follow_the_rows_order(tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(6)]
    teacher = read_predictions(_teacher(tmp_path / "t.parquet", ids, ["a", "b", "c"]))
    rows = ["r4", "r0", "r5"]
    got = teacher_probs(teacher, rows, ["a", "b", "c"])
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, teacher.probs()[[4, 0, 5]], atol=1e-6)


def test_teacher_mismatches_are_one_clear_line(tmp_path: Path, demo_run: dict[str, Path]) -> None:
    ids = ["r0", "r1"]
    oof = read_predictions(_teacher(tmp_path / "t.parquet", ids, ["a", "b"]))
    with pytest.raises(BadInput, match=r"1 training row\(s\) have no teacher probabilities, e.g. id 'r9'"):
        teacher_probs(oof, ["r0", "r9"], ["a", "b"])
    with pytest.raises(BadInput, match=r"teacher classes \['a', 'b'\] differ from the training classes \['b', 'a'\]"):
        teacher_probs(oof, ids, ["b", "a"])
    test = read_predictions(_teacher(tmp_path / "test.parquet", ids, ["a", "b"], kind="test"))
    with pytest.raises(BadInput, match="a teacher is cls OOF predictions"):
        teacher_probs(test, ids, ["a", "b"])
    real = read_predictions(demo_run["oof"])
    got = teacher_probs(real, list(real.df["id"])[::-1], real.classes)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
