"""Task `seg`: multi-label semantic segmentation with smp (Understanding Clouds: Fish, Flower, Gravel, Sugar).

Index rows are images with one RLE column per class, `mask_<class>` ("" = empty), pixels numbered as the index
metadata's `rle_order` says (default column-major). `--img-size N` trains and predicts on N x N inputs (images are
resized, not cropped; any N works, the model pads to its stride). One sigmoid per class; BCE + Dice by default.

Predictions (`oof`/`tta`) are per-class probability maps stored as uint8 (probability x 255) in the .npz beside the
table, resized to the output size: `out_size` (`--out-size HxW`), else the index's `submit_size` (Clouds: 350x525),
else a quarter of each image's own height and width. Thresholds, minimum sizes (in pixels of the map) and
`top` (keep a mask only if its highest probability reaches it) are tuned per class on OOF maps.
"""

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

MASK_PREFIX = "mask_"
# images per block when scoring/tuning OOF maps, so truths are never held for every row at once
_CHUNK = 64


def mask_column(name: str) -> str:
    return f"{MASK_PREFIX}{name}"


@TASKS.register("seg")
class SegTask(Task[list[np.ndarray]]):
    """Multi-label segmentation (smp); sigmoid per class, mean Dice (empty/empty = 1) by default"""

    name = "seg"
    default_metric = "dice"
    metrics = ("dice",)  # those --metric may name
    supports_mix = False
    one_model_at_a_time = True

    def setup(self, table: IndexTable, opts: TrainOptions | None = None) -> dict[str, Any]:
        """Classes, mask columns and RLE order, all from the index (no option changes them)."""
        classes = table.classes
        if not classes:
            raise BadInput("index has no classes in its metadata (made by `kcomp prep clouds`?)", path=table.source)
        missing = [mask_column(c) for c in classes if mask_column(c) not in table.df.columns]
        if missing:
            raise BadInput(f"missing mask column(s) {', '.join(missing)}: not a seg index (made by `kcomp prep "
                           f"clouds`?)", path=table.source)
        order = table.meta.get("rle_order", "column")
        return {"classes": classes, "mask_columns": [mask_column(c) for c in classes], "rle_order": order}

    # ------------------------------------------------------------------------------------------------ data

    def dataset(self, table: IndexTable, rows: pd.DataFrame, opts: TrainOptions, setup: dict[str, Any], *,
                train: bool, with_targets: bool = True) -> Any:
        from kcomp.data.image_cache import cached_images
        from kcomp.data.seg_dataset import SegDataset, seg_train_transform

        masks = rows[setup["mask_columns"]].astype(str).to_numpy().tolist() if with_targets else None
        return SegDataset([table.file(p) for p in rows["path"]], _shapes(rows), masks, opts.img_size,
                          order=setup["rle_order"], transform=seg_train_transform(opts.aug) if train else None,
                          ids=rows["id"].astype(str).tolist(), cache=cached_images(table, rows, opts.img_size))

    # ------------------------------------------------------------------------------------------------ model

    def build_model(self, opts: TrainOptions, setup: dict[str, Any], *, init: Init | None = None
                    ) -> torch.nn.Module:
        from kcomp.models.seg import create_seg_model

        return create_seg_model(opts.arch, opts.model, len(setup["classes"]), init=init, tag=opts.pretrained_tag)

    def loss(self, opts: TrainOptions, setup: dict[str, Any]) -> Any:
        from kcomp.models.losses import build_seg_loss

        return build_seg_loss(opts.seg_loss, smoothing=opts.smoothing)

    def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int, scales: Sequence[float] = (1.0,)
                ) -> torch.Tensor:
        """(B, C, H, W) probabilities: per scale, the flip views through the model one batch at a time
        (`per_view`), sigmoid, each inverted exactly, averaged, then resized back to the input's size; the scales
        averaged."""
        from kcomp.infer.tta import at_scales, resize

        if tta == 8 and x.shape[-1] != x.shape[-2]:
            raise BadUsage(f"--tta 8 needs square inputs, got {x.shape[-2]}x{x.shape[-1]}")
        total = None
        for xs in at_scales(x, scales):
            probs = resize(self._flip_probs(model, xs, tta), (int(x.shape[-2]), int(x.shape[-1])))
            total = probs if total is None else total + probs
        return total if len(scales) == 1 else total / len(scales)

    @staticmethod
    def _flip_probs(model: torch.nn.Module, x: torch.Tensor, tta: int) -> torch.Tensor:
        from kcomp.infer.tta import flips, per_view, unflip

        views = flips(x, tta)
        if len(views) == 1:  # no copies of the batch to concatenate, stack and average
            return model(x).float().sigmoid()
        probs = per_view(lambda v: model(v).float(), views).sigmoid()
        probs = probs.view(len(views), x.shape[0], *probs.shape[1:])
        return torch.stack(unflip(list(probs))).mean(0)

    # ------------------------------------------------------------------------------------------------ oof/tta

    def predict_rows(self, models: Iterable[torch.nn.Module], table: IndexTable, rows: pd.DataFrame,
                     opts: TrainOptions, setup: dict[str, Any], *, tta: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, workers: int, with_targets: bool,
                     labels: Sequence[str], out_size: tuple[int, int] | None = None,
                     scales: Sequence[float] = (1.0,)) -> Iterator[list[np.ndarray]]:
        """Per model, (C, h, w) uint8 maps at the output size, converted batch by batch (no float map of every row)
        on a host thread while the model runs the next batch. One model at a time: 5 folds of 3,700 Clouds test
        maps would not fit in memory together."""
        from kcomp import console
        from kcomp.infer.predict import inference_loader
        from kcomp.runtime.host_stage import HostStage

        ds = self.dataset(table, rows, opts, setup, train=False, with_targets=False)
        dl = inference_loader(ds, batch_size=batch_size, workers=workers, device=device)
        for model, label in zip(models, labels, strict=True):
            sizes = iter(output_sizes(rows, out_size, table.meta.get("submit_size")))
            stage = HostStage(lambda batch, sizes=sizes: [to_uint8_map(p, next(sizes)) for p in batch])
            model.eval()
            with torch.inference_mode(), console.progress(len(ds), label, unit="img") as bar:
                for x, _ in dl:
                    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        stage.submit(self.predict(model, x, tta, scales).float())
                    bar.advance(x.shape[0])
            del model  # before the next one is built
            yield stage.results()

    def average(self, preds: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        """Per row, the mean of the models' uint8 maps, one model in memory at a time."""
        from kcomp.post.ensemble import mean_maps

        return mean_maps(preds)

    def frame(self, rows: pd.DataFrame, preds: list[np.ndarray], setup: dict[str, Any], *, with_targets: bool
              ) -> pd.DataFrame:
        """`height`, `width` are the original image's; the map's own shape is (classes, out_h, out_w)."""
        import pandas as pd

        return pd.DataFrame({"id": rows["id"].to_numpy(), "map_key": [str(i) for i in rows["id"]],
                             "height": rows["height"].to_numpy(), "width": rows["width"].to_numpy(), "map": preds})

    def oof_score(self, metric: str, frame: pd.DataFrame, table: IndexTable) -> float:
        """Mean over (image, class) pairs at probability 0.5, truths sampled from the index at each map's size;
        computed in blocks of rows (the metric is a mean over pairs, so blocks combine exactly)."""
        from kcomp.metrics import get_metric

        fn = get_metric(metric).fn
        setup = self.setup(table)
        rows = table.rows_for(frame["id"])
        total, pairs = 0.0, 0
        for block in _blocks(len(frame)):
            maps = [frame["map"].iloc[i] for i in block]
            if len({m.shape for m in maps}) == 1:
                groups = [(np.stack(maps), block)]
            else:
                groups = [(m[None], [i]) for m, i in zip(maps, block, strict=True)]
            for pred, idx in groups:
                truth = np.stack([truth_masks(rows.iloc[i], setup, pred.shape[-2:]) for i in idx])
                total += float(fn(truth, pred)) * pred.shape[0] * pred.shape[1]
                pairs += pred.shape[0] * pred.shape[1]
        return total / max(pairs, 1)

    def tune_thresholds(self, preds: Any, *, thresholds: Sequence[float] | None = None,
                        min_sizes: Sequence[int] | None = None, tops: Sequence[float] | None = None,
                        **other: Any) -> dict[str, Any]:
        """Per class: the threshold, minimum mask size (pixels at the map size) and top threshold, chosen by their
        held-out mean Dice over the OOF folds (`kcomp.post.heldout`); `score` is the in-sample mean over classes."""
        from kcomp.post import nested_threshold
        from kcomp.post.heldout import oof_folds

        unused = sorted(k for k, v in other.items() if v is not None)
        if unused:
            raise BadUsage(f"--{unused[0].replace('_', '-')} does not apply to seg predictions")
        table = preds.index("needed for the true masks")
        setup = self.setup(table)
        if preds.classes and preds.classes != setup["classes"]:
            raise BadInput(f"classes {preds.classes} differ from the index's {setup['classes']}", path=preds.source)
        rows = table.rows_for(preds.df["id"], where=preds.source)
        keys = preds.df["map_key"].astype(str).tolist()
        folds, note = oof_folds(preds)
        opts: dict[str, Any] = {}
        if thresholds is not None:
            opts["thresholds"] = tuple(float(t) for t in thresholds)
        if min_sizes is not None:
            opts["min_sizes"] = tuple(int(m) for m in min_sizes)
        if tops is not None:
            opts["tops"] = tuple(float(t) for t in tops)
        with preds.maps() as maps:
            size = _common_size(maps, keys, len(setup["classes"]), preds.source)
            out: dict[str, Any] = {}
            for c, name in enumerate(setup["classes"]):
                probs = np.stack([maps[k][c] for k in keys])
                truths = np.stack([truth_mask(rows.iloc[i], setup, c, size) for i in range(len(rows))]).astype(bool)
                out[name] = nested_threshold.tune_class_nested(probs, truths, folds, **opts)
                del probs, truths
        return {"task": self.name, "method": "threshold+min_size+top", "metric": "dice",
                **nested_threshold.seg_summary(out, folds, note),
                "size": [int(size[0]), int(size[1])], "oof": preds.source}


# ---------------------------------------------------------------------------------------------------- helpers


def output_sizes(rows: pd.DataFrame, out_size: Any, submit_size: Any) -> list[tuple[int, int]]:
    """Per row (height, width) of the stored maps: --out-size, else the index's submit_size, else a quarter of
    the image (at least 1 px)."""
    size = out_size if out_size is not None else submit_size
    if size is not None:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise BadUsage(f"output size {size!r}: expected (height, width)") from None
        if h < 1 or w < 1:
            raise BadUsage(f"output size {h}x{w}: both sides must be at least 1")
        return [(h, w)] * len(rows)
    return [(max(1, round(int(h) / 4)), max(1, round(int(w) / 4)))
            for h, w in zip(rows["height"], rows["width"], strict=True)]


def to_uint8_map(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float probabilities -> (C, h, w) uint8 (rint(p * 255)), each class resized bilinearly."""
    import cv2

    h, w = size
    out = np.empty((probs.shape[0], h, w), np.uint8)
    for c, p in enumerate(probs):
        if p.shape != (h, w):
            p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        out[c] = np.rint(np.clip(p, 0.0, 1.0) * 255.0)
    return out


def truth_mask(row: Any, setup: dict[str, Any], c: int, size: Sequence[int]) -> np.ndarray:
    from kcomp.data.seg_dataset import sample_mask

    col = setup["mask_columns"][c]
    return sample_mask(str(row[col]), (int(row["height"]), int(row["width"])), (int(size[0]), int(size[1])),
                       setup["rle_order"], where=f"id {row['id']} {col}")


def truth_masks(row: Any, setup: dict[str, Any], size: Sequence[int]) -> np.ndarray:
    """(C, h, w) uint8 masks of one index row sampled at `size`."""
    return np.stack([truth_mask(row, setup, c, size) for c in range(len(setup["mask_columns"]))])


def _shapes(rows: pd.DataFrame) -> list[tuple[int, int]]:
    return [(int(h), int(w)) for h, w in zip(rows["height"], rows["width"], strict=True)]


def _blocks(n: int) -> Iterator[list[int]]:
    for i in range(0, n, _CHUNK):
        yield list(range(i, min(n, i + _CHUNK)))


def _common_size(maps: Any, keys: list[str], n_classes: int, where: str) -> tuple[int, int]:
    """Every map is (C, h, w) with one (h, w): thresholds and sizes are tuned for one map size."""
    shapes: dict[tuple[int, ...], str] = {}
    for k in keys:
        if k not in maps.files:
            raise BadInput(f"its maps file has no map {k!r}", path=where)
        shapes.setdefault(_npz_shape(maps, k), k)
    bad = [s for s in shapes if len(s) != 3 or s[0] != n_classes]
    if bad:
        raise BadInput(f"map {shapes[bad[0]]!r} has shape {bad[0]}; expected ({n_classes}, height, width)",
                       path=where)
    if len(shapes) > 1:
        raise BadInput(f"maps have different sizes {sorted(s[1:] for s in shapes)}; predict with one --out-size",
                       path=where)
    _, h, w = next(iter(shapes))
    return h, w


def _npz_shape(maps: Any, key: str) -> tuple[int, ...]:
    """A map's shape from its .npy header alone (reading every map just for its shape would read the whole file)."""
    fmt = np.lib.format
    try:
        with maps.zip.open(f"{key}.npy") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            return tuple(read(f)[0])
    except (AttributeError, KeyError, ValueError, OSError):
        return tuple(maps[key].shape)
