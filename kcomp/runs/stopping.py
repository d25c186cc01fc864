"""Early stopping (`--patience N`): a fold stops once N epochs in a row have not beaten its best validation score.

"Beaten" is the metric's own direction (`Metric.is_better`, the rule that chooses best.pt). The rule reads only the
fold's position (epochs done, the epoch of the best score), which last.pt saves: a resumed fold stops where an
uninterrupted one does, and a fold that stopped is not trained further when its command runs again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kcomp.runs._fold import Position
    from kcomp.tasks.options import TrainOptions


def exhausted(epochs_done: int, best_epoch: int, patience: int) -> bool:
    """Whether `patience` (0 = never) epochs have passed since the best one (1-based; < 1: none yet)."""
    return patience > 0 and best_epoch >= 1 and epochs_done - best_epoch >= patience


def finished(opts: TrainOptions, epochs_done: int, best_epoch: int) -> bool:
    """Whether a fold is done: `--epochs` trained, or stopped early by `--patience`."""
    return epochs_done >= opts.epochs or exhausted(epochs_done, best_epoch, opts.patience)


def stopped(opts: TrainOptions, pos: Position) -> bool:
    """Whether the fold at `pos` has stopped early (before `opts.epochs`)."""
    return pos.epoch < opts.epochs and exhausted(pos.epoch, pos.best_epoch, opts.patience)
