"""The task protocol: everything task-specific that train, oof and tta need, and nothing else."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from torch.utils.data import Dataset

    from kcomp.artifacts.index import IndexTable


class Task(Protocol):
    name: str
    default_metric: str
    metrics: tuple[str, ...]  # the registered metrics that can score this task's predictions (--metric)
    supports_mix: bool  # batch mixup/cutmix make sense for this task's targets

    def setup(self, table: IndexTable, cfg: dict[str, Any]) -> dict[str, Any]:
        """Resolve what the model's output means (classes, target column); stored in config and checkpoints."""

    def dataset(self, table: IndexTable, rows: pd.DataFrame, cfg: dict[str, Any], setup: dict[str, Any], *,
                train: bool, with_targets: bool = True) -> Dataset:
        """Items are (input tensor, target); the dataset also offers `targets_array()` for validation scores."""

    def build_model(self, cfg: dict[str, Any], setup: dict[str, Any], *, weights: str | None = None
                    ) -> torch.nn.Module: ...

    def loss(self, cfg: dict[str, Any], setup: dict[str, Any]) -> Any: ...

    def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int) -> torch.Tensor:
        """Probabilities for a batch, averaged over `tta` augmentations whose inverses are applied."""

    def score(self, metric: str, preds: np.ndarray, targets: np.ndarray) -> float: ...

    def frame(self, rows: pd.DataFrame, preds: np.ndarray, setup: dict[str, Any], *, with_targets: bool
              ) -> pd.DataFrame:
        """Prediction rows for the predictions artifact."""

    def predict_rows(self, models: Iterable[torch.nn.Module], table: IndexTable, rows: pd.DataFrame,
                     cfg: dict[str, Any], setup: dict[str, Any], *, tta: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, workers: int, with_targets: bool,
                     labels: Sequence[str]) -> Iterable[Any]:
        """Each model's predictions for `rows`, in order (an (N, C) array for cls, a list of maps for ink), with
        `labels[i]` naming model i's progress. `models` may build each model when asked: a task with small
        predictions (cls, det) takes them all and reads each batch once for all of them; a dense task (seg, ink)
        takes one at a time and yields its predictions before asking for the next."""

    def average(self, preds: Iterable[Any]) -> Any:
        """Combine several models' `predict_rows` outputs (folds, runs). They may arrive one at a time (a
        generator that predicts with the next model when asked), so dense tasks keep a running sum, not a list."""

    def oof_score(self, metric: str, frame: pd.DataFrame, table: IndexTable) -> float:
        """The CV score of an OOF frame (before it is written)."""

    def tune_thresholds(self, preds: Any, **options: Any) -> dict[str, Any]:
        """Thresholds (+ min sizes) maximising the metric on OOF predictions, with the score they reach."""

