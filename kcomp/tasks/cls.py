"""Task `cls`: single-label image classification with timm models (Cassava; SIIM study / has_opacity)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kcomp.errors import BadInput, BadUsage
from kcomp.tasks import TASKS
from kcomp.tasks.base import Task

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.index import IndexTable
    from kcomp.models.pretrained import Init
    from kcomp.tasks.options import TrainOptions


@TASKS.register("cls")
class ClsTask(Task[np.ndarray]):
    """Single-label classification (timm); softmax probabilities, accuracy by default."""

    name = "cls"
    default_metric = "accuracy"
    metrics = ("accuracy", "log_loss", "macro_f1", "roc_auc")  # those --metric may name
    supports_mix = True
    one_model_at_a_time = False

    def setup(self, table: IndexTable, opts: TrainOptions) -> dict[str, Any]:
        target = opts.target or "label"
        if target not in table.df.columns:
            raise BadUsage(f"--target {target}: no such column in {table.source} "
                           f"(columns: {', '.join(map(str, table.df.columns))})")
        train = table.df[table.df["split"] == "train"][target]
        if target == "label" and table.classes:
            classes = table.classes
        elif train.dtype.kind in "iub":
            classes = [str(c) for c in range(int(train.max()) + 1)]
        else:
            classes = sorted(map(str, train.dropna().unique()))
        if len(classes) < 2:
            raise BadInput(f"column {target} has fewer than 2 classes among train rows", path=table.source)
        return {"target": target, "classes": classes}

    def targets(self, rows: pd.DataFrame, setup: dict[str, Any]) -> np.ndarray:
        col = rows[setup["target"]]
        if col.isna().any():
            raise BadInput(f"column {setup['target']} is empty for {int(col.isna().sum())} row(s)")
        if col.dtype.kind in "iub":
            return col.to_numpy(np.int64)
        lookup = {c: i for i, c in enumerate(setup["classes"])}
        unknown = sorted(set(map(str, col)) - set(lookup))
        if unknown:
            raise BadInput(f"column {setup['target']} has value {unknown[0]!r} not among the trained classes")
        return np.array([lookup[str(v)] for v in col], dtype=np.int64)

    def dataset(self, table: IndexTable, rows: pd.DataFrame, opts: TrainOptions, setup: dict[str, Any], *,
                train: bool, with_targets: bool = True) -> Any:
        """Training rows may carry `soft` (pseudo rows of `kcomp pseudo --soft`) and `teacher` (`train --teacher`,
        kcomp.runs._data) probabilities: then targets are float rows (`training_targets`), else class indices."""
        from kcomp.data import transforms
        from kcomp.data.datasets import ImageDataset
        from kcomp.data.image_cache import cached_images

        files = [table.file(p) for p in rows["path"]]
        tf = transforms.cls_train(opts.img_size, opts.aug) if train else transforms.cls_eval(opts.img_size)
        targets = self.targets(rows, setup) if with_targets else None
        if train and targets is not None:
            counts = np.bincount(targets, minlength=len(setup["classes"]))
            if (counts == 0).any():
                missing = setup["classes"][int(np.argmin(counts))]
                raise BadInput(f"this fold's training rows have no example of class {missing!r}; re-split with "
                               f"fewer folds or --strategy stratified", path=table.source)
            targets = training_targets(rows, targets, len(setup["classes"]), where=table.source)
        return ImageDataset(files, targets, tf, reduce_to=opts.img_size,
                            cache=cached_images(table, rows, opts.img_size))

    def build_model(self, opts: TrainOptions, setup: dict[str, Any], *, init: Init | None = None
                    ) -> torch.nn.Module:
        from kcomp.models import create_cls_model
        from kcomp.models.pretrained import with_tag

        return create_cls_model(with_tag(opts.model, opts.pretrained_tag), len(setup["classes"]), init=init,
                                drop_rate=opts.drop_rate, drop_path_rate=opts.drop_path)

    def loss(self, opts: TrainOptions, setup: dict[str, Any], *, class_weights: torch.Tensor | None = None) -> Any:
        """The label loss (weighted per class by `class_weights`, `--class-weights`, on the training device); with
        `--teacher`, mixed with the cross-entropy to the teacher's probabilities, on the packed targets
        `training_targets` builds."""
        from kcomp.models.losses import build_distillation, build_loss

        label_loss = build_loss(opts.loss, smoothing=opts.smoothing, t1=opts.t1, t2=opts.t2, taylor_n=opts.taylor_n,
                                class_weights=class_weights)
        if not opts.distilled:
            return label_loss
        return build_distillation(label_loss, alpha=opts.distill_alpha, temperature=opts.distill_temperature)

    def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int, scales: Sequence[float] = (1.0,)
                ) -> torch.Tensor:
        """Per scale, the flip views through the model one batch at a time (`per_view`); class labels are flip- and
        scale-invariant, so no inverse: the views' probabilities are averaged."""
        from kcomp.infer.tta import at_scales, flips, per_view

        total = None
        for xs in at_scales(x, scales):
            views = flips(xs, tta)
            if len(views) == 1:
                probs = model(xs).float().softmax(1)
            else:
                logits = per_view(lambda v: model(v).float(), views)
                probs = logits.softmax(1).view(len(views), x.shape[0], -1).mean(0)
            total = probs if total is None else total + probs
        return total if len(scales) == 1 else total / len(scales)

    def predict_rows(self, models: Iterable[torch.nn.Module], table: IndexTable, rows: pd.DataFrame,
                     opts: TrainOptions, setup: dict[str, Any], *, tta: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, workers: int, with_targets: bool,
                     labels: Sequence[str], out_size: tuple[int, int] | None = None,
                     scales: Sequence[float] = (1.0,)) -> Iterator[np.ndarray]:
        """The models predict each batch together as it is read (up to `MODELS_TOGETHER`, or what fits a quarter
        of the GPU): (N, C) probabilities are small, and decoding the images once instead of once a fold is what a
        test set of JPEGs costs on few CPU cores."""
        from kcomp.infer.predict import inference_loader, predict_in_groups

        ds = self.dataset(table, rows, opts, setup, train=False, with_targets=with_targets)
        dl = inference_loader(ds, batch_size=batch_size, workers=workers, device=device)
        yield from predict_in_groups(models, dl, self, tta=tta, device=device, dtype=dtype, labels=labels,
                                     scales=scales)

    def average(self, preds: Iterable[np.ndarray]) -> np.ndarray:
        from kcomp.post.ensemble import mean_probs

        return mean_probs(preds)

    def oof_score(self, metric: str, frame: pd.DataFrame, table: IndexTable) -> float:
        return self.score(metric, np.stack(frame["probs"].to_numpy()), frame["target"].to_numpy())

    def frame(self, rows: pd.DataFrame, preds: np.ndarray, setup: dict[str, Any], *, with_targets: bool
              ) -> pd.DataFrame:
        import pandas as pd

        out = pd.DataFrame({"id": rows["id"].to_numpy(), "probs": list(preds.astype(np.float32))})
        if with_targets:
            out["target"] = self.targets(rows, setup)
        return out

    def tune_thresholds(self, preds: Any, **options: Any) -> dict[str, Any]:
        """Single-label classification predicts the argmax; there is no threshold to tune, so say so."""
        if "target" not in preds.df.columns:
            raise BadInput("OOF predictions have no target column", path=preds.source)
        probs, targets = preds.probs(), preds.df["target"].to_numpy()
        metric = preds.meta.get("metric") or self.default_metric
        return {"task": self.name, "method": "argmax", "classes": {c: None for c in preds.classes},
                "metric": metric, "score": self.score(metric, probs, targets), "oof": preds.source,
                "note": "single-label classification submits the argmax class; no threshold applies"}


def training_targets(rows: pd.DataFrame, labels: np.ndarray, n_classes: int, *, where: str) -> np.ndarray:
    """The class indices `labels`, unless some row trains on more than its class: a `soft` column (pseudo rows'
    probabilities) gives float32 (N, C) rows, one-hot where a row has none; a `teacher` column appends the teacher's
    probabilities, (N, 2C) as `kcomp.models.losses.pack_teacher` lays them out, a row without any (a pseudo row)
    taking its own label targets there."""
    soft = "soft" in rows.columns and bool(rows["soft"].notna().any())
    if not soft and "teacher" not in rows.columns:
        return labels
    out = np.eye(n_classes, dtype=np.float32)[labels]
    if soft:
        for i, p in enumerate(rows["soft"]):
            if p is not None and not (np.isscalar(p) and np.isnan(p)):
                out[i] = _probabilities(p, n_classes, f"id {rows['id'].iloc[i]!r} soft", where)
    if "teacher" not in rows.columns:
        return out
    from kcomp.models.losses import pack_teacher

    teacher = np.stack([out[i] if t is None else np.asarray(t, np.float32) for i, t in enumerate(rows["teacher"])])
    return pack_teacher(torch.from_numpy(out), torch.from_numpy(teacher)).numpy()


def _probabilities(p: Any, n_classes: int, what: str, where: str) -> np.ndarray:
    q = np.asarray(p, np.float32)
    if q.shape != (n_classes,) or not np.isfinite(q).all() or (q < 0).any() or abs(float(q.sum()) - 1) > 1e-3:
        raise BadInput(f"{what}: expected {n_classes} probabilities summing to 1, got {np.asarray(p).tolist()}",
                       path=where)
    return q
