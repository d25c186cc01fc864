"""Shared by presets whose raw layout is Cassava's: `train.csv` (image_id,label), train_images/, test_images/."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kcomp import console
from kcomp.artifacts._input import directory
from kcomp.artifacts.index import write_index
from kcomp.artifacts.submission import read_csv
from kcomp.data.image_cache import add_image_cache
from kcomp.data.images import image_size
from kcomp.errors import BadInput, BadUsage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def prep_cls_layout(raw: Path | None, out: Path, *, competition: str, id_column: str = "image_id",
                    label_column: str = "label", class_map: str = "label_num_to_disease_map.json",
                    size: int | None = None, workers: int | None = None) -> list[str]:
    """Index the layout; with `size`, also decode every image once into the `size` px image cache."""
    import pandas as pd

    if raw is None:
        raise BadUsage(f"prep {competition} needs RAW_DIR (the unpacked competition download)")
    directory(raw, "raw directory")
    train = read_csv(raw / "train.csv", [id_column, label_column])
    if len(train) == 0:
        raise BadInput("has no rows", path=raw / "train.csv")
    labels = pd.to_numeric(train[label_column], errors="coerce")
    if labels.isna().any() or (labels % 1 != 0).any() or (labels < 0).any():
        bad = train[label_column][labels.isna() | (labels % 1 != 0) | (labels < 0)].iloc[0]
        raise BadInput(f"column {label_column} has value {bad!r}; expected an integer >= 0", path=raw / "train.csv")
    dup = train[id_column][train[id_column].duplicated()]
    if len(dup):
        raise BadInput(f"duplicate {id_column} {dup.iloc[0]!r}", path=raw / "train.csv")
    classes = _classes(raw / class_map, int(labels.max()) + 1)
    test_dir = raw / "test_images"
    test_ids = sorted(p.name for p in test_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if test_dir.is_dir() else []
    rows = [{"id": i, "path": f"train_images/{i}", "split": "train", "label": int(v)}
            for i, v in zip(train[id_column], labels, strict=True)]
    rows += [{"id": i, "path": f"test_images/{i}", "split": "test", "label": -1} for i in test_ids]
    df = pd.DataFrame(rows)
    with console.progress(len(df), "reading image headers") as bar, ThreadPoolExecutor(8) as pool:
        sizes = []
        for hw in pool.map(image_size, [raw / p for p in df["path"]]):
            sizes.append(hw)
            bar.advance()
    df["height"] = [h for h, _ in sizes]
    df["width"] = [w for _, w in sizes]
    df["label"] = df["label"].astype("int64")
    out.mkdir(parents=True, exist_ok=True)
    cache = add_image_cache(df, raw, out, size, workers)
    path = write_index(df, out / "index.parquet", root=raw, competition=competition, task="cls", classes=classes,
                       **cache)
    console.log(f"{competition}: {int((df['split'] == 'train').sum())} train, {len(test_ids)} test images, "
                f"{len(classes)} classes")
    return [path]


def _classes(path: Path, n: int) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(n)]
    try:
        mapping: dict[str, Any] = json.loads(path.read_text())
        names = [str(mapping[str(i)]) for i in range(max(n, len(mapping)))]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BadInput(f'expected {{"0": name, ...}} for every label: {e}', path=path) from None
    return names


def submit_argmax(preds: list[Any], *, id_column: str = "image_id", label_column: str = "label") -> Any:
    import numpy as np
    import pandas as pd

    from kcomp.artifacts.predictions import one_test_file

    p = one_test_file(preds, "cls")
    return pd.DataFrame({id_column: p.df["id"].astype(str), label_column: np.argmax(p.probs(), axis=1)})
