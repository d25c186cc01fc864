"""Vesuvius Challenge - Ink Detection (https://www.kaggle.com/competitions/vesuvius-challenge-ink-detection).

Raw layout:
    train/<fragment>/surface_volume/00.tif … 64.tif   65 uint16 layers, each HxW (fragment 2: 14830x9506)
    train/<fragment>/mask.png                         papyrus region (scored pixels)
    train/<fragment>/inklabels.png                    binary ink
    train/<fragment>/ir.png                           infrared photo (ignored)
    test/<fragment>/surface_volume/*.tif, mask.png
    sample_submission.csv                             Id,Predicted
Metric: F0.5 over pixels inside mask.png. Submission: one row per test fragment, `Predicted` = RLE of the binary
ink mask, `start length` pairs, 1-indexed, pixels numbered row-major.

The index has one row per fragment (or per half of a fragment cut with `--split-fragment`); the layer stacks
stay where they are and are read window by window (`kcomp.data.layers.LayerStack`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp import console
from kcomp.artifacts._input import directory
from kcomp.competitions import register_competition
from kcomp.errors import BadInput, BadUsage

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from kcomp.artifacts.predictions import Predictions

COMPETITION = "vesuvius"
TASK = "ink"
CLASSES = ["ink"]
SPLIT_DIRS = ("train", "test")
LAYER_DIR = "surface_volume"
MASK = "mask.png"
LABELS = "inklabels.png"


def natural_key(name: str) -> list[Any]:
    """'2' < '10', 'a' < 'b': digits compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def find_fragments(raw: Path) -> list[tuple[str, str]]:
    """(split, fragment name) for every directory under raw/train and raw/test, naturally sorted."""
    found = []
    for split in SPLIT_DIRS:
        d = raw / split
        if d.is_dir():
            names = [p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
            found += [(split, n) for n in sorted(names, key=natural_key)]
    return found


def parse_split_fragments(value: Any) -> dict[str, int | None]:
    """`--split-fragment 2,3` (a string), a list of names, or {name: cut row or None (balanced)}."""
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",")]
        if any(not n for n in names):
            raise BadUsage(f"--split-fragment {value!r}: expected fragment names separated by commas, e.g. 2 or 1,2")
        return dict.fromkeys(names)
    if isinstance(value, dict):
        return {str(k): (None if v is None else int(v)) for k, v in value.items()}
    if isinstance(value, Iterable):
        return dict.fromkeys(str(v) for v in value)
    raise BadUsage(f"split_fragments: expected fragment names, got {value!r}")


def balanced_cut(mask: np.ndarray) -> int:
    """The row r (1..H-1) such that mask[:r] and mask[r:] hold the most similar papyrus pixel counts."""
    h = mask.shape[0]
    if h < 2:
        raise BadUsage(f"cannot cut a fragment of height {h} in two")
    import numpy as np

    rows = np.cumsum(mask.sum(axis=1, dtype=np.int64))
    total = int(rows[-1])
    if total == 0:
        return h // 2
    above = rows[:-1]  # pixels in mask[:r] for r = 1..H-1
    return int(np.argmin(np.abs(2 * above - total))) + 1


def _fragment_rows(raw: Path, split: str, name: str, n_layers_seen: dict[str, Any],
                   cuts: dict[str, int | None]) -> list[dict[str, Any]]:
    """Validate one fragment (layer headers, mask and labels sizes) and return its index row(s)."""
    from kcomp.data.layers import LayerStack, read_png_mask

    frag = raw / split / name
    stack = LayerStack(frag / LAYER_DIR)
    if n_layers_seen:
        first, n = n_layers_seen["where"], n_layers_seen["n"]
        if stack.n_layers != n:
            raise BadInput(f"has {stack.n_layers} layers; {first} has {n} (every fragment needs the same layers)",
                           path=frag / LAYER_DIR)
    else:
        n_layers_seen.update(where=frag / LAYER_DIR, n=stack.n_layers, dtype=str(stack.dtype))
    mask = read_png_mask(frag / MASK, stack.shape)
    labels = ""
    if split == "train":
        read_png_mask(frag / LABELS, stack.shape)
        labels = f"{split}/{name}/{LABELS}"
    h, w = stack.shape
    base = {"fragment": name, "path": f"{split}/{name}/{LAYER_DIR}", "mask": f"{split}/{name}/{MASK}",
            "inklabels": labels, "split": split, "height": h, "width": w, "n_layers": stack.n_layers}
    if name not in cuts:
        return [{"id": name, **base, "y0": 0, "y1": h, "mask_pixels": int(mask.sum())}]
    cut = cuts[name]
    if cut is None:
        cut = balanced_cut(mask)
    elif not 0 < cut < h:
        raise BadUsage(f"cut row {cut} for fragment {name!r} is outside 1..{h - 1}")
    return [{"id": f"{name}a", **base, "y0": 0, "y1": cut, "mask_pixels": int(mask[:cut].sum())},
            {"id": f"{name}b", **base, "y0": cut, "y1": h, "mask_pixels": int(mask[cut:].sum())}]


def prep_vesuvius(raw: Path | None, out: Path, *, split_fragments: Any = None) -> list[str]:
    """Validate every fragment (headers, masks, labels) first, then write `out/index.parquet`."""
    import pandas as pd

    from kcomp.artifacts.index import write_index

    if raw is None:
        raise BadUsage(f"prep {COMPETITION} needs RAW_DIR (the unpacked competition download)")
    raw = Path(raw)
    directory(raw, "raw directory")
    fragments = find_fragments(raw)
    if not fragments:
        raise BadInput(f"no fragments found: expected train/<fragment>/{LAYER_DIR}/00.tif … and "
                       f"test/<fragment>/{LAYER_DIR}/…", path=raw)
    cuts = parse_split_fragments(split_fragments)
    seen: dict[str, str] = {}
    for split, name in fragments:
        if name in seen:
            raise BadInput(f"fragment name {name!r} is used in both {seen[name]}/ and {split}/",
                           path=raw / split / name)
        seen[name] = split
    for name in cuts:
        if seen.get(name) != "train":
            train = [n for s, n in fragments if s == "train"]
            what = "is a test fragment; only train fragments can be split" if name in seen else "is not a fragment"
            raise BadUsage(f"--split-fragment {name!r} {what} (train fragments: {', '.join(train) or 'none'})")
    rows: list[dict[str, Any]] = []
    layers_seen: dict[str, Any] = {}
    with console.progress(len(fragments), "checking fragments", unit="frag") as bar:
        for split, name in fragments:
            rows += _fragment_rows(raw, split, name, layers_seen, cuts)
            bar.advance()
    df = pd.DataFrame(rows)
    df["group"] = df["id"]
    cols = ["id", "fragment", "path", "mask", "inklabels", "split", "height", "width", "n_layers", "y0", "y1", "group",
            "mask_pixels"]
    df = df[cols]
    for c in ("height", "width", "n_layers", "y0", "y1", "mask_pixels"):
        df[c] = df[c].astype("int64")
    out.mkdir(parents=True, exist_ok=True)
    path = write_index(df, out / "index.parquet", root=raw, competition=COMPETITION, task=TASK, classes=CLASSES,
                       n_layers=int(layers_seen["n"]), dtype=layers_seen["dtype"])
    n_train = int((df["split"] == "train").sum())
    console.log(f"{COMPETITION}: {n_train} train, {len(df) - n_train} test row(s) from {len(fragments)} fragment(s), "
                f"{layers_seen['n']} layers each")
    return [path]


def load_maps(preds: Predictions) -> dict[str, np.ndarray]:
    """id -> HxW probability map (uint8 = prob*255, or float in [0, 1]) from the npz next to the predictions."""
    if "maps_file" not in preds.meta:
        raise BadInput("ink predictions lack the maps_file metadata (the npz of probability maps)", path=preds.source)
    if "map_key" not in preds.df.columns:
        raise BadInput("ink predictions lack the map_key column", path=preds.source)
    npz = Path(preds.source).parent / preds.meta["maps_file"]
    if not npz.is_file():
        raise BadInput(f"probability maps of {preds.source} not found", path=npz)
    import numpy as np

    out: dict[str, np.ndarray] = {}
    try:
        with np.load(npz, allow_pickle=False) as data:
            for i, key in zip(preds.df["id"].astype(str), preds.df["map_key"].astype(str), strict=True):
                if key not in data.files:
                    raise BadInput(f"has no map {key!r} (for id {i!r})", path=npz)
                arr = data[key]
                if arr.ndim != 2:
                    raise BadInput(f"map {key!r} has shape {arr.shape}; expected HxW", path=npz)
                out[i] = arr
    except (OSError, ValueError) as e:
        raise BadInput(f"not a readable npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                       path=npz) from None
    return out


def ink_thresholds(thresholds: dict[str, Any] | None) -> tuple[float, int]:
    """(threshold, min_size) from THRESHOLDS.json: top-level keys, or under classes/ink."""
    from kcomp.post.tuned import ink_settings

    return ink_settings(thresholds)


def submit_ink(preds: list[Predictions], *, thresholds: dict[str, Any] | None) -> pd.DataFrame:
    """Threshold each test fragment's map, drop small components, zero it outside mask.png, RLE it row-major."""
    import pandas as pd

    from kcomp.artifacts.predictions import one_test_file
    from kcomp.data.layers import read_png_mask
    from kcomp.formats.rle import encode
    from kcomp.post.ink_threshold import postprocess

    p = one_test_file(preds, TASK)
    threshold, min_size = ink_thresholds(thresholds)
    index = p.index("needed to find each fragment's mask.png")
    by_id = {str(r["id"]): r for r in index.df.to_dict("records")}
    maps = load_maps(p)
    ids, rles = [], []
    with console.progress(len(maps), "encoding fragments", unit="frag") as bar:
        for i, prob in maps.items():
            row = by_id.get(i)
            if row is None:
                raise BadInput(f"id {i!r} is not in the index {index.source}", path=p.source)
            h, w = int(row["height"]), int(row["width"])
            if (int(row["y0"]), int(row["y1"])) != (0, h):
                raise BadInput(f"id {i!r} covers rows {row['y0']}..{row['y1']} of {h}; a submission needs whole "
                               "fragments", path=p.source)
            if prob.shape != (h, w):
                raise BadInput(f"map of {i!r} is {prob.shape[0]}x{prob.shape[1]}; the fragment is {h}x{w}",
                               path=p.source)
            mask = read_png_mask(index.file(row["mask"]), (h, w))
            ids.append(str(row.get("fragment") or i))
            rles.append(encode(postprocess(prob, mask, threshold, min_size), order="row"))
            bar.advance()
    return pd.DataFrame({"Id": ids, "Predicted": rles})


@register_competition(COMPETITION)
class Vesuvius:
    """Vesuvius Ink Detection (ink, F0.5): train/<fragment>/surface_volume/NN.tif + masks -> Id,Predicted RLE"""

    task = TASK
    id_column = "Id"
    kaggle_slug = "vesuvius-challenge-ink-detection"  # /kaggle/input/<slug> in a notebook (`kcomp pack`)

    def prep(self, raw: Path | None, out: Path, *, split_fragment: str | None = None) -> list[str]:
        return prep_vesuvius(raw, Path(out), split_fragments=split_fragment)

    def submit(self, preds: list[Any], *, thresholds: dict[str, Any] | None) -> Any:
        return submit_ink(preds, thresholds=thresholds)
