"""A teacher's out-of-fold class probabilities, aligned to training rows by id (`train --teacher OOF`).

OOF probabilities were predicted by models that never trained on the row, so they carry what the teacher learnt
from the other rows, not a memorised label: the soft targets of distillation (`kcomp.models.losses`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput

if TYPE_CHECKING:
    from kcomp.artifacts.predictions import Predictions


def teacher_probs(teacher: Predictions, ids: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """float32 (len(ids), C) probabilities of `teacher` in the order of `ids`; the teacher must be cls OOF over
    the same classes in the same order and hold every id."""
    if teacher.task != "cls" or teacher.kind != "oof":
        raise BadInput(f"a teacher is cls OOF predictions (from `kcomp oof`); this holds {teacher.kind} "
                       f"predictions of task {teacher.task}", path=teacher.source)
    probs = teacher.probs()
    names = teacher.classes or [str(c) for c in range(probs.shape[1])]
    if list(names) != list(classes):
        raise BadInput(f"teacher classes {list(names)} differ from the training classes {list(classes)}",
                       path=teacher.source)
    pos = {v: i for i, v in enumerate(teacher.df["id"])}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise BadInput(f"{len(missing)} training row(s) have no teacher probabilities, e.g. id {missing[0]!r} (a "
                       "teacher's OOF must cover the folds' train rows)", path=teacher.source)
    out = probs[[pos[i] for i in ids]].astype(np.float32)
    sums = out.sum(1)
    if len(out) and (out.min() < 0 or not np.allclose(sums, 1.0, atol=1e-3)):
        raise BadInput("teacher probs are not probabilities (rows must be >= 0 and sum to 1)", path=teacher.source)
    return out / sums[:, None] if len(out) else out
