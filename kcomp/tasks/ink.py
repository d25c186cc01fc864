"""Task `ink`: 2.5D ink detection over TIFF layer stacks (Vesuvius Challenge).

Index rows are fragments (or row ranges of one: `y0`, `y1`) with `path` = layer dir, `mask`, `labels`.
`--layers GxL` picks G groups of L consecutive layers centred on the stack's middle (`--layer-start` overrides);
patches of `--patch` px are sampled inside the papyrus mask; validation scores F0.5 on a patch grid, while
oof/tta predict whole fragments with blended sliding windows and write uint8 maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kcomp.errors import BadInput
from kcomp.tasks import TASKS
from kcomp.tasks.base import Task

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.index import IndexTable
    from kcomp.data.ink_patches import Fragment
    from kcomp.models.pretrained import Init
    from kcomp.tasks.options import TrainOptions

IGNORE = 2


@TASKS.register("ink")
class InkTask(Task[list[np.ndarray]]):
    """2.5D/3D ink detection on layer-stack patches; F0.5 inside the papyrus mask"""

    name = "ink"
    default_metric = "f05"
    metrics = ("f05",)  # those --metric may name
    supports_mix = False
    one_model_at_a_time = True

    def setup(self, table: IndexTable, opts: TrainOptions) -> dict[str, Any]:
        from kcomp.errors import BadUsage
        from kcomp.models.ink import select_layers

        for col in ("mask", "y0", "y1", "n_layers"):
            if col not in table.df.columns:
                raise BadInput(f"missing column {col}: not an ink index (made by `kcomp prep vesuvius`?)",
                               path=table.source)
        groups, per_group = opts.layers
        layers = select_layers(int(table.df["n_layers"].min()), groups, per_group, opts.layer_start)
        largest = int(np.maximum(table.df["y1"] - table.df["y0"], table.df["width"]).max())
        if opts.patch > largest:  # every window would be mostly padding, at patch**2 x layers floats each
            raise BadUsage(f"--patch {opts.patch}: larger than every fragment (the longest side is {largest} px)")
        return {"classes": ["ink"], "groups": groups, "per_group": per_group, "layers": layers,
                "patch": opts.patch}

    def fragments(self, table: IndexTable, rows: pd.DataFrame, *, with_targets: bool) -> list[Fragment]:
        from kcomp.data.ink_patches import Fragment
        from kcomp.data.layers import LayerStack, read_png_mask

        out = []
        for r in rows.itertuples(index=False):
            shape = (int(r.height), int(r.width))
            y0, y1 = int(r.y0), int(r.y1)
            mask = read_png_mask(table.file(r.mask), shape)[y0:y1]
            labels = None
            if with_targets and getattr(r, "inklabels", ""):
                labels = read_png_mask(table.file(r.inklabels), shape)[y0:y1]
            out.append(Fragment(str(r.id), LayerStack(table.file(r.path), expected=shape), mask, labels, y0))
        return out

    def dataset(self, table: IndexTable, rows: pd.DataFrame, opts: TrainOptions, setup: dict[str, Any], *,
                train: bool, with_targets: bool = True) -> Any:
        from kcomp.data.ink_patches import InkPatches

        patch = setup["patch"]
        stride = (opts.stride or patch // 2) if train else patch
        return InkPatches(self.fragments(table, rows, with_targets=with_targets), layers=setup["layers"],
                          patch=patch, stride=stride, train=train, layer_shift=opts.layer_shift if train else 0,
                          with_targets=with_targets, neg_fraction=opts.neg_fraction if train else 1.0,
                          seed=opts.seed)

    def build_model(self, opts: TrainOptions, setup: dict[str, Any], *, init: Init | None = None
                    ) -> torch.nn.Module:
        from kcomp.models.ink import create_ink_model
        from kcomp.models.pretrained import with_tag

        return create_ink_model(with_tag(opts.model, opts.pretrained_tag), setup["groups"], setup["per_group"],
                                init=init, drop_path_rate=opts.drop_path, drop_rate=opts.drop_rate)

    def loss(self, opts: TrainOptions, setup: dict[str, Any]) -> Any:
        from kcomp.models.losses import masked_bce

        return masked_bce(smoothing=opts.smoothing, ignore=IGNORE)

    def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int, scales: Sequence[float] = (1.0,)
                ) -> torch.Tensor:
        """8x TTA = {identity, flip W, flip H, flip HW} x {depth flip}; spatial flips are inverted exactly. The views
        go through the model one batch at a time (`per_view`). `scales` must stay (1.0,): tiles are predicted at the
        patch size trained on (`--tta-scales` does not apply to ink)."""
        from kcomp.infer.tta import flips, per_view, unflip

        views = flips(x, min(tta, 4))
        if tta == 8:
            views += [v.flip(1) for v in views]
        if len(views) == 1:
            return model(x).float().sigmoid()
        probs = per_view(lambda v: model(v).float(), views).sigmoid().view(len(views), x.shape[0], *x.shape[-2:])
        spatial = min(tta, 4)
        back = unflip(list(probs[:spatial])) + (unflip(list(probs[spatial:])) if tta == 8 else [])
        return torch.stack(back).mean(0)

    def predict_rows(self, models: Iterable[torch.nn.Module], table: IndexTable, rows: pd.DataFrame,
                     opts: TrainOptions, setup: dict[str, Any], *, tta: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, workers: int, with_targets: bool,
                     labels: Sequence[str], out_size: tuple[int, int] | None = None,
                     scales: Sequence[float] = (1.0,)) -> Iterator[list[np.ndarray]]:
        """Per model, each fragment's uint8 map; one model at a time (a fragment's map is ~100 Mpx)."""
        from kcomp.infer.sliding import predict_region

        patch = setup["patch"]
        stride = opts.infer_stride or patch // 2
        fragments = self.fragments(table, rows, with_targets=False)
        for model, label in zip(models, labels, strict=True):
            maps = [predict_region(model, self, f.stack, setup["layers"], f.mask, f.y0, patch=patch, stride=stride,
                                   tta=tta, batch_size=batch_size, device=device, dtype=dtype, workers=workers,
                                   label=f"{label} {f.id}") for f in fragments]
            del model  # before the next one is built
            yield maps

    def average(self, preds: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        """Per row, the mean of the models' uint8 maps, one model in memory at a time."""
        from kcomp.post.ensemble import mean_maps

        return mean_maps(preds)

    def frame(self, rows: pd.DataFrame, preds: list[np.ndarray], setup: dict[str, Any], *, with_targets: bool
              ) -> pd.DataFrame:
        import pandas as pd

        keys = [str(i) for i in rows["id"]]
        return pd.DataFrame({"id": rows["id"].to_numpy(), "map_key": keys, "y0": rows["y0"].to_numpy(),
                             "y1": rows["y1"].to_numpy(), "height": rows["height"].to_numpy(),
                             "width": rows["width"].to_numpy(), "map": preds})

    def oof_score(self, metric: str, frame: pd.DataFrame, table: IndexTable) -> float:
        """F0.5 at threshold 0.5 over all held-out fragments' pixels inside their masks."""
        from kcomp.metrics import get_metric

        truth, score = [], []
        rows = table.rows_for(frame["id"])
        for f, m in zip(self.fragments(table, rows, with_targets=True), frame["map"], strict=True):
            t = np.where(f.mask, f.labels.astype(np.uint8) if f.labels is not None else 0, IGNORE)
            truth.append(t.ravel())
            score.append(m.ravel())
        return float(get_metric(metric).fn(np.concatenate(truth), np.concatenate(score)))

    def tune_thresholds(self, preds: Any, *, downscale: int = 32) -> dict[str, Any]:
        """Threshold searched on a downscaled map, then the min component size (a fraction of the mask area) by
        its held-out F0.5 at full resolution over the OOF folds (`kcomp.post.heldout`)."""
        from kcomp.post.heldout import oof_folds
        from kcomp.post.nested_threshold import tune_ink_nested

        table = preds.index("needed for the true ink labels")
        maps = preds.maps()
        rows = table.rows_for(preds.df["id"], where=preds.source)
        fragments = [(maps[k], f.labels if f.labels is not None else np.zeros_like(f.mask), f.mask)
                     for k, f in zip(preds.df["map_key"], self.fragments(table, rows, with_targets=True), strict=True)]
        folds, note = oof_folds(preds)
        best = tune_ink_nested(fragments, folds, downscale=downscale).fields(note)
        return {"task": self.name, "method": "threshold+min_size", **best, "metric": "f05", "oof": preds.source,
                "classes": {"ink": {"threshold": best["threshold"], "min_size": best["min_size"]}}}
