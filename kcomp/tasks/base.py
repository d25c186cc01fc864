"""The task contract: everything task-specific that train, oof and tta need, and nothing else.

A task subclasses `Task[P]`, where P is what one model predicts for a set of rows (cls: an (N, C) array; seg and
ink: a list of maps; det: a list of box arrays), and declares whether its predictions are small enough for several
models to predict each batch together (`one_model_at_a_time`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from torch.utils.data import Dataset

    from kcomp.artifacts.index import IndexTable
    from kcomp.models.pretrained import Init
    from kcomp.tasks.options import TrainOptions

P = TypeVar("P")  # one model's predictions for a set of rows


class Task(ABC, Generic[P]):
    name: ClassVar[str]
    default_metric: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # the registered metrics that can score this task's predictions (--metric)
    supports_mix: ClassVar[bool]  # batch mixup/cutmix make sense for this task's targets
    one_model_at_a_time: ClassVar[bool]
    """True where one model's predictions are large (seg and ink maps): `predict_rows` asks for the next model
    only after yielding the previous one's predictions, so one model and one set of maps are in memory at a time
    (`kcomp.runs.predict` checks it). False where they are small (cls, det): `predict_rows` takes several models
    first and reads each batch once for all of them (`kcomp.infer.predict.predict_in_groups` caps how many)."""

    @abstractmethod
    def setup(self, table: IndexTable, opts: TrainOptions) -> dict[str, Any]:
        """Resolve what the model's output means (classes, target column); stored in config and checkpoints."""

    @abstractmethod
    def dataset(self, table: IndexTable, rows: pd.DataFrame, opts: TrainOptions, setup: dict[str, Any], *,
                train: bool, with_targets: bool = True) -> Dataset:
        """Items are (input tensor, target); the dataset also offers `targets_array()` for validation scores."""

    @abstractmethod
    def build_model(self, opts: TrainOptions, setup: dict[str, Any], *, init: Init | None = None
                    ) -> torch.nn.Module:
        """The task's model for `opts` (its normalisation follows the model and pretrained tag). `init` says where
        its first weights come from (training: hub, local file, random; it records which); without it the weights
        are random, to be overwritten (oof/tta load checkpoints)."""

    @abstractmethod
    def loss(self, opts: TrainOptions, setup: dict[str, Any]) -> Any:
        """`loss(model_output, target)`, from `kcomp.models.losses`."""

    def train_collate(self, opts: TrainOptions, setup: dict[str, Any]) -> Callable[[list[Any]], Any] | None:
        """The training loader's collate function, or None for torch's default. It runs in the DataLoader workers:
        the place for target preparation that would otherwise make the training step wait on the host."""
        return None

    @abstractmethod
    def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int, scales: Sequence[float] = (1.0,)
                ) -> torch.Tensor:
        """Probabilities for a batch, averaged over `tta` flip views at each of `scales` (input sizes relative to
        the batch's), each view's output mapped back to the batch's geometry exactly."""

    def score(self, metric: str, preds: np.ndarray, targets: np.ndarray) -> float:
        """The metric of validation predictions (`predict` over the validation loader) against `targets_array()`."""
        from kcomp.metrics import get_metric

        return float(get_metric(metric).fn(targets, preds))

    @abstractmethod
    def predict_rows(self, models: Iterable[torch.nn.Module], table: IndexTable, rows: pd.DataFrame,
                     opts: TrainOptions, setup: dict[str, Any], *, tta: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, workers: int, with_targets: bool,
                     labels: Sequence[str], out_size: tuple[int, int] | None = None,
                     scales: Sequence[float] = (1.0,)) -> Iterator[P]:
        """Each model's predictions for `rows`, in model order, with `labels[i]` naming model i's progress.
        `models` may build each model when asked for it; see `one_model_at_a_time` for when to ask. `out_size`:
        seg maps stored at that size; `scales`: multi-scale TTA (`Task.predict`; refused for ink before this)."""

    @abstractmethod
    def average(self, preds: Iterable[P]) -> P:
        """Combine several models' `predict_rows` outputs (folds, runs). They may arrive one at a time (a
        generator that predicts with the next model when asked), so dense tasks keep a running sum, not a list."""

    @abstractmethod
    def frame(self, rows: pd.DataFrame, preds: P, setup: dict[str, Any], *, with_targets: bool) -> pd.DataFrame:
        """Prediction rows for the predictions artifact."""

    @abstractmethod
    def oof_score(self, metric: str, frame: pd.DataFrame, table: IndexTable) -> float:
        """The CV score of an OOF frame (before it is written)."""

    @abstractmethod
    def tune_thresholds(self, preds: Any, **options: Any) -> dict[str, Any]:
        """Thresholds (+ min sizes) maximising the metric on OOF predictions, with the score they reach."""
