"""Overlay previews of dense predictions, to look at before submitting: PNGs drawn with OpenCV (no matplotlib).

seg: the image at the map's size, each class's mask at probability 0.5 as a translucent fill with an outline, and a
legend beside it naming the classes with the share of the image each covers. ink: the probability map as a heat
overlay on the papyrus mask, scaled to at most 1024 px.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp.errors import BadInput, BadUsage

if TYPE_CHECKING:
    import numpy as np

    from kcomp.artifacts.predictions import Predictions

# RGB per class, in class order; more classes take evenly spaced hues
PALETTE = [(255, 99, 71), (50, 205, 50), (30, 144, 255), (255, 215, 0), (186, 85, 211), (0, 206, 209)]
ALPHA = 0.4
INK_MAX_SIDE = 1024


def write_previews(preds: Predictions, out_dir: Path, n: int = 8) -> list[str]:
    """PNG overlays of the first `n` ids of seg or ink predictions into `out_dir`; returns the paths written."""
    check_previews(preds.task, n, preds.source)
    table = preds.index("needed to find the images")
    by_id = table.df.set_index("id")
    out_dir = Path(out_dir)
    rows = preds.df.head(n)
    names = _file_names([str(i) for i in rows["id"]])
    written = []
    with preds.maps() as maps:
        for i, key, name in zip(rows["id"], rows["map_key"].astype(str), names, strict=True):
            if i not in by_id.index:
                raise BadInput(f"id {i!r} is not in the index {table.source}", path=preds.source)
            row = by_id.loc[i]
            m = maps[key]
            img = _seg_overlay(table.file(row["path"]), m, preds.classes) if preds.task == "seg" else \
                _ink_overlay(table, row, m)
            written.append(_write_png(out_dir / name, img))
    return written


def check_previews(task: str, n: int, source: str) -> None:
    """What `write_previews` needs, checkable before the predictions exist (`tta --preview`)."""
    if task not in ("seg", "ink"):
        raise BadUsage(f"previews are for seg and ink predictions; {source} holds {task}")
    if n < 1:
        raise BadUsage(f"--preview-count {n}: must be at least 1")


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


def _seg_overlay(path: Path, maps: np.ndarray, classes: list[str]) -> np.ndarray:
    """RGB uint8 image (map size) with every class's mask (prob >= 0.5) filled and outlined, plus a legend."""
    import cv2
    import numpy as np

    from kcomp.data.images import read_rgb

    if maps.ndim != 3:
        raise BadInput(f"seg map has shape {maps.shape}; expected (classes, height, width)", path=str(path))
    _, h, w = maps.shape
    img = read_rgb(path, min(h, w))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    masks = maps >= 128
    for c, m in enumerate(masks):
        if m.any():
            img[m] = img[m] * (1 - ALPHA) + np.asarray(_colour(c), np.float32) * ALPHA
    out = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    for c, m in enumerate(masks):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, _colour(c), max(1, min(h, w) // 200))
    labels = [f"{name} {100 * float(m.mean()):.0f}%" for name, m in zip(classes or map(str, range(len(masks))),
                                                                         masks, strict=False)]
    return _legend(out, labels, [_colour(c) for c in range(len(labels))])


def _legend(img: np.ndarray, labels: list[str], colours: list[tuple[int, int, int]]) -> np.ndarray:
    """The image with a dark panel on its right listing the labels, each after a swatch of its colour (a panel
    beside the image, not over it, so no prediction is hidden)."""
    import cv2
    import numpy as np

    h = img.shape[0]
    scale = max(0.3, min(0.8, h / 700))
    thick = max(1, round(scale * 1.5))
    line = max(14, int(40 * scale))
    text_w = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in labels)
    panel = np.full((max(h, line * len(labels) + 12), line + text_w + 16, 3), 24, np.uint8)
    for k, (text, colour) in enumerate(zip(labels, colours, strict=True)):
        y = 6 + k * line
        cv2.rectangle(panel, (6, y + line // 4), (6 + line // 2, y + 3 * line // 4), colour, -1)
        cv2.putText(panel, text, (line, y + 3 * line // 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
    canvas = np.zeros((panel.shape[0], img.shape[1] + panel.shape[1], 3), np.uint8)
    canvas[:h, : img.shape[1]] = img
    canvas[:, img.shape[1]:] = panel
    return canvas


def _ink_overlay(table: Any, row: Any, prob: np.ndarray) -> np.ndarray:
    """The ink probability as a heat map (inferno, opacity growing with probability) over the papyrus mask."""
    import cv2
    import numpy as np

    from kcomp.data.layers import read_png_mask

    if prob.ndim != 2:
        raise BadInput(f"ink map has shape {prob.shape}; expected (height, width)")
    h, w = int(row["height"]), int(row["width"])
    y0, y1 = int(row.get("y0", 0)), int(row.get("y1", h))
    mask = read_png_mask(table.file(row["mask"]), (h, w))[y0:y1]
    if mask.shape != prob.shape:
        raise BadInput(f"ink map is {prob.shape[0]}x{prob.shape[1]}, its fragment rows {y0}..{y1} are "
                       f"{mask.shape[0]}x{mask.shape[1]}")
    f = min(1.0, INK_MAX_SIDE / max(prob.shape))
    size = (max(1, round(prob.shape[1] * f)), max(1, round(prob.shape[0] * f)))
    p = cv2.resize(prob, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    base = np.where(m[..., None] > 0, 150, 40).astype(np.float32).repeat(3, axis=2)
    heat = cv2.cvtColor(cv2.applyColorMap(p, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB).astype(np.float32)
    a = (0.15 + 0.75 * p.astype(np.float32) / 255.0)[..., None]
    out = np.ascontiguousarray((base * (1 - a) + heat * a).clip(0, 255).astype(np.uint8))
    return _legend(out, [f"ink (max {p.max() / 255:.2f})"], [(252, 255, 164)])


def _write_png(path: Path, rgb: np.ndarray) -> str:
    import cv2

    from kcomp.artifacts._atomic import atomic_write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BadInput("could not encode the preview PNG", path=path)
    atomic_write_bytes(path, buf.tobytes())
    return str(path)
