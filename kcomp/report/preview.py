"""Overlay previews of dense predictions, to look at before submitting: PNGs drawn with OpenCV (no matplotlib).

seg: the image at the map's size, each class's mask as a translucent fill with an outline, and a legend beside it
naming the classes with the share of the image each covers; for OOF predictions the true masks drawn the same way on
a copy to the right, with each class's Dice. ink: the probability map as a heat overlay on the papyrus mask, scaled
to at most 1024 px, the predicted ink outlined in red and (OOF) the true ink in green. Masks are binarised at the
settings of a thresholds file when one is given (what `submit` would draw), else at probability 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp.errors import BadInput, BadUsage
from kcomp.options import Checked, Int, Text, option

if TYPE_CHECKING:
    import numpy as np

    from kcomp.artifacts.predictions import Predictions

# RGB per class, in class order; more classes take evenly spaced hues
PALETTE = [(255, 99, 71), (50, 205, 50), (30, 144, 255), (255, 215, 0), (186, 85, 211), (0, 206, 209)]
ALPHA = 0.4
INK_MAX_SIDE = 1024
PRED_RGB, TRUTH_RGB = (255, 64, 64), (64, 220, 64)  # ink outlines, as the det previews draw boxes
PREVIEWS = 8  # ids drawn by default


@dataclass(frozen=True)
class PreviewOptions(Checked):
    """`kcomp tta --preview DIR --preview-count N`, checked on creation (each field with its Spec, as
    `TrainOptions`); `preview_count` is None when not given (it applies with --preview only) and `count` the ids
    drawn."""

    preview: str | None = option(Text())
    preview_count: int | None = option(Int(1, default=PREVIEWS, needs=("--preview DIR", lambda v: bool(v["preview"]))))

    @property
    def count(self) -> int:
        return PREVIEWS if self.preview_count is None else self.preview_count


def write_previews(preds: Predictions, out_dir: Path, n: int = 8, *, thresholds: dict[str, Any] | None = None,
                   ids: Sequence[Any] | None = None) -> list[str]:
    """PNG overlays of the first `n` ids (or of `ids`) of seg or ink predictions into `out_dir`, binarised at the
    settings of `thresholds` (a thresholds file's body; 0.5 without one), with the true masks beside the predicted
    ones for OOF predictions; returns the paths written."""
    if preds.task not in ("seg", "ink"):
        raise BadUsage(f"previews are for seg and ink predictions; {preds.source} holds {preds.task}")
    if n < 1:
        raise BadUsage(f"--preview-count {n}: must be at least 1")
    table = preds.index("needed to find the images")
    by_id = table.df.set_index("id")
    rows = preds.df.head(n) if ids is None else preds.df.set_index("id", drop=False).loc[list(ids)]
    names = _file_names([str(i) for i in rows["id"]])
    truth = _Truth(table, preds) if preds.kind == "oof" else None
    written = []
    with preds.maps() as maps:
        for i, key, name in zip(rows["id"], rows["map_key"].astype(str), names, strict=True):
            if i not in by_id.index:
                raise BadInput(f"id {i!r} is not in the index {table.source}", path=preds.source)
            row = by_id.loc[i]
            m = maps[key]
            if preds.task == "seg":
                img = _seg_overlay(table.file(row["path"]), m, preds.classes, thresholds,
                                   truth.seg(i, row, m.shape[1:]) if truth else None)
            else:
                img = _ink_overlay(table, row, m, thresholds, truth.ink(row) if truth else None)
            written.append(_write_png(out_dir / name, img))
    return written


class _Truth:
    """The true masks of OOF rows, from the index the predictions name."""

    def __init__(self, table: Any, preds: Predictions) -> None:
        self.table = table
        self.setup = None
        if preds.task == "seg":
            from kcomp.tasks import get_task

            self.setup = get_task("seg").setup(table)

    def seg(self, rid: Any, row: Any, size: Sequence[int]) -> np.ndarray:
        from kcomp.tasks.seg import truth_masks

        return truth_masks({**row.to_dict(), "id": rid}, self.setup, size).astype(bool)

    def ink(self, row: Any) -> np.ndarray | None:
        from kcomp.data.layers import read_png_mask

        if not row.get("inklabels"):
            return None
        h, w = int(row["height"]), int(row["width"])
        return read_png_mask(self.table.file(row["inklabels"]), (h, w))[int(row.get("y0", 0)):int(row.get("y1", h))]


def _file_names(ids: list[str]) -> list[str]:
    """`<stem>.png`, or the whole id when stems collide; never a path outside the directory."""
    stems = [Path(i).stem.replace("/", "_").lstrip(".") or "_" for i in ids]
    if len(set(stems)) < len(stems):
        stems = [i.replace("/", "_").lstrip(".") or "_" for i in ids]
    return [f"{s}.png" for s in stems]


def _colour(c: int) -> tuple[int, int, int]:
    if c < len(PALETTE):
        return PALETTE[c]
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((c * 0.618) % 1.0, 0.8, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _seg_overlay(path: Path, maps: np.ndarray, classes: list[str], thresholds: dict[str, Any] | None,
                 truth: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 image (map size) with every class's mask (after the thresholds' post-processing) filled and
    outlined; with `truth`, the true masks drawn the same way on a second copy to its right; plus a legend."""
    import cv2
    import numpy as np

    from kcomp.data.images import read_rgb
    from kcomp.post.seg_threshold import postprocess
    from kcomp.post.tuned import seg_settings

    if maps.ndim != 3:
        raise BadInput(f"seg map has shape {maps.shape}; expected (classes, height, width)", path=str(path))
    _, h, w = maps.shape
    names = list(classes or map(str, range(len(maps))))
    settings = seg_settings(thresholds, names, (h, w)) if thresholds else None
    masks = np.stack([postprocess(m, *settings[c]) if settings else m >= 128 for m, c in zip(maps, names,
                                                                                           strict=True)])
    img = read_rgb(path, min(h, w))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    out = draw_masks(img, masks)
    labels = [f"{name} {100 * float(m.mean()):.0f}%" for name, m in zip(names, masks, strict=False)]
    if truth is not None:
        from kcomp.metrics._segmentation import dice_empty_one

        gap = np.full((h, max(4, w // 60), 3), 24, np.uint8)
        out = np.concatenate([out, gap, draw_masks(img, truth)], axis=1)
        labels = [f"{name} {100 * float(p.mean()):.0f}% / true {100 * float(t.mean()):.0f}%, dice "
                  f"{dice_empty_one(p, t):.2f}" for name, p, t in zip(names, masks, truth, strict=False)]
    header = "predicted at " + ("probability 0.5" if settings is None else "the tuned thresholds")
    header = f"left: {header}, right: true" if truth is not None else header
    return _legend(out, labels, [_colour(c) for c in range(len(labels))], header=header)


def draw_masks(img: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A copy of RGB `img` with each boolean mask filled translucently and outlined in its class colour."""
    import cv2
    import numpy as np

    h, w = img.shape[:2]
    out = img.astype(np.float32)
    for c, m in enumerate(masks):
        if m.any():
            out[m] = out[m] * (1 - ALPHA) + np.asarray(_colour(c), np.float32) * ALPHA
    out = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    for c, m in enumerate(masks):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, _colour(c), max(1, min(h, w) // 200))
    return out


def _legend(img: np.ndarray, labels: list[str], colours: list[tuple[int, int, int]], header: str = "") -> np.ndarray:
    """The image with a dark panel on its right listing the labels, each after a swatch of its colour, under an
    optional header line (a panel beside the image, not over it, so no prediction is hidden)."""
    import cv2
    import numpy as np

    h = img.shape[0]
    scale = max(0.3, min(0.8, h / 700))
    thick = max(1, round(scale * 1.5))
    texts = labels + ([header] if header else [])
    line = max(10, min(max(14, int(40 * scale)), (h - 12) // len(texts)))  # the image's height when it fits
    text_w = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in texts)
    first = 1 if header else 0
    panel = np.full((max(h, line * (len(labels) + first) + 12), line + text_w + 16, 3), 24, np.uint8)
    if header:
        cv2.putText(panel, header, (6, 6 + 3 * line // 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (200, 200, 200), thick,
                    cv2.LINE_AA)
    for k, (text, colour) in enumerate(zip(labels, colours, strict=True), start=first):
        y = 6 + k * line
        cv2.rectangle(panel, (6, y + line // 4), (6 + line // 2, y + 3 * line // 4), colour, -1)
        cv2.putText(panel, text, (line, y + 3 * line // 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
    canvas = np.zeros((panel.shape[0], img.shape[1] + panel.shape[1], 3), np.uint8)
    canvas[:h, : img.shape[1]] = img
    canvas[:, img.shape[1]:] = panel
    return canvas


def _ink_overlay(table: Any, row: Any, prob: np.ndarray, thresholds: dict[str, Any] | None = None,
                 truth: np.ndarray | None = None) -> np.ndarray:
    """The ink probability as a heat map (inferno, opacity growing with probability) over the papyrus mask, with the
    predicted ink at the thresholds' settings outlined in red and, for OOF, the true ink in green."""
    import cv2
    import numpy as np

    from kcomp.data.layers import read_png_mask
    from kcomp.post.ink_threshold import postprocess
    from kcomp.post.tuned import ink_settings

    if prob.ndim != 2:
        raise BadInput(f"ink map has shape {prob.shape}; expected (height, width)")
    h, w = int(row["height"]), int(row["width"])
    y0, y1 = int(row.get("y0", 0)), int(row.get("y1", h))
    mask = read_png_mask(table.file(row["mask"]), (h, w))[y0:y1]
    if mask.shape != prob.shape:
        raise BadInput(f"ink map is {prob.shape[0]}x{prob.shape[1]}, its fragment rows {y0}..{y1} are "
                       f"{mask.shape[0]}x{mask.shape[1]}")
    thr, min_size = ink_settings(thresholds)
    f = min(1.0, INK_MAX_SIDE / max(prob.shape))
    size = (max(1, round(prob.shape[1] * f)), max(1, round(prob.shape[0] * f)))
    p = cv2.resize(prob, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    base = np.where(m[..., None] > 0, 150, 40).astype(np.float32).repeat(3, axis=2)
    heat = cv2.cvtColor(cv2.applyColorMap(p, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB).astype(np.float32)
    a = (0.15 + 0.75 * p.astype(np.float32) / 255.0)[..., None]
    out = np.ascontiguousarray((base * (1 - a) + heat * a).clip(0, 255).astype(np.uint8))
    outlines = [(postprocess(prob, mask, thr, min_size), PRED_RGB)]
    labels = [f"ink (max {p.max() / 255:.2f})", f"predicted at {thr:.2f}" + (f", min size {min_size}" if min_size
                                                                          else "")]
    if truth is not None:
        from kcomp.metrics._segmentation import fbeta_pixels

        outlines.append((truth, TRUTH_RGB))
        labels.append(f"true ink (F0.5 {fbeta_pixels(outlines[0][0], truth, mask):.2f})")
    for binary, colour in outlines:
        small = cv2.resize(binary.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, max(1, min(size) // 300))
    return _legend(out, labels, [(252, 255, 164), PRED_RGB, TRUTH_RGB][:len(labels)])


def _write_png(path: Path, rgb: np.ndarray) -> str:
    import cv2

    from kcomp.artifacts._atomic import atomic_write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BadInput("could not encode the preview PNG", path=path)
    atomic_write_bytes(path, buf.tobytes())
    return str(path)
