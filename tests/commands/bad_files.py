"""Setups for the hostile-input rows of the error table (tests/commands/test_errors.py, issue 19): bad files made
cheaply from the session's demo run, by hand edits with pyarrow/json/torch as a careless user or a foreign tool
would make them, never through kcomp's own writers (which refuse most of them).

Each setup takes the table's `Ctx` (its own tmp dir, the output dir, the session fixtures) and registers the paths
the row's argv and pattern use with `ctx.add(...)`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

Setup = Callable[[Any], None]
DEMO_NAMES = ("data", "run", "oof", "test", "folds", "index", "sample")


def demo(ctx: Any) -> None:
    ctx.add(**{k: ctx.demo[k] for k in DEMO_NAMES})


# ------------------------------------------------------------------------------------------------ parquet edits


def _rewrite(src: Path, dst: Path, *, frame: Callable[[Any], Any] | None = None,
             meta: Callable[[dict], Any] | None = None) -> Path:
    """A kcomp table rewritten with pyarrow: `frame` edits the pandas frame, `meta` the kcomp metadata (its result,
    bytes or JSON-able, is stored as is)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    raw = table.schema.metadata[b"kcomp"]
    if meta is not None:
        edited = meta(json.loads(raw))
        raw = edited if isinstance(edited, bytes) else json.dumps(edited).encode()
    out = pa.Table.from_pandas(frame(table.to_pandas()), preserve_index=False) if frame else table
    pq.write_table(out.replace_schema_metadata({b"kcomp": raw}), dst)
    return dst


def edited(source: str, *, frame: Callable[[Any], Any] | None = None, meta: Callable[[dict], Any] | None = None,
           name: str = "bad") -> Setup:
    """The demo's `source` table (oof, test, index, folds) edited into {bad}; the demo's paths are set too."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        ctx.add(bad=_rewrite(ctx.demo[source], ctx.tmp / f"{name}.parquet", frame=frame, meta=meta))

    return setup


def column(name: str, values: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def frame(df: Any) -> Any:
        df[name] = values(df)
        return df

    return frame


def first_row(col: str, value: Any) -> Callable[[Any], Any]:
    """Column `col` with its first row set to `value` (object dtype, so any value fits)."""
    return column(col, lambda df: [value, *df[col].iloc[1:]])


def probs_each(value: Callable[[int], Any]) -> Callable[[Any], Any]:
    return column("probs", lambda df: [value(len(p)) for p in df["probs"]])


def probs_first(edit: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The first row's probability vector edited (the rest valid)."""
    import numpy as np

    return column("probs", lambda df: [np.asarray(edit(np.array(df["probs"].iloc[0], np.float32)), np.float32),
                                       *df["probs"].iloc[1:]])


def set_meta(**changes: Any) -> Callable[[dict], dict]:
    return lambda m: {**m, **changes}


def drop_meta(key: str) -> Callable[[dict], dict]:
    return lambda m: {k: v for k, v in m.items() if k != key}


def raw_meta(raw: bytes) -> Callable[[dict], bytes]:
    return lambda m: raw


# --------------------------------------------------------------------------------------------- other bad files


def json_file(text: str, name: str = "thresholds.json") -> Setup:
    def setup(ctx: Any) -> None:
        demo(ctx)
        (ctx.tmp / name).write_text(text)
        ctx.add(bad=ctx.tmp / name)

    return setup


def thresholds(**body: Any) -> Setup:
    return json_file(json.dumps({"schema": {"name": "thresholds", "version": 1}, **body}))


def directory(name: str = "thresholds.json") -> Setup:
    def setup(ctx: Any) -> None:
        demo(ctx)
        (ctx.tmp / name).mkdir()
        ctx.add(bad=ctx.tmp / name)

    return setup


def fifo(name: str = "pipe.parquet") -> Setup:
    """A FIFO nobody writes to: a reader that opened it would wait forever, so it must be refused, not read."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        os.mkfifo(ctx.tmp / name)
        ctx.add(bad=ctx.tmp / name)

    return setup


def png_as(name: str) -> Setup:
    def setup(ctx: Any) -> None:
        import cv2
        import numpy as np

        demo(ctx)
        (ctx.tmp / name).write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
        ctx.add(bad=ctx.tmp / name)

    return setup


def newline_name(source: str | None) -> Setup:
    """A file whose name holds a newline: a copy of the demo's `source` cut to a truncated parquet (so it is bad),
    or absent (None)."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        path = ctx.tmp / "bad\nname.parquet"
        if source is not None:
            data = ctx.demo[source].read_bytes()
            path.write_bytes(data[: len(data) // 2])
        ctx.add(bad=path, shown=repr(str(path)))

    return setup


# ------------------------------------------------------------------------------------------------------- runs


def run_copy(best: Callable[[Any, Path], None] | None = None, config: Callable[[dict], dict] | None = None,
             fold: bool = True) -> Setup:
    """{bad}: a run dir with the demo's config.json (edited by `config`) and fold0/best.pt (hard-linked, or written by
    `best(ctx, path)`); {ckpt} is that best.pt."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        run = ctx.tmp / "run"
        run.mkdir()
        saved = json.loads((ctx.demo["run"] / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(config(saved) if config else saved))
        ckpt = run / "fold0" / "best.pt"
        if fold:
            ckpt.parent.mkdir()
            if best is None:
                os.link(ctx.demo["run"] / "fold0" / "best.pt", ckpt)
            else:
                best(ctx, ckpt)
        ctx.add(bad=run, ckpt=ckpt)

    return setup


def _demo_best(ctx: Any) -> dict:
    import torch

    return torch.load(ctx.demo["run"] / "fold0" / "best.pt", weights_only=True)


def other_architecture(ctx: Any, path: Path) -> None:
    """A kcomp checkpoint of the run's task whose weights are another network's: the run's resnet18 with a block
    more and its head for 3 classes (what a resnet34's or another run's state dict does, without building one)."""
    import torch

    good = _demo_best(ctx)
    model = {**good["model"], **{k.replace("layer4.1.", "layer4.2."): v for k, v in good["model"].items()
                                 if "layer4.1." in k}}
    model["net.fc.weight"] = model["net.fc.weight"][:3]
    torch.save({**good, "model": model}, path)


def nan_weights(ctx: Any, path: Path) -> None:
    """A diverged run: one weight tensor holds NaN."""
    import torch

    good = _demo_best(ctx)
    model = dict(good["model"])
    name = next(k for k, v in model.items() if v.is_floating_point())
    model[name] = torch.full_like(model[name], float("nan"))
    torch.save({**good, "model": model}, path)


def png_checkpoint(ctx: Any, path: Path) -> None:
    import cv2
    import numpy as np

    path.write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())


def set_config(**changes: Any) -> Callable[[dict], dict]:
    return lambda saved: {**saved, "config": {**saved["config"], **changes}}


def drop_config(key: str) -> Callable[[dict], dict]:
    return lambda saved: {**saved, "config": {k: v for k, v in saved["config"].items() if k != key}}


# -------------------------------------------------------------------------------------------- det predictions


def det_predictions(box: dict | None = None, height: int = 64, **meta: Any) -> Setup:
    """{bad}: test det predictions of 2 images (classes: opacity) whose first box is `box` (fields merged over a
    valid box), written with pyarrow and kcomp metadata."""
    def setup(ctx: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        good = {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "score": 0.9, "label": 0}
        first = {**good, **(box or {})}
        table = pa.table({"id": ["a", "b"], "fold": [-1, -1], "boxes": [[first], [good]],
                          "height": [height, 64], "width": [64, 64]})
        kmeta = {"kcomp_version": "0", "schema": {"name": "predictions", "version": 1}, "command": "hand-made",
                 "task": "det", "kind": "test", "classes": ["opacity"], "values": "probabilities", **meta}
        path = ctx.tmp / "boxes.parquet"
        pq.write_table(table.replace_schema_metadata({b"kcomp": json.dumps(kmeta).encode()}), path)
        demo(ctx)
        ctx.add(bad=path)

    return setup


# ---------------------------------------------------------------------------------------------- data roots (I)


def escaping_folds(how: str) -> Setup:
    """{bad}: a folds table (5 train rows per fold of 2 classes, 2 test rows) over a data root under {tmp}/root
    whose files lead outside it: `symlink` (the images dir is a symlink to {tmp}/outside), `dotdot` (paths
    '../outside/...'), `absolute` (absolute paths under an `allow_absolute: true` key, the hidden escape hatch
    the index once had). {run} is a run dir whose config points at these folds (fold0/best.pt hard-linked)."""
    def setup(ctx: Any) -> None:
        import cv2
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        demo(ctx)
        outside, root = ctx.tmp / "outside", ctx.tmp / "root"
        outside.mkdir()
        root.mkdir()
        names = [f"{i}.png" for i in range(12)]
        for n in names:
            cv2.imwrite(str(outside / n), np.full((32, 32, 3), 127, np.uint8))
        if how == "symlink":
            os.symlink(outside, root / "images")
            paths = [f"images/{n}" for n in names]
        elif how == "dotdot":
            paths = [f"../outside/{n}" for n in names]
        else:
            paths = [str(outside / n) for n in names]
        folds = {"id": names, "path": paths, "split": ["train"] * 10 + ["test"] * 2,
                 "label": [0, 1] * 5 + [-1, -1], "height": [32] * 12, "width": [32] * 12,
                 "fold": [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, -1, -1]}
        meta = {"kcomp_version": "0", "schema": {"name": "folds", "version": 1}, "command": "hand-made",
                "root": "root", "competition": "demo", "task": "cls", "classes": ["disc", "square"]}
        if how == "absolute":
            meta["allow_absolute"] = True
        path = ctx.tmp / "folds.parquet"
        pq.write_table(pa.table(folds).replace_schema_metadata({b"kcomp": json.dumps(meta).encode()}), path)
        run_copy(config=set_config(folds=str(path)))(ctx)
        ctx.add(bad=path, run=ctx.names["bad"], outside=outside)

    return setup


# ------------------------------------------------------------------------------------------------------- outputs


def out_dir_named(name: str) -> Setup:
    """{out}/{name} is an existing directory (where a file output is asked for)."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        (ctx.out / name).mkdir()

    return setup


def out_file_named(name: str) -> Setup:
    """{out}/{name} is an existing file (where a directory output is asked for)."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        (ctx.out / name).write_bytes(b"a user's file, not a directory\n")

    return setup


def linked(source: str, how: str) -> Setup:
    """{link}: a hard link or symlink to the demo's `source` in {tmp} (an input under another name)."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        link = ctx.tmp / f"alias{ctx.demo[source].suffix}"
        (os.link if how == "hard" else os.symlink)(ctx.demo[source], link)
        ctx.add(link=link)

    return setup


def copies(*sources: str) -> Setup:
    """Copies of demo files under {tmp} as {<name>_copy}: inputs a row may name as -o without touching the session's
    shared files (the row then checks the copy survives)."""
    def setup(ctx: Any) -> None:
        demo(ctx)
        for s in sources:
            dst = ctx.tmp / f"{s}_copy{ctx.demo[s].suffix}"
            shutil.copy2(ctx.demo[s], dst)
            ctx.add(**{f"{s}_copy": dst})

    return setup


# ----------------------------------------------------------------------------------------- dense (seg) predictions


def seg_predictions(break_it: str) -> Setup:
    """{good} and {bad}: test seg predictions of 2 images (4 classes, 8x8 uint8 maps in an .npz beside each table),
    made by hand; {bad} is broken as `break_it` says: `missing-map` (a map_key the .npz lacks), `truncated-npz`,
    `text-map` (a map of strings), `null-key` (an empty map_key), `zero-width` (an image 0 pixels wide)."""
    def setup(ctx: Any) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        demo(ctx)
        for name in ("good", "bad"):
            keys = ["k0", "k1"]
            maps = {k: np.full((4, 8, 8), 100, np.uint8) for k in keys}
            if name == "bad" and break_it == "missing-map":
                maps.pop("k1")
            if name == "bad" and break_it == "text-map":
                maps["k1"] = np.full((4, 8, 8), "x")
            if name == "bad" and break_it == "null-key":
                keys = ["k0", None]
            np.savez(ctx.tmp / f"{name}.npz", **maps)
            if name == "bad" and break_it == "truncated-npz":
                data = (ctx.tmp / "bad.npz").read_bytes()
                (ctx.tmp / "bad.npz").write_bytes(data[: len(data) // 2])
            meta = {"kcomp_version": "0", "schema": {"name": "predictions", "version": 1}, "command": "hand-made",
                    "task": "seg", "kind": "test", "classes": ["Fish", "Flower", "Gravel", "Sugar"],
                    "values": "uint8 probability*255 maps", "maps_file": f"{name}.npz"}
            widths = [8, 0] if name == "bad" and break_it == "zero-width" else [8, 8]
            table = pa.table({"id": ["a.jpg", "b.jpg"], "fold": [-1, -1], "map_key": keys, "height": [8, 8],
                              "width": widths})
            pq.write_table(table.replace_schema_metadata({b"kcomp": json.dumps(meta).encode()}),
                           ctx.tmp / f"{name}.parquet")
        ctx.add(good=ctx.tmp / "good.parquet", bad=ctx.tmp / "bad.parquet", npz=ctx.tmp / "bad.npz")

    return setup
