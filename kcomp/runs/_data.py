"""The data-centric options of `kcomp train`: `--drop`/`--relabel` (label issues from `kcomp clean`), `--extra`
(pseudo-labelled rows from `kcomp pseudo`) and `--teacher` (cls OOF probabilities to distil).

Their files are read once, before anything is created, and applied per fold by `kcomp.data.training_rows.fold_rows`
to the training rows only: a fold's validation rows are the folds file's, so CV stays comparable with runs trained
without them. A teacher's probabilities ride with the training rows as a `teacher` column, which the cls task packs
beside the label targets (`kcomp.models.losses.pack_teacher`). Pseudo rows have no OOF probabilities (no teacher
model held them out): the task fills their teacher half from their own targets, the soft probabilities of
`kcomp pseudo --soft` or the one-hot pseudo label, so those rows keep their pseudo label whatever `--distill-alpha`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kcomp import console
from kcomp.errors import BadInput
from kcomp.runtime import distributed

if TYPE_CHECKING:
    from kcomp.artifacts.index import IndexTable
    from kcomp.artifacts.label_issues import LabelIssues
    from kcomp.artifacts.predictions import Predictions
    from kcomp.data.training_rows import FoldRows
    from kcomp.tasks.options import TrainOptions


@dataclass(frozen=True)
class DataChanges:
    drop: LabelIssues | None = None
    relabel: LabelIssues | None = None
    extra: tuple[IndexTable, ...] = ()
    teacher: Predictions | None = None

    @classmethod
    def read(cls, opts: TrainOptions) -> DataChanges:
        """The files the options name, each checked by its reader (a bad one: one line naming it, exit 2)."""
        from kcomp.artifacts.label_issues import read_label_issues
        from kcomp.artifacts.predictions import read_predictions
        from kcomp.artifacts.pseudo import read_pseudo

        return cls(drop=read_label_issues(opts.drop) if opts.drop else None,
                   relabel=read_label_issues(opts.relabel) if opts.relabel else None,
                   extra=tuple(read_pseudo(p) for p in opts.extra),
                   teacher=read_predictions(opts.teacher, kind="oof") if opts.teacher else None)

    def fold_rows(self, table: IndexTable, fold: int, setup: dict[str, Any]) -> FoldRows:
        """The fold's training rows with the changes applied (and the teacher's probabilities of its labelled rows
        as a `teacher` column), its validation rows as the folds file has them."""
        from kcomp.data.training_rows import fold_rows

        rows = fold_rows(table, fold, drop=self.drop, relabel=self.relabel, extra=self.extra)
        if (self.drop or self.relabel) and "target" in setup:
            _check_classes_kept(table, rows, fold, setup, self.drop or self.relabel)
        if self.teacher is not None:
            rows.train = _with_teacher(rows.train, self.teacher, setup["classes"])
        if (self.drop or self.relabel or self.extra) and distributed.is_main():
            console.log(f"fold {fold}: {len(rows.train)} training rows ({len(rows.dropped)} dropped, "
                        f"{len(rows.relabelled)} relabelled, {rows.added} pseudo-labelled added); "
                        f"{len(rows.val)} validation rows as the folds file has them")
        return rows


def _check_classes_kept(table: IndexTable, rows: FoldRows, fold: int, setup: dict[str, Any],
                        issues: LabelIssues) -> None:
    """cls: --drop/--relabel must leave each class some training row of the fold (a model cannot learn a class it
    never sees). Said here, naming the issues file, rather than as a folds file that needs re-splitting."""
    target, classes = setup["target"], setup["classes"]
    labelled = table.df[(table.df["split"] == "train") & (table.df["fold"] >= 0) & (table.df["fold"] != fold)]
    lost = sorted(set(map(str, labelled[target])) - set(map(str, rows.train[target])))
    if lost:
        name = classes[int(lost[0])] if lost[0].isdigit() and labelled[target].dtype.kind in "iu" else lost[0]
        raise BadInput(f"leaves fold {fold}'s training rows no example of class {name!r} ({len(rows.dropped)} "
                       f"dropped, {len(rows.relabelled)} relabelled of {len(labelled)}): flag fewer rows (kcomp "
                       f"clean --filter-by)", path=issues.source)


def _with_teacher(train: Any, teacher: Predictions, classes: list[str]) -> Any:
    """`train` with a `teacher` column: the teacher's (C,) probabilities for the folds file's rows, None for pseudo
    rows (fold -1, which no OOF file covers)."""
    from kcomp.data.teacher import teacher_probs

    labelled = (train["fold"] >= 0).to_numpy()
    probs = iter(teacher_probs(teacher, train["id"][labelled].tolist(), classes))
    train = train.copy()
    train["teacher"] = [next(probs) if own else None for own in labelled]
    return train
