"""The bad-input table: every error a user can cause, through the real CLI.

Contract: exit 2, exactly one stderr line `kcomp: error: ...` naming the file/column/value at fault, no traceback
(unless `--debug`), nothing on stdout, existing outputs untouched and no new output file. Unexpected failures exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.commands import bad_files as bf
from tests.conftest import run_cli

OLD_BYTES = b"previous output: must survive a failed command\n"
OLD_MTIME_NS = 1_500_000_000_000_000_000


@dataclass
class Ctx:
    """What a setup function gets: its own tmp dir, the output dir, and the session fixtures on demand."""

    tmp: Path
    out: Path
    request: pytest.FixtureRequest
    names: dict[str, Any] = field(default_factory=dict)
    uses_demo: bool = False  # the session's demo files are inputs: checked unchanged like the row's own

    @property
    def demo(self) -> dict[str, Path]:
        self.uses_demo = True
        return self.request.getfixturevalue("demo_run")

    def raw(self) -> Path:
        """A private copy of the miniature Cassava download, free to damage."""
        raw = self.tmp / "raw"
        if not raw.exists():
            shutil.copytree(self.request.getfixturevalue("cassava_raw"), raw)
        self.names["raw"] = raw
        return raw

    def add(self, **names: Any) -> None:
        self.names.update(names)


Setup = Callable[[Ctx], None]


# --------------------------------------------------------------------------------------------------- setups


def nothing(ctx: Ctx) -> None:
    pass


def demo_files(ctx: Ctx) -> None:
    d = ctx.demo
    ctx.add(**{k: d[k] for k in ("data", "run", "oof", "test", "folds", "index", "sample")})


def raw_copy(mutate: Callable[[Path], Any] | None = None) -> Setup:
    def setup(ctx: Ctx) -> None:
        raw = ctx.raw()
        if mutate is not None:
            mutate(raw)

    return setup


def _edit_train_csv(fn: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def mutate(raw: Path) -> None:
        csv = raw / "train.csv"
        csv.write_text("\n".join(fn(csv.read_text().splitlines())) + "\n")

    return mutate


def _set_label(value: str) -> Callable[[Path], None]:
    return _edit_train_csv(lambda lines: [lines[0], lines[1].split(",")[0] + "," + value, *lines[2:]])


def _first_train_image(raw: Path) -> str:
    return (raw / "train.csv").read_text().splitlines()[1].split(",")[0]


def _not_an_image(ctx: Ctx) -> None:
    raw = ctx.raw()
    name = _first_train_image(raw)
    (raw / "train_images" / name).write_text("this is text, not a JPEG\n")
    ctx.add(image=raw / "train_images" / name)


def _missing_image(ctx: Ctx) -> None:
    raw = ctx.raw()
    name = _first_train_image(raw)
    (raw / "train_images" / name).unlink()
    ctx.add(image=raw / "train_images" / name)


def _text_file(ctx: Ctx) -> None:
    (ctx.tmp / "index.parquet").write_text("id,path,split\na,a.jpg,train\n")
    ctx.add(bad=ctx.tmp / "index.parquet")


def _truncated_index(ctx: Ctx) -> None:
    data = ctx.demo["index"].read_bytes()
    (ctx.tmp / "index.parquet").write_bytes(data[: len(data) // 2])
    ctx.add(bad=ctx.tmp / "index.parquet")


def _plain_parquet(ctx: Ctx) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a.jpg", "b.jpg"], "label": [0, 1]}), ctx.tmp / "plain.parquet")
    ctx.add(bad=ctx.tmp / "plain.parquet")


def _future_index(ctx: Ctx) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(ctx.demo["index"])
    meta = json.loads(table.schema.metadata[b"kcomp"])
    meta["schema"]["version"] = 99
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"kcomp": json.dumps(meta).encode()}),
                   ctx.tmp / "future.parquet")
    ctx.add(bad=ctx.tmp / "future.parquet")


def _rare_class_index(ctx: Ctx) -> None:
    """10 train rows; class 'c' has a single one, so 3 stratified folds cannot all hold it."""
    import pandas as pd

    from kcomp.artifacts import write_index

    labels = [0] * 5 + [1] * 4 + [2]
    df = pd.DataFrame({"id": [f"{i}.jpg" for i in range(10)], "path": [f"train_images/{i}.jpg" for i in range(10)],
                       "split": "train", "label": labels, "height": 32, "width": 32})
    write_index(df, ctx.tmp / "index.parquet", root=ctx.tmp, competition="demo", task="cls", classes=["a", "b", "c"])
    ctx.add(bad=ctx.tmp / "index.parquet")


def _copy_run_config(ctx: Ctx, name: str) -> Path:
    run = ctx.tmp / name
    run.mkdir()
    shutil.copy2(ctx.demo["run"] / "config.json", run / "config.json")
    return run


def _untrained_run(ctx: Ctx) -> None:
    ctx.add(bad=_copy_run_config(ctx, "untrained"))


def _pickled_checkpoint(ctx: Ctx) -> None:
    import torch

    run = _copy_run_config(ctx, "copied")
    (run / "fold0").mkdir()
    best = run / "fold0" / "best.pt"
    good = torch.load(ctx.demo["run"] / "fold0" / "best.pt", weights_only=True)
    torch.save({**good, "args": argparse.Namespace(lr=0.1, model="resnet18")}, best)
    ctx.add(bad=run, ckpt=best)


def _truncated_checkpoint(ctx: Ctx) -> None:
    run = _copy_run_config(ctx, "copied")
    (run / "fold0").mkdir()
    data = (ctx.demo["run"] / "fold0" / "best.pt").read_bytes()
    (run / "fold0" / "best.pt").write_bytes(data[: len(data) // 2])
    ctx.add(bad=run, ckpt=run / "fold0" / "best.pt")


def _checkpoint_of_another_task(ctx: Ctx) -> None:
    import torch

    run = _copy_run_config(ctx, "copied")
    (run / "fold0").mkdir()
    good = torch.load(ctx.demo["run"] / "fold0" / "best.pt", weights_only=True)
    torch.save({**good, "task": "ink"}, run / "fold0" / "best.pt")
    ctx.add(bad=run, ckpt=run / "fold0" / "best.pt")


def _folds_that_lost_a_class(ctx: Ctx) -> None:
    """Every train row of class 0 sits in fold 0, so training fold 0 never sees the class."""
    import pandas as pd

    from kcomp.artifacts import read_index, write_folds

    table = read_index(ctx.demo["folds"])
    folds = table.df["fold"].to_numpy().copy()
    train = (table.df["split"] == "train").to_numpy()
    folds[train & (table.df["label"] == 0).to_numpy()] = 0
    table.df = pd.DataFrame(table.df.drop(columns=["fold"]))
    write_folds(table, folds, ctx.tmp / "lost.parquet")
    ctx.add(bad=ctx.tmp / "lost.parquet")


def _vesuvius_raw(mutate: Callable[[Path], Any]) -> Setup:
    def setup(ctx: Ctx) -> None:
        from tests.vesuvius_fixture import make_vesuvius_layout

        raw = make_vesuvius_layout(ctx.tmp / "vraw", n_layers=8)
        mutate(raw)
        ctx.add(vraw=raw)

    return setup


def _drop_layer(raw: Path) -> None:
    (raw / "train" / "2" / "surface_volume" / "03.tif").unlink()


def _shrink_mask(raw: Path) -> None:
    import cv2

    path = raw / "train" / "1" / "mask.png"
    cv2.imwrite(str(path), cv2.imread(str(path))[:-3])


def _siim_raw(mutate: Callable[[Path, str, Ctx], Any]) -> Setup:
    """A miniature SIIM download (2 train studies, 3 images; 1 test image); `mutate(raw, first_image_id, ctx)`.
    The first train image is uncompressed (tests/siim_fixture.py), so truncating it cuts its pixel data."""

    def setup(ctx: Ctx) -> None:
        from tests.siim_fixture import make_siim_layout

        raw = make_siim_layout(ctx.tmp / "sraw", n_studies=2, n_images=3, n_test_studies=1, n_test_images=1)
        lines = (raw / "train_image_level.csv").read_text().splitlines()
        image = lines[1].split(",")[0].removesuffix("_image")
        (dcm,) = raw.glob(f"train/*/*/{image}.dcm")
        ctx.add(sraw=raw, image=image, dcm=dcm, study=dcm.parent.parent.name)
        mutate(raw, image, ctx)

    return setup


def _truncate_dcm(raw: Path, image: str, ctx: Ctx) -> None:
    dcm = ctx.names["dcm"]
    dcm.write_bytes(dcm.read_bytes()[:-5000])


def _text_in_dcm(raw: Path, image: str, ctx: Ctx) -> None:
    ctx.names["dcm"].write_text("this is text, not a DICOM file\n")


def _drop_boxes_column(raw: Path, image: str, ctx: Ctx) -> None:
    import pandas as pd

    path = raw / "train_image_level.csv"
    pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=["boxes"]).to_csv(path, index=False)


def _delete_dcm(raw: Path, image: str, ctx: Ctx) -> None:
    ctx.names["dcm"].unlink()


def _study_with_two_classes(raw: Path, image: str, ctx: Ctx) -> None:
    path = raw / "train_study_level.csv"
    lines = path.read_text().splitlines()
    lines = [lines[0], *(ln[: ln.rindex(",")] + ",1" if ln.startswith(ctx.names["study"]) else ln
                         for ln in lines[1:])]
    path.write_text("\n".join(lines) + "\n")


def _trained_run_in_out(ctx: Ctx) -> None:
    """`-o RUN` is the demo run (trained once with 1 epoch, lr 1e-3), hard-linked so its files stay shared."""
    demo_files(ctx)
    shutil.copytree(ctx.demo["run"], ctx.out / "run", copy_function=os.link)


def _rewrite_predictions(src: Path, dst: Path, edit: Callable[[Any], Any]) -> Path:
    """Change a predictions table with pandas/pyarrow, keeping its kcomp metadata (a hand edit, not a kcomp write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    df = edit(table.to_pandas())
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False)
                   .replace_schema_metadata({b"kcomp": table.schema.metadata[b"kcomp"]}), dst)
    return dst


def _renamed_id(ctx: Ctx) -> None:
    demo_files(ctx)

    def edit(df: Any) -> Any:
        ctx.add(gone=df["id"].iloc[0])
        df["id"] = ["renamed.jpg", *df["id"].iloc[1:]]
        return df

    ctx.add(bad=_rewrite_predictions(ctx.demo["oof"], ctx.tmp / "other_oof.parquet", edit))


def _nan_probs(ctx: Ctx) -> None:
    import numpy as np

    demo_files(ctx)

    def edit(df: Any) -> Any:
        probs = [np.array(p, dtype=np.float32) for p in df["probs"]]
        probs[5][2] = np.nan
        df["probs"] = probs
        ctx.add(bad_id=df["id"].iloc[5])
        return df

    ctx.add(bad=_rewrite_predictions(ctx.demo["oof"], ctx.tmp / "nan_oof.parquet", edit))


def _empty_predictions(ctx: Ctx) -> None:
    demo_files(ctx)
    ctx.add(bad=_rewrite_predictions(ctx.demo["oof"], ctx.tmp / "empty_oof.parquet", lambda df: df.iloc[:0]))


def _oof_twice(ctx: Ctx) -> None:
    demo_files(ctx)
    shutil.copy2(ctx.demo["oof"], ctx.tmp / "oof_b.parquet")
    ctx.add(oof_b=ctx.tmp / "oof_b.parquet")


def _sample(edit: Callable[[list[str]], list[str]]) -> Setup:
    def setup(ctx: Ctx) -> None:
        demo_files(ctx)
        lines = ctx.demo["sample"].read_text().splitlines()
        ctx.add(first_id=lines[1].split(",")[0], last_id=lines[-1].split(",")[0])
        (ctx.tmp / "sample.csv").write_text("\n".join(edit(lines)) + "\n")
        ctx.add(bad=ctx.tmp / "sample.csv")

    return setup


# ------------------------------------------------------------------------------------------------------ the table
# (setup, argv, regex the one error line must match, exit code). {names} in argv are paths from the setup; in the
# regex they are inserted escaped. Outputs always go under {out}, which is checked byte for byte afterwards.

TRAIN_FAST = ("--img-size", "32", "--epochs", "1", "--workers", "0")

CASES = [
    # ---- prep
    pytest.param(nothing, ("prep", "cassava", "{tmp}/no_such_download", "-o", "{out}/data"),
                 r"{tmp}/no_such_download: raw directory not found", 2, id="prep-missing-raw-dir"),
    pytest.param(raw_copy(lambda raw: (raw / "train.csv").unlink()), ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/train\.csv: no such file", 2, id="prep-train-csv-missing"),
    pytest.param(raw_copy(_edit_train_csv(lambda ls: ["image_id,disease", *ls[1:]])),
                 ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/train\.csv: missing column\(s\) label \(has image_id, disease\)", 2,
                 id="prep-train-csv-without-label-column"),
    pytest.param(raw_copy(_set_label("healthy")), ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/train\.csv: column label has value 'healthy'", 2, id="prep-non-integer-label"),
    pytest.param(raw_copy(_set_label("2.5")), ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/train\.csv: column label has value '2\.5'", 2, id="prep-fractional-label"),
    pytest.param(raw_copy(_set_label("-1")), ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/train\.csv: column label has value '-1'", 2, id="prep-negative-label"),
    pytest.param(raw_copy(_edit_train_csv(lambda ls: ls[:1])), ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/train\.csv: has no rows", 2, id="prep-train-csv-header-only"),
    pytest.param(raw_copy(_edit_train_csv(lambda ls: [*ls, ls[3]])), ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/train\.csv: duplicate image_id '\d+\.jpg'", 2, id="prep-duplicate-image-id"),
    pytest.param(_not_an_image, ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{image}: not a readable image", 2, id="prep-text-in-a-jpg"),
    pytest.param(_missing_image, ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{image}: image file not found", 2, id="prep-listed-train-image-missing"),
    pytest.param(nothing, ("prep", "kaggle-nope", "{tmp}", "-o", "{out}/data"),
                 r"unknown competition 'kaggle-nope'; choose one of: .*cassava", 2, id="prep-unknown-competition"),
    pytest.param(nothing, ("prep", "cassava", "-o", "{out}/data"),
                 r"prep cassava needs RAW_DIR", 2, id="prep-cassava-without-raw-dir"),
    pytest.param(raw_copy(lambda raw: (raw / "label_num_to_disease_map.json").write_text("{'0': 'cbb'")),
                 ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/label_num_to_disease_map\.json: expected .* for every label", 2,
                 id="prep-label-map-not-json"),
    pytest.param(raw_copy(lambda raw: (raw / "label_num_to_disease_map.json").write_text('{"0": "cbb", "1": "cbsd"}')),
                 ("prep", "cassava", "{raw}", "-o", "{out}/data"),
                 r"{raw}/label_num_to_disease_map\.json: expected .* for every label: '2'", 2,
                 id="prep-label-map-missing-a-class"),
    # ---- split
    pytest.param(nothing, ("split", "{tmp}/missing.parquet", "-o", "{out}/folds.parquet"),
                 r"{tmp}/missing\.parquet: no such file", 2, id="split-missing-index"),
    pytest.param(_text_file, ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: not a readable parquet file", 2, id="split-index-not-a-parquet"),
    pytest.param(_truncated_index, ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: not a readable parquet file \(truncated or corrupt\?\)", 2, id="split-truncated-index"),
    pytest.param(_plain_parquet, ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: not a kcomp artifact", 2, id="split-parquet-not-from-kcomp"),
    pytest.param(demo_files, ("split", "{oof}", "-o", "{out}/folds.parquet"),
                 r"{oof}: is a kcomp 'predictions' file, expected index", 2, id="split-predictions-as-index"),
    pytest.param(demo_files, ("split", "{index}", "-o", "{out}/folds.parquet", "--folds", "1000"),
                 r"only 300 train rows, fewer than --folds 1000", 2, id="split-more-folds-than-rows"),
    pytest.param(_rare_class_index, ("split", "{bad}", "-o", "{out}/folds.parquet", "--folds", "3"),
                 r"column 'label': class 2 has 1 train rows, fewer than --folds 3", 2,
                 id="split-class-rarer-than-folds"),
    pytest.param(demo_files, ("split", "{index}", "-o", "{out}/folds.parquet", "--strategy", "random"),
                 r"--strategy random: unknown split strategy; choose one of: auto", 2, id="split-unknown-strategy"),
    pytest.param(demo_files, ("split", "{index}", "-o", "{out}/folds.parquet", "--strategy", "group"),
                 r"strategy 'group' needs group column 'group'", 2, id="split-group-without-group-column"),
    pytest.param(_future_index, ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: index schema version 99 is newer than this kcomp", 2, id="split-schema-from-the-future"),
    # ---- train (all fail before any training step)
    pytest.param(demo_files, ("train", "regress", "--folds", "{folds}", "-o", "{out}/run", *TRAIN_FAST),
                 r"unknown task 'regress'; choose one of: cls", 2, id="train-unknown-task"),
    pytest.param(demo_files, ("train", "cls", "--folds", "{index}", "-o", "{out}/run", *TRAIN_FAST),
                 r"index\.parquet: is a kcomp 'index' file, expected folds", 2, id="train-index-instead-of-folds"),
    pytest.param(demo_files, ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", "--fold", "7", *TRAIN_FAST),
                 r"--fold 7: folds file .*folds\.parquet has folds \[0, 1\]", 2, id="train-unknown-fold"),
    pytest.param(demo_files, ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", "--fold", "two", *TRAIN_FAST),
                 r"--fold two: expected a fold number or 'all'", 2, id="train-non-numeric-fold"),
    pytest.param(demo_files, ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", "--model", "resnet_nope",
                              *TRAIN_FAST),
                 r"unknown timm model 'resnet_nope'", 2, id="train-unknown-timm-model"),
    pytest.param(demo_files, ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", "--img-size", "32",
                              "--epochs", "0", "--workers", "0"),
                 r"--epochs 0: must be at least 1", 2, id="train-zero-epochs"),
    pytest.param(demo_files, ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", "--target", "grade",
                              *TRAIN_FAST),
                 r"--target grade: no such column in .*folds\.parquet", 2, id="train-target-column-missing"),
    pytest.param(_trained_run_in_out, ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", "--fold", "all",
                                       "--batch-size", "32", "--lr", "0.01", *TRAIN_FAST),
                 r"{out}/run/config\.json: run was started with other options \(.*\blr: 0\.001 -> 0\.01\b.*\)", 2,
                 id="train-resume-with-another-lr"),
    # ---- oof / tta
    pytest.param(demo_files, ("oof", "{data}", "-o", "{out}/oof.parquet", "--workers", "0"),
                 r"{data}: not a kcomp run directory \(no config\.json\)", 2, id="oof-not-a-run-dir"),
    pytest.param(_untrained_run, ("oof", "{bad}", "-o", "{out}/oof.parquet", "--workers", "0"),
                 r"{bad}: has no trained fold", 2, id="oof-run-without-trained-folds"),
    pytest.param(_untrained_run, ("tta", "{bad}", "-o", "{out}/test.parquet", "--workers", "0"),
                 r"{bad}: has no trained fold", 2, id="tta-run-without-trained-folds"),
    pytest.param(_pickled_checkpoint, ("oof", "{bad}", "-o", "{out}/oof.parquet", "--workers", "0"),
                 r"{ckpt}: refused: contains pickled objects", 2, id="oof-pickled-checkpoint"),
    pytest.param(_checkpoint_of_another_task, ("oof", "{bad}", "-o", "{out}/oof.parquet", "--workers", "0"),
                 r"{ckpt}: is a checkpoint of task 'ink', not 'cls'", 2, id="oof-checkpoint-of-another-task"),
    pytest.param(_folds_that_lost_a_class, ("train", "cls", "--folds", "{bad}", "--fold", "0", "--img-size", "32",
                                            "--epochs", "1", "--workers", "0", "-o", "{out}/run"),
                 r"{bad}: this fold's training rows have no example of class", 2, id="train-folds-that-lost-a-class"),
    pytest.param(_vesuvius_raw(_drop_layer), ("prep", "vesuvius", "{vraw}", "-o", "{out}/ink"),
                 r"03\.tif", 2, id="prep-vesuvius-missing-tiff-layer"),
    pytest.param(_vesuvius_raw(_shrink_mask), ("prep", "vesuvius", "{vraw}", "-o", "{out}/ink"),
                 r"mask\.png", 2, id="prep-vesuvius-mask-of-the-wrong-size"),
    pytest.param(_siim_raw(_truncate_dcm), ("prep", "siim-covid19", "{sraw}", "-o", "{out}/siim"),
                 r"1 unreadable DICOM file\(s\) found before decoding \(--skip-bad leaves them out\): "
                 r"{dcm}: truncated pixel data: \d+ of \d+ bytes$", 2, id="prep-siim-truncated-dicom"),
    pytest.param(_siim_raw(_text_in_dcm), ("prep", "siim-covid19", "{sraw}", "-o", "{out}/siim"),
                 r"{dcm}: not a DICOM file", 2, id="prep-siim-text-in-a-dcm"),
    pytest.param(_siim_raw(_drop_boxes_column), ("prep", "siim-covid19", "{sraw}", "-o", "{out}/siim"),
                 r"{sraw}/train_image_level\.csv: missing column\(s\) boxes", 2,
                 id="prep-siim-image-csv-without-boxes-column"),
    pytest.param(_siim_raw(_delete_dcm), ("prep", "siim-covid19", "{sraw}", "-o", "{out}/siim"),
                 r"{sraw}/train_image_level\.csv: id '{image}_image' has no DICOM file train/{study}/\*/{image}\.dcm",
                 2, id="prep-siim-listed-image-without-dicom"),
    pytest.param(_siim_raw(_study_with_two_classes), ("prep", "siim-covid19", "{sraw}", "-o", "{out}/siim"),
                 r"{sraw}/train_study_level\.csv: id '{study}_study' has 2 classes marked", 2,
                 id="prep-siim-study-with-two-classes"),
    pytest.param(_siim_raw(lambda raw, image, ctx: None),
                 ("prep", "siim-covid19", "{sraw}", "-o", "{out}/siim", "--bits", "12"),
                 r"--bits 12: expected 8 or 16", 2, id="prep-siim-bits-not-8-or-16"),
    pytest.param(_truncated_checkpoint, ("tta", "{bad}", "-o", "{out}/test.parquet", "--workers", "0"),
                 r"{ckpt}: not a readable torch checkpoint", 2, id="tta-truncated-checkpoint"),
    # ---- ensemble
    pytest.param(_renamed_id, ("ensemble", "{oof}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{bad}: ids differ from {oof} \(2 not shared, e\.g\. 'renamed\.jpg'\)", 2,
                 id="ensemble-mismatched-ids"),
    pytest.param(demo_files, ("ensemble", "{oof}", "{test}", "-o", "{out}/blend.parquet"),
                 r"{test}: kind 'test' differs from 'oof' of {oof}", 2, id="ensemble-oof-mixed-with-test"),
    pytest.param(_nan_probs, ("ensemble", "{oof}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{bad}: NaN or inf in probs for id '{bad_id}'", 2, id="ensemble-nan-probs"),
    pytest.param(_empty_predictions, ("ensemble", "{oof}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{bad}: prediction file has no rows", 2, id="ensemble-empty-prediction-file"),
    pytest.param(_oof_twice, ("ensemble", "{oof}", "{oof_b}", "-o", "{out}/blend.parquet", "--weights", "1,2,3"),
                 r"--weights 1,2,3: 3 weight\(s\) for 2 input file\(s\)", 2, id="ensemble-wrong-weights-count"),
    pytest.param(_oof_twice, ("ensemble", "{oof}", "{oof_b}", "-o", "{out}/blend.parquet", "--method", "median"),
                 r"--method median: unknown ensemble method; choose one of: mean", 2, id="ensemble-unknown-method"),
    # ---- stack
    pytest.param(_oof_twice, ("stack", "{oof}", "{oof_b}", "--test", "{test}", "-o", "{out}/stack.parquet"),
                 r"got 2 OOF file\(s\) and 1 test file\(s\)", 2, id="stack-oof-test-count-mismatch"),
    pytest.param(demo_files, ("stack", "{test}", "--test", "{test}", "-o", "{out}/stack.parquet"),
                 r"got 0 OOF file\(s\) and 2 test file\(s\)", 2, id="stack-test-given-as-oof"),
    # ---- tune-threshold
    pytest.param(demo_files, ("tune-threshold", "{test}", "-o", "{out}/thresholds.json"),
                 r"{test}: holds test predictions, expected oof", 2, id="tune-threshold-on-test-predictions"),
    # ---- submit
    pytest.param(demo_files, ("submit", "kaggle-nope", "{test}", "-o", "{out}/submission.csv"),
                 r"unknown competition 'kaggle-nope'", 2, id="submit-unknown-competition"),
    pytest.param(_sample(lambda ls: [*ls, "9999.jpg,0"]),
                 ("submit", "demo", "{test}", "-o", "{out}/submission.csv", "--sample", "{bad}"),
                 r"{bad}: 1 id\(s\) of the sample have no prediction, e\.g\. '9999\.jpg'", 2,
                 id="submit-sample-with-extra-id"),
    pytest.param(_sample(lambda ls: ls[:-1]),
                 ("submit", "demo", "{test}", "-o", "{out}/submission.csv", "--sample", "{bad}"),
                 r"{bad}: 1 predicted id\(s\) are not in the sample, e\.g\. '{last_id}'", 2,
                 id="submit-sample-missing-an-id"),
    pytest.param(demo_files, ("submit", "demo", "{oof}", "-o", "{out}/submission.csv", "--sample", "{sample}"),
                 r"{oof}: holds oof predictions of task cls; expected test predictions", 2,
                 id="submit-oof-instead-of-test"),
    pytest.param(_sample(lambda ls: [ln.split(",")[0] for ln in ls]),
                 ("submit", "demo", "{test}", "-o", "{out}/submission.csv", "--sample", "{bad}"),
                 r"{bad}: sample has columns \['image_id'\], submission has \['image_id', 'label'\]", 2,
                 id="submit-sample-without-label-column"),
    pytest.param(demo_files, ("submit", "demo", "{test}", "-o", "{out}/submission.csv", "--thresholds", "{oof}"),
                 r"{oof}: not valid JSON", 2, id="submit-thresholds-not-json"),
]


# ---- hostile input (issue 19): ids are COMMAND-CAUSE-what, the cause being the root cause it exercises
# (A malformed content, C `-o -` with --json, D an output that is an input or read through one, F values out of
# range, H a failed command writes nothing, I escapes from the data root, J names, K misleading lines, S stack
# inputs made differently). Bad files come from tests/commands/bad_files.py; `test_root_causes_cover_commands`
# checks every cause reaches every command it applies to.

W0 = ("--workers", "0")
DEMO = bf.demo
NOT_NUMBERS = "expected a list of class probabilities"

CASES += [
    # ---- A: malformed content
    pytest.param(bf.edited("oof", frame=bf.probs_each(lambda n: 0.5)), ("ensemble", "{oof}", "{bad}", "-o",
                 "{out}/blend.parquet"), r"{bad}: probs for id '.*' is 0\.5, " + NOT_NUMBERS, 2,
                 id="ensemble-A-probs-scalars"),
    pytest.param(bf.edited("oof", frame=bf.probs_each(lambda n: [])), ("tune-threshold", "{bad}", "-o",
                 "{out}/thr.json"), r"{bad}: probs for id '.*' has 0 value\(s\), expected the 5 classes", 2,
                 id="tune-threshold-A-probs-empty-lists"),
    pytest.param(bf.edited("test", frame=bf.probs_each(lambda n: "0.2")), ("submit", "demo", "{bad}", "-o",
                 "{out}/sub.csv"), r"{bad}: probs for id '.*' is '0\.2', " + NOT_NUMBERS, 2,
                 id="submit-A-probs-strings"),
    pytest.param(bf.edited("oof", frame=bf.probs_each(lambda n: 1)), ("stack", "{bad}", "--test", "{test}", "-o",
                 "{out}/stack.parquet"), r"{bad}: probs for id '.*' is 1, " + NOT_NUMBERS, 2,
                 id="stack-A-probs-scalars"),
    pytest.param(bf.edited("oof", frame=bf.probs_each(lambda n: ["a"] * n)), ("report", "{bad}", "-o",
                 "{out}/report"), r"{bad}: probs holds values that are not numbers", 2, id="report-A-probs-text"),
    pytest.param(bf.edited("test", frame=bf.probs_each(lambda n: None)), ("ensemble", "{test}", "{bad}", "-o",
                 "{out}/blend.parquet"), r"{bad}: probs for id '.*' is None, " + NOT_NUMBERS, 2,
                 id="ensemble-A-probs-null"),
    pytest.param(bf.edited("oof", meta=bf.raw_meta(b"{'kind': oof")), ("ensemble", "{oof}", "{bad}", "-o",
                 "{out}/blend.parquet"), r"{bad}: its kcomp metadata is not valid JSON", 2,
                 id="ensemble-A-metadata-not-json"),
    pytest.param(bf.edited("oof", meta=bf.set_meta(schema="predictions")), ("tune-threshold", "{bad}", "-o",
                 "{out}/thr.json"), r"{bad}: kcomp metadata 'schema' is 'predictions' \(str\)", 2,
                 id="tune-threshold-A-schema-a-string"),
    pytest.param(bf.edited("test", meta=bf.drop_meta("kind")), ("submit", "demo", "{bad}", "-o", "{out}/sub.csv"),
                 r"{bad}: predictions metadata lacks 'kind'", 2, id="submit-A-metadata-without-kind"),
    pytest.param(bf.edited("oof", meta=bf.drop_meta("kind")), ("stack", "{bad}", "--test", "{test}", "-o",
                 "{out}/stack.parquet"), r"{bad}: predictions metadata lacks 'kind'", 2,
                 id="stack-A-metadata-without-kind"),
    pytest.param(bf.edited("oof", meta=bf.drop_meta("task")), ("report", "{bad}", "-o", "{out}/report"),
                 r"{bad}: predictions metadata lacks 'task'", 2, id="report-A-metadata-without-task"),
    pytest.param(bf.edited("oof", meta=bf.set_meta(kind="val")), ("wbf", "{bad}", "-o", "{out}/fused.parquet"),
                 r"{bad}: predictions of kind 'val'; expected oof or test", 2, id="wbf-A-unknown-kind"),
    pytest.param(bf.edited("oof", meta=bf.set_meta(classes="disc,square")), ("ensemble", "{oof}", "{bad}", "-o",
                 "{out}/blend.parquet"), r"{bad}: predictions metadata 'classes' is 'disc,square' \(str\), expected "
                 r"list", 2, id="ensemble-A-classes-a-string"),
    pytest.param(bf.edited("index", meta=bf.raw_meta(b"[1, 2")), ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: its kcomp metadata is not valid JSON", 2, id="split-A-metadata-not-json"),
    pytest.param(bf.edited("index", meta=bf.raw_meta(b"[" * 100_000 + b"]" * 100_000)),
                 ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: its kcomp metadata is not valid JSON \(nested too deeply\)", 2,
                 id="split-A-metadata-nested-too-deeply"),
    pytest.param(bf.edited("folds", meta=bf.set_meta(schema=["folds", 1])),
                 ("train", "cls", "--folds", "{bad}", "-o", "{out}/run", *TRAIN_FAST),
                 r"{bad}: kcomp metadata 'schema' is \['folds', 1\] \(list\)", 2, id="train-A-schema-a-list"),
    pytest.param(bf.edited("folds", meta=bf.set_meta(root=5)), ("train", "cls", "--folds", "{bad}", "-o",
                 "{out}/run", *TRAIN_FAST), r"{bad}: folds metadata 'root' is 5 \(int\), expected str", 2,
                 id="train-A-root-not-a-string"),
    pytest.param(bf.edited("folds", meta=bf.set_meta(classes=[0, 1])), ("train", "cls", "--folds", "{bad}", "-o",
                 "{out}/run", *TRAIN_FAST), r"{bad}: folds metadata 'classes' holds a non-string item", 2,
                 id="train-A-classes-not-names"),
    pytest.param(bf.edited("folds", frame=bf.column("fold", lambda df: df["fold"].astype(str))),
                 ("train", "cls", "--folds", "{bad}", "-o", "{out}/run", *TRAIN_FAST),
                 r"{bad}: column fold has value '-?\d'; expected whole numbers", 2, id="train-A-fold-as-text"),
    pytest.param(bf.edited("folds", frame=bf.first_row("path", None)), ("train", "cls", "--folds", "{bad}", "-o",
                 "{out}/run", *TRAIN_FAST), r"{bad}: column path is empty for 1 row\(s\)", 2,
                 id="train-A-path-null"),
    pytest.param(bf.edited("folds", frame=bf.column("path", lambda df: range(7, 7 + len(df)))),
                 ("train", "cls", "--folds", "{bad}", "-o", "{out}/run", *TRAIN_FAST),
                 r"{bad}: column path has value 7; expected a file path", 2, id="train-A-paths-are-numbers"),
    pytest.param(bf.edited("index", frame=bf.column("label", lambda df: df["label"].astype(str))),
                 ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: column label has value '\d'; expected whole numbers", 2, id="split-A-labels-as-text"),
    pytest.param(bf.edited("folds", frame=bf.column("label", lambda df: df["label"].astype(str))),
                 ("train", "cls", "--folds", "{bad}", "-o", "{out}/run", *TRAIN_FAST),
                 r"{bad}: column label has value '\d'; expected whole numbers", 2, id="train-A-labels-as-text"),
    pytest.param(bf.edited("index", frame=bf.first_row("label", 2.5)), ("split", "{bad}", "-o",
                 "{out}/folds.parquet"), r"{bad}: column label has value 2\.5, not a whole number", 2,
                 id="split-A-fractional-label"),
    pytest.param(bf.edited("index", frame=bf.column("split", lambda df: [3] * len(df))),
                 ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: column split has value '3'; expected train or test", 2, id="split-A-split-a-number"),
    pytest.param(bf.directory(), ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--thresholds", "{bad}"),
                 r"{bad}: is a directory, expected a JSON file", 2, id="submit-A-thresholds-a-directory"),
    pytest.param(bf.json_file('{"schema": "thresholds", "task": "cls"}'),
                 ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--thresholds", "{bad}"),
                 r"{bad}: kcomp metadata 'schema' is 'thresholds' \(str\)", 2,
                 id="submit-A-thresholds-schema-a-string"),
    pytest.param(bf.json_file("[" * 10_000 + "]" * 10_000), ("submit", "demo", "{test}", "-o", "{out}/sub.csv",
                 "--thresholds", "{bad}"), r"{bad}: not valid JSON for kcomp: nested too deeply", 2,
                 id="submit-A-thresholds-nested-10000-deep"),
    pytest.param(bf.json_file('{"a": ' * 10_000 + "1" + "}" * 10_000),
                 ("report", "{bad}", "-o", "{out}/report"), r"{bad}: not valid JSON for kcomp: nested too deeply", 2,
                 id="report-A-thresholds-nested-10000-deep"),
    pytest.param(bf.json_file('["thresholds"]'), ("report", "{bad}", "-o", "{out}/report"),
                 r"{bad}: not a kcomp artifact \(no kcomp metadata\); expected thresholds", 2,
                 id="report-A-thresholds-a-list"),
    pytest.param(bf.thresholds(task="seg", classes={"Fish": {"threshold": 0.5, "curve": "up"}}),
                 ("report", "{bad}", "-o", "{out}/report"), r"{bad}: classes\.Fish\.curve is not a list of "
                 r"\[threshold, score\] points", 2, id="report-A-thresholds-curve-a-string"),
    pytest.param(bf.thresholds(task="seg", classes=["Fish"]), ("report", "{bad}", "-o", "{out}/report"),
                 r"{bad}: thresholds metadata 'classes' is \['Fish'\] \(list\), expected dict", 2,
                 id="report-A-thresholds-classes-a-list"),
    pytest.param(bf.seg_predictions("missing-map"), ("ensemble", "{good}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{npz}: has no map 'k1' \(a map_key of its predictions\)", 2, id="ensemble-A-maps-without-a-key"),
    pytest.param(bf.seg_predictions("truncated-npz"), ("ensemble", "{good}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{npz}: not a readable \.npz of maps \(truncated or corrupt\?\)", 2, id="ensemble-A-maps-truncated"),
    pytest.param(bf.seg_predictions("text-map"), ("ensemble", "{good}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{npz}: map 'k1' holds <U1, expected uint8", 2, id="ensemble-A-maps-of-text"),
    pytest.param(bf.seg_predictions("null-key"), ("ensemble", "{good}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{bad}: column map_key is empty for 1 row\(s\)", 2, id="ensemble-A-map-key-null"),
    pytest.param(bf.seg_predictions("zero-width"), ("ensemble", "{good}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{bad}: column width has value 0 for id 'b\.jpg'; image sizes are >= 1 pixel", 2,
                 id="ensemble-F-map-of-a-zero-width-image"),
    pytest.param(bf.seg_predictions("missing-map"), ("report", "{bad}", "-o", "{out}/r"),
                 r"{bad}: predictions lack the index metadata", 2, id="report-A-seg-predictions-without-index"),
    pytest.param(bf.run_copy(bf.other_architecture), ("oof", "{bad}", "-o", "{out}/oof.parquet", *W0),
                 r"{ckpt}: weights do not fit the model this run builds: Error\(s\) in loading state_dict", 2,
                 id="oof-A-best-pt-of-another-architecture"),
    pytest.param(bf.run_copy(bf.other_architecture), ("tta", "{bad}", "-o", "{out}/test.parquet", *W0),
                 r"{ckpt}: weights do not fit the model this run builds", 2,
                 id="tta-A-best-pt-of-another-architecture"),
    pytest.param(bf.run_copy(config=bf.drop_config("folds")), ("oof", "{bad}", "-o", "{out}/oof.parquet", *W0),
                 r"{bad}/config\.json: config 'folds' is None, expected a str", 2, id="oof-A-config-without-folds"),
    pytest.param(bf.run_copy(config=bf.set_config(batch_size="32")),
                 ("tta", "{bad}", "-o", "{out}/test.parquet", *W0),
                 r"{bad}/config\.json: config 'batch_size' is '32', expected a int >= 1", 2,
                 id="tta-A-config-batch-size-text"),
    pytest.param(bf.run_copy(config=lambda saved: {**saved, "config": "resnet18"}),
                 ("report", "{bad}", "-o", "{out}/report"),
                 r"{bad}/config\.json: run-config metadata 'config' is 'resnet18' \(str\), expected dict", 2,
                 id="report-A-config-not-an-object"),
    pytest.param(bf.run_copy(config=lambda saved: {k: v for k, v in saved.items() if k != "setup"}),
                 ("oof", "{bad}", "-o", "{out}/oof.parquet", *W0),
                 r"{bad}/config\.json: run-config metadata lacks 'setup'", 2, id="oof-A-config-without-setup"),
    pytest.param(bf.run_copy(), ("report", "{bad}/fold0", "-o", "{out}/report"),
                 r"{bad}/fold0: directory is not a run directory \(no config\.json\)", 2,
                 id="report-A-run-dir-without-config"),
    pytest.param(bf.run_copy(fold=False), ("report", "{bad}", "-o", "{out}/report"),
                 r"{bad}: no trained fold yet", 2, id="report-A-run-without-folds"),
    pytest.param(bf.out_dir_named("folds.parquet"), ("split", "{index}", "-o", "{out}/folds.parquet"),
                 r"-o {out}/folds\.parquet: is a directory; give a file name to write", 2,
                 id="split-A-output-is-a-directory"),
    pytest.param(bf.out_dir_named("oof.parquet"), ("oof", "{run}", "-o", "{out}/oof.parquet", *W0),
                 r"-o {out}/oof\.parquet: is a directory", 2, id="oof-A-output-is-a-directory"),
    pytest.param(bf.out_dir_named("t"), ("tta", "{run}", "-o", "{out}/t", *W0),
                 r"-o {out}/t: is a directory", 2, id="tta-A-output-is-a-directory"),
    pytest.param(DEMO, ("wbf", "{oof}", "-o", "{out}"), r"-o {out}: is a directory", 2,
                 id="wbf-A-output-is-a-directory"),
    pytest.param(DEMO, ("ensemble", "{oof}", "{oof}", "-o", "{out}"), r"-o {out}: is a directory", 2,
                 id="ensemble-A-output-is-a-directory"),
    pytest.param(bf.out_dir_named("l2"), ("stack", "{oof}", "--test", "{test}", "-o", "{out}/s.parquet",
                 "--oof-output", "{out}/l2"), r"--oof-output {out}/l2: is a directory", 2,
                 id="stack-A-oof-output-is-a-directory"),
    pytest.param(DEMO, ("tune-threshold", "{oof}", "-o", "{out}"), r"-o {out}: is a directory", 2,
                 id="tune-threshold-A-output-is-a-directory"),
    pytest.param(bf.out_dir_named("sub.csv"), ("submit", "demo", "{test}", "-o", "{out}/sub.csv"),
                 r"-o {out}/sub\.csv: is a directory", 2, id="submit-A-output-is-a-directory"),
    pytest.param(bf.out_file_named("data"), ("prep", "demo", "-o", "{out}/data"),
                 r"-o {out}/data: exists and is not a directory; give a directory", 2,
                 id="prep-A-output-dir-is-a-file"),
    pytest.param(bf.out_file_named("run"), ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", *TRAIN_FAST),
                 r"-o {out}/run: exists and is not a directory", 2, id="train-A-output-dir-is-a-file"),
    pytest.param(bf.out_file_named("report"), ("report", "{oof}", "-o", "{out}/report"),
                 r"-o {out}/report: exists and is not a directory", 2, id="report-A-output-dir-is-a-file"),
    pytest.param(bf.out_file_named("look"), ("tta", "{run}", "-o", "{out}/test.parquet", "--preview", "{out}/look",
                 *W0), r"--preview {out}/look: exists and is not a directory", 2,
                 id="tta-A-preview-dir-is-a-file"),
    pytest.param(bf.out_file_named("notes"), ("split", "{index}", "-o", "{out}/notes/folds.parquet"),
                 r"-o {out}/notes/folds\.parquet: {out}/notes is not a directory", 2, id="split-A-output-under-a-file"),
    pytest.param(bf.out_file_named("notes"), ("prep", "demo", "-o", "{out}/notes/data"),
                 r"-o {out}/notes/data: {out}/notes is not a directory", 2, id="prep-A-output-under-a-file"),
    pytest.param(bf.out_file_named("notes"), ("submit", "demo", "{test}", "-o", "{out}/notes/a/sub.csv"),
                 r"-o {out}/notes/a/sub\.csv: {out}/notes is not a directory", 2, id="submit-A-output-under-a-file"),
    # ---- C: `-o -` and --json both on stdout: refused, whichever command
    *(pytest.param(DEMO, (*argv, "-o", "-", "--json"), r"-o - with --json: both would go to stdout", 2,
                   id=f"{argv[0]}-C-stdout-output-and-json")
      for argv in (("split", "{index}"), ("oof", "{run}", *W0), ("tta", "{run}", *W0), ("wbf", "{oof}"),
                   ("ensemble", "{oof}", "{oof}"), ("stack", "{oof}", "--test", "{test}"),
                   ("tune-threshold", "{oof}"), ("submit", "demo", "{test}"))),
    pytest.param(DEMO, ("stack", "{oof}", "--test", "{test}", "-o", "-", "--oof-output", "-"),
                 r"-o - and --oof-output -: only one output can go to stdout", 2, id="stack-C-two-outputs-on-stdout"),
    pytest.param(DEMO, ("prep", "demo", "-o", "-"), r"-o -: a directory cannot go to stdout", 2,
                 id="prep-C-directory-to-stdout"),
    pytest.param(DEMO, ("report", "{oof}", "-o", "-"), r"-o -: a directory cannot go to stdout", 2,
                 id="report-C-directory-to-stdout"),
    pytest.param(DEMO, ("train", "cls", "--folds", "{folds}", "-o", "-", *TRAIN_FAST),
                 r"-o -: a directory cannot go to stdout", 2, id="train-C-run-directory-to-stdout"),
    # ---- D: an output that is an input, or a file read through one
    pytest.param(bf.copies("index"), ("split", "{index_copy}", "-o", "{index_copy}"),
                 r"-o {index_copy}: is one of the inputs; write to another file", 2, id="split-D-output-is-the-index"),
    pytest.param(bf.linked("index", "hard"), ("split", "{link}", "-o", "{index}"),
                 r"-o {index}: is one of the inputs", 2, id="split-D-output-is-a-hard-link-of-the-input"),
    pytest.param(bf.linked("oof", "sym"), ("tune-threshold", "{oof}", "-o", "{link}"),
                 r"-o {link}: is one of the inputs", 2, id="tune-threshold-D-output-is-a-symlink-to-the-input"),
    pytest.param(DEMO, ("oof", "{run}", "-o", "{run}/config.json", *W0),
                 r"-o {run}/config\.json: lies inside the input run directory {run}", 2,
                 id="oof-D-output-is-the-runs-config"),
    pytest.param(DEMO, ("tta", "{run}", "-o", "{run}/fold0/best.pt", *W0),
                 r"-o {run}/fold0/best\.pt: lies inside the input run directory {run}", 2,
                 id="tta-D-output-is-a-checkpoint"),
    pytest.param(DEMO, ("oof", "{run}", "-o", "{folds}", *W0),
                 r"-o {folds}: is the folds file of run {run} \(read through an input\)", 2,
                 id="oof-D-output-is-the-folds-the-run-reads"),
    pytest.param(bf.copies("index"), ("tta", "{run}", "{index_copy}", "-o", "{index_copy}", *W0),
                 r"-o {index_copy}: is one of the inputs", 2, id="tta-D-output-is-the-index-argument"),
    pytest.param(bf.copies("test"), ("wbf", "{test_copy}", "-o", "{test_copy}"),
                 r"-o {test_copy}: is one of the inputs", 2, id="wbf-D-output-is-the-input"),
    pytest.param(bf.copies("oof"), ("ensemble", "{oof}", "{oof_copy}", "-o", "{oof_copy}"),
                 r"-o {oof_copy}: is one of the inputs", 2, id="ensemble-D-output-is-an-input"),
    pytest.param(DEMO, ("ensemble", "{oof}", "{oof}", "-o", "{folds}"),
                 r"-o {folds}: is the index of predictions {oof} \(read through an input\)", 2,
                 id="ensemble-D-output-is-the-index-of-the-predictions"),
    pytest.param(DEMO, ("stack", "{oof}", "--test", "{test}", "-o", "{out}/s.parquet", "--oof-output",
                 "{out}/s.parquet"), r"-o and --oof-output name the same file {out}/s\.parquet", 2,
                 id="stack-D-both-outputs-one-file"),
    pytest.param(bf.copies("oof"), ("stack", "{oof_copy}", "--test", "{test}", "-o", "{out}/s.parquet",
                 "--oof-output", "{oof_copy}"), r"--oof-output {oof_copy}: is one of the inputs", 2,
                 id="stack-D-oof-output-is-an-input"),
    pytest.param(bf.copies("oof"), ("tune-threshold", "{oof_copy}", "-o", "{oof_copy}"),
                 r"-o {oof_copy}: is one of the inputs", 2, id="tune-threshold-D-output-is-the-oof"),
    pytest.param(bf.copies("test"), ("submit", "demo", "{test_copy}", "-o", "{test_copy}"),
                 r"-o {test_copy}: is one of the inputs", 2, id="submit-D-output-is-the-predictions"),
    pytest.param(bf.thresholds(task="cls", method="argmax"),
                 ("submit", "demo", "{test}", "--thresholds", "{bad}", "-o", "{bad}"),
                 r"-o {bad}: is one of the inputs", 2, id="submit-D-output-is-the-thresholds"),
    pytest.param(DEMO, ("submit", "demo", "{test}", "-o", "{folds}"),
                 r"-o {folds}: is the index of predictions {test} \(read through an input\)", 2,
                 id="submit-D-output-is-the-index-of-the-predictions"),
    pytest.param(bf.copies("sample"), ("submit", "demo", "{test}", "--sample", "{sample_copy}", "-o",
                 "{sample_copy}"), r"-o {sample_copy}: is one of the inputs", 2, id="submit-D-output-is-the-sample"),
    pytest.param(DEMO, ("submit", "demo", "{test}", "-o", "{sample}"),
                 r"-o {sample}: is one of the inputs", 2, id="submit-D-output-is-the-sample-found-through-the-run"),
    pytest.param(DEMO, ("report", "{run}", "-o", "{run}/report"),
                 r"-o {run}/report: lies inside the input run directory {run}", 2, id="report-D-output-inside-a-run"),
    pytest.param(DEMO, ("report", "{run}", "{oof}", "-o", "{run}"),
                 r"-o {run}: lies inside the input run directory {run}", 2, id="report-D-output-is-the-input-run"),
    pytest.param(DEMO, ("train", "cls", "--folds", "{folds}", "-o", "{run}", "--weights", "{run}/fold0/best.pt",
                 *TRAIN_FAST), r"-o {run}: holds input {run}/fold0/best\.pt, which this command would write over", 2,
                 id="train-D-weights-inside-the-run"),
    pytest.param(DEMO, ("train", "cls", "--folds", "{folds}", "-o", "{data}", *TRAIN_FAST),
                 r"-o {data}: holds input {folds}, which this command would write over", 2,
                 id="train-D-folds-inside-the-run"),
    # ---- F: values out of range inside files
    pytest.param(bf.edited("test", frame=bf.probs_first(lambda p: p - 0.5)), ("submit", "demo", "{bad}", "-o",
                 "{out}/sub.csv"), r"{bad}: probs for id '.*' has -0\.\d+\.\.-?0\.\d+; probabilities lie in \[0, 1\]",
                 2,
                 id="submit-F-negative-probabilities"),
    pytest.param(bf.edited("oof", frame=bf.probs_first(lambda p: p - 0.5)), ("ensemble", "{oof}", "{bad}", "-o",
                 "{out}/blend.parquet"), r"{bad}: probs for id '.*' has -0\.\d+.*lie in \[0, 1\]", 2,
                 id="ensemble-F-negative-probabilities"),
    pytest.param(bf.edited("oof", frame=bf.probs_first(lambda p: -p)), ("tune-threshold", "{bad}", "-o",
                 "{out}/thr.json"), r"{bad}: probs for id '.*' has -.*lie in \[0, 1\]", 2,
                 id="tune-threshold-F-negative-probabilities"),
    pytest.param(bf.edited("test", frame=bf.probs_first(lambda p: p * 9)), ("stack", "{oof}", "--test", "{bad}",
                 "-o", "{out}/s.parquet"), r"{bad}: probs for id '.*' has .*lie in \[0, 1\]", 2,
                 id="stack-F-probabilities-above-1"),
    pytest.param(bf.edited("oof", frame=bf.probs_first(lambda p: p * 9)), ("report", "{bad}", "-o", "{out}/r"),
                 r"{bad}: probs for id '.*' has .*lie in \[0, 1\]", 2, id="report-F-probabilities-above-1"),
    pytest.param(bf.edited("test", frame=bf.probs_each(lambda n: [1 / 3] * 3)), ("submit", "demo", "{bad}", "-o",
                 "{out}/sub.csv"), r"{bad}: probs for id '.*' has 3 value\(s\), expected the 5 classes in its metadata",
                 2, id="submit-F-fewer-probabilities-than-classes"),
    pytest.param(bf.edited("oof", frame=bf.probs_each(lambda n: [1 / 6] * 6)), ("tune-threshold", "{bad}", "-o",
                 "{out}/thr.json"), r"{bad}: probs for id '.*' has 6 value\(s\), expected the 5 classes", 2,
                 id="tune-threshold-F-more-probabilities-than-classes"),
    pytest.param(bf.edited("test", frame=bf.probs_each(lambda n: [0.5, 0.5])), ("stack", "{oof}", "--test",
                 "{bad}", "-o", "{out}/s.parquet"), r"{bad}: probs for id '.*' has 2 value\(s\), expected the 5", 2,
                 id="stack-F-probability-width-differs-from-classes"),
    pytest.param(bf.edited("oof", frame=bf.first_row("id", None)), ("ensemble", "{oof}", "{bad}", "-o",
                 "{out}/blend.parquet"), r"{bad}: column id is empty for 1 row\(s\)", 2, id="ensemble-F-null-id"),
    pytest.param(bf.run_copy(bf.nan_weights), ("oof", "{bad}", "-o", "{out}/oof.parquet", *W0),
                 r"{ckpt}: weights hold NaN or inf \(first in .*\): training diverged", 2,
                 id="oof-F-checkpoint-with-nan-weights"),
    pytest.param(bf.run_copy(bf.nan_weights), ("tta", "{bad}", "-o", "{out}/test.parquet", *W0),
                 r"{ckpt}: weights hold NaN or inf", 2, id="tta-F-checkpoint-with-nan-weights"),
    pytest.param(bf.det_predictions({"score": 1.7}), ("wbf", "{bad}", "-o", "{out}/fused.parquet"),
                 r"{bad}: id 'a': box \[1, 2, 30, 40, 1\.7, 0\] has a score outside \[0, 1\]", 2,
                 id="wbf-F-box-score-above-1"),
    pytest.param(bf.det_predictions({"label": 3}), ("wbf", "{bad}", "-o", "{out}/fused.parquet"),
                 r"{bad}: id 'a': box .* has label outside the classes 0\.\.0", 2, id="wbf-F-box-label-unknown"),
    pytest.param(bf.det_predictions({"score": -0.2}), ("report", "{bad}", "-o", "{out}/r"),
                 r"{bad}: id 'a': box .* has a score outside \[0, 1\]", 2, id="report-F-box-score-negative"),
    pytest.param(bf.det_predictions({"x2": float("inf")}), ("submit", "siim-covid19", "{bad}", "-o",
                 "{out}/sub.csv"), r"{bad}: id 'a': box .* has NaN or inf", 2, id="submit-F-box-infinite"),
    pytest.param(bf.det_predictions(height=0), ("wbf", "{bad}", "-o", "{out}/fused.parquet"),
                 r"{bad}: column height has value 0 for id 'a'; image sizes are >= 1 pixel", 2,
                 id="wbf-F-zero-image-height"),
    pytest.param(bf.det_predictions({"label": 0.5}, kind="oof"), ("tune-threshold", "{bad}", "-o",
                 "{out}/thr.json"), r"{bad}: box labels must be class indices \(whole numbers\)", 2,
                 id="tune-threshold-F-box-label-fractional"),
    pytest.param(bf.edited("index", frame=bf.first_row("width", 0)), ("split", "{bad}", "-o",
                 "{out}/folds.parquet"), r"{bad}: column width has value 0 below 1 \(id '.*'\)", 2,
                 id="split-F-zero-image-width"),
    pytest.param(bf.edited("folds", frame=bf.first_row("height", -5)), ("train", "cls", "--folds", "{bad}", "-o",
                 "{out}/run", *TRAIN_FAST), r"{bad}: column height has value -5 below 1", 2,
                 id="train-F-negative-image-height"),
    pytest.param(bf.edited("index", frame=bf.first_row("id", None)), ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: column id is empty for 1 row\(s\)", 2, id="split-F-null-id"),
    pytest.param(bf.edited("folds", frame=bf.first_row("id", None)), ("train", "cls", "--folds", "{bad}", "-o",
                 "{out}/run", *TRAIN_FAST), r"{bad}: column id is empty for 1 row\(s\)", 2, id="train-F-null-id"),
    pytest.param(bf.edited("index", frame=bf.first_row("label", 99)), ("split", "{bad}", "-o",
                 "{out}/folds.parquet"), r"{bad}: column label has value 99 outside 0\.\.4", 2,
                 id="split-F-label-outside-the-classes"),
    pytest.param(bf.json_file('{"schema": {"name": "thresholds", "version": 1}, "task": "cls", "score": NaN}'),
                 ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--thresholds", "{bad}"),
                 r"{bad}: holds NaN, which is not JSON", 2, id="submit-F-nan-in-thresholds"),
    pytest.param(bf.json_file('{"schema": {"name": "thresholds", "version": 1}, "task": "ink", "threshold": '
                              'Infinity}'), ("report", "{bad}", "-o", "{out}/r"),
                 r"{bad}: holds Infinity, which is not JSON", 2, id="report-F-infinity-in-thresholds"),
    pytest.param(bf.thresholds(task="cls", classes={"disc": {"threshold": 1.5}}),
                 ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--thresholds", "{bad}"),
                 r"{bad}: classes\.disc\.threshold is 1\.5, expected a number in \[0, 1\]", 2,
                 id="submit-F-threshold-above-1"),
    pytest.param(bf.thresholds(task="ink", threshold=0.5, min_size=-3), ("report", "{bad}", "-o", "{out}/r"),
                 r"{bad}: min_size is -3, expected a whole number >= 0", 2, id="report-F-negative-min-size"),
    pytest.param(bf.thresholds(task="seg", classes={}), ("submit", "demo", "{test}", "-o", "{out}/sub.csv",
                 "--thresholds", "{bad}"), r"{bad}: holds thresholds for task seg; demo submits cls predictions", 2,
                 id="submit-F-thresholds-of-another-task"),
    # ---- H: a command that fails writes nothing (validated before the first file)
    pytest.param(DEMO, ("prep", "demo", "-o", "{out}/data", "--size", "0"),
                 r"--size 0: must be at least 16", 2, id="prep-H-demo-size-0"),
    pytest.param(raw_copy(), ("prep", "cassava", "{raw}", "-o", "{out}/data", "--size", "8"),
                 r"--size 8: must be at least 16", 2, id="prep-H-cassava-size-8"),
    pytest.param(DEMO, ("tta", "{run}", "-o", "{out}/test.parquet", "--preview", "{out}/look", *W0),
                 r"--preview does not apply to task cls \(only to seg, ink\)", 2, id="tta-H-preview-of-a-cls-run"),
    pytest.param(bf.edited("oof", meta=bf.drop_meta("kind")), ("report", "{run}", "{oof}", "{bad}", "-o",
                 "{out}/report"), r"{bad}: predictions metadata lacks 'kind'", 2, id="report-H-third-input-bad"),
    pytest.param(bf.edited("oof", frame=bf.probs_first(lambda p: p * 9)), ("report", "{oof}", "{bad}", "-o",
                 "{out}"), r"{bad}: probs for id", 2, id="report-H-bad-input-into-an-existing-dir"),
    # ---- I: paths cannot leave the data root
    pytest.param(bf.escaping_folds("symlink"), ("train", "cls", "--folds", "{bad}", "-o", "{out}/run", *TRAIN_FAST),
                 r"{bad}: path 'images/\d\.png' escapes the data root", 2, id="train-I-symlink-out-of-the-root"),
    pytest.param(bf.escaping_folds("symlink"), ("oof", "{run}", "-o", "{out}/oof.parquet", *W0),
                 r"{bad}: path 'images/\d\.png' escapes the data root", 2, id="oof-I-symlink-out-of-the-root"),
    pytest.param(bf.escaping_folds("symlink"), ("tta", "{run}", "{bad}", "-o", "{out}/test.parquet", *W0),
                 r"{bad}: path 'images/1\d\.png' escapes the data root", 2, id="tta-I-symlink-out-of-the-root"),
    pytest.param(bf.escaping_folds("dotdot"), ("train", "cls", "--folds", "{bad}", "-o", "{out}/run", *TRAIN_FAST),
                 r"{bad}: path '\.\./outside/\d\.png' escapes the data root", 2, id="train-I-dotdot-out-of-the-root"),
    pytest.param(bf.escaping_folds("absolute"), ("train", "cls", "--folds", "{bad}", "-o", "{out}/run",
                 *TRAIN_FAST), r"{bad}: absolute path '{outside}/\d\.png' not allowed in an index", 2,
                 id="train-I-allow-absolute-is-no-escape-hatch"),
    pytest.param(bf.escaping_folds("absolute"), ("tta", "{run}", "{bad}", "-o", "{out}/test.parquet", *W0),
                 r"{bad}: absolute path '{outside}/1\d\.png' not allowed", 2, id="tta-I-allow-absolute-index"),
    # ---- J: names the filesystem cannot hold are refused before any work
    pytest.param(DEMO, ("split", "{index}", "-o", "{out}/" + "f" * 256), r"a name longer than 255 bytes \(256\)", 2,
                 id="split-J-file-name-of-256-bytes"),
    pytest.param(DEMO, ("report", "{oof}", "-o", "{out}/" + "r" * 300 + "/x"), r"a name longer than 255 bytes", 2,
                 id="report-J-directory-name-of-300-bytes"),
    pytest.param(DEMO, ("train", "cls", "--folds", "{folds}", "-o", "{out}/" + "é" * 128, *TRAIN_FAST),
                 r"a name longer than 255 bytes \(256\)", 2, id="train-J-run-name-of-256-utf8-bytes"),
    pytest.param(DEMO, ("submit", "demo", "{test}", "-o", "{out}/" + "s" * 252 + ".csv"),
                 r"a name longer than 255 bytes", 2, id="submit-J-file-name-of-256-bytes"),
    # ---- K: lines that say what is wrong
    pytest.param(bf.run_copy(bf.png_checkpoint), ("oof", "{bad}", "-o", "{out}/oof.parquet", *W0),
                 r"{ckpt}: not a readable torch checkpoint: not a file torch\.save wrote \(starts with b'\\x89PNG'\)",
                 2, id="oof-K-png-as-checkpoint"),
    pytest.param(bf.png_as("weights.pt"), ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", "--weights",
                 "{bad}", *TRAIN_FAST), r"{bad}: not a readable torch checkpoint: not a file torch\.save wrote", 2,
                 id="train-K-png-as-weights"),
    pytest.param(bf.edited("index", meta=lambda m: {**m, "schema": {"name": "index", "version": "1"}}),
                 ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: index schema version '1' is not a version number \(an integer >= 1\)$", 2,
                 id="split-K-schema-version-a-string"),
    pytest.param(bf.json_file('{"schema": {"name": "thresholds", "version": "1"}, "task": "cls"}'),
                 ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--thresholds", "{bad}"),
                 r"{bad}: thresholds schema version '1' is not a version number", 2,
                 id="submit-K-thresholds-version-a-string"),
    pytest.param(bf.newline_name(None), ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{shown}: no such file$", 2, id="split-K-missing-file-with-a-newline-in-its-name"),
    pytest.param(bf.newline_name("oof"), ("ensemble", "{oof}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{shown}: not a readable parquet file \(truncated or corrupt\?\)", 2,
                 id="ensemble-K-corrupt-file-with-a-newline-in-its-name"),
    pytest.param(bf.directory("index.parquet"), ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: is a directory, expected a parquet table", 2, id="split-K-directory-as-index"),
    pytest.param(bf.fifo("index.parquet"), ("split", "{bad}", "-o", "{out}/folds.parquet"),
                 r"{bad}: is a FIFO \(named pipe\), not a regular file", 2, id="split-K-fifo-as-index"),
    pytest.param(bf.directory("sample.csv"), ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--sample", "{bad}"),
                 r"{bad}: is a directory, expected a CSV file", 2, id="submit-K-directory-as-sample"),
    pytest.param(bf.fifo("thresholds.json"), ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--thresholds",
                 "{bad}"), r"{bad}: is a FIFO \(named pipe\), not a regular file", 2, id="submit-K-fifo-as-thresholds"),
    pytest.param(bf.directory("folds.parquet"), ("train", "cls", "--folds", "{bad}", "-o", "{out}/run",
                 *TRAIN_FAST), r"{bad}: is a directory, expected a parquet table", 2, id="train-K-directory-as-folds"),
    pytest.param(bf.fifo("oof.parquet"), ("tune-threshold", "{bad}", "-o", "{out}/thr.json"),
                 r"{bad}: is a FIFO \(named pipe\)", 2, id="tune-threshold-K-fifo-as-oof"),
    pytest.param(bf.directory("b.parquet"), ("ensemble", "{oof}", "{bad}", "-o", "{out}/blend.parquet"),
                 r"{bad}: is a directory, expected a parquet table", 2, id="ensemble-K-directory-as-predictions"),
    pytest.param(DEMO, ("oof", "{oof}", "-o", "{out}/o.parquet", *W0),
                 r"{oof}: is a regular file, not a run directory", 2, id="oof-K-file-as-run"),
    pytest.param(bf.fifo("run"), ("tta", "{bad}", "-o", "{out}/t.parquet", *W0),
                 r"{bad}: is a FIFO \(named pipe\), not a run directory", 2, id="tta-K-fifo-as-run"),
    pytest.param(DEMO, ("prep", "cassava", "{oof}", "-o", "{out}/data"),
                 r"{oof}: is a regular file, not a raw directory", 2, id="prep-K-file-as-raw-dir"),
    pytest.param(bf.edited("folds", frame=bf.column("boxes", lambda df: [[{"x1": "a", "y1": 0, "x2": 1, "y2": 1,
                 "label": "opacity"}]] * len(df)), meta=bf.set_meta(task="det")),
                 ("train", "det", "--folds", "{bad}", "-o", "{out}/run", *TRAIN_FAST),
                 r"{bad}: column boxes for id '.*' holds .*, expected \{x1, y1, x2, y2, label\} with finite", 2,
                 id="train-A-index-boxes-with-text-coordinates"),
    pytest.param(bf.fifo("p.parquet"), ("report", "{bad}", "-o", "{out}/r"), r"{bad}: is a FIFO", 2,
                 id="report-K-fifo-as-predictions"),
    # ---- S: stack learns on OOF and applies to test predictions made the same way
    pytest.param(bf.edited("test", meta=bf.set_meta(tta=2)), ("stack", "{oof}", "--test", "{bad}", "-o",
                 "{out}/s.parquet"), r"{oof}: made with tta 1, but its test predictions {bad} with tta 2", 2,
                 id="stack-S-tta-differs"),
    pytest.param(bf.edited("test", meta=bf.set_meta(checkpoints="best+last")), ("stack", "{oof}", "--test", "{bad}",
                 "-o", "{out}/s.parquet"), r"{oof}: made with checkpoints 'best', but its test predictions {bad} with "
                 r"checkpoints 'best\+last'", 2, id="stack-S-checkpoints-differ"),
    pytest.param(bf.edited("test", meta=bf.set_meta(out_size=[64, 64])), ("stack", "{oof}", "--test", "{bad}", "-o",
                 "{out}/s.parquet"), r"{oof}: made with out_size None, but its test predictions {bad} with out_size "
                 r"\[64, 64\]", 2, id="stack-S-out-size-differs"),
    pytest.param(bf.edited("test", meta=bf.set_meta(classes=["a", "b", "c", "d", "e"])), ("stack", "{oof}",
                 "--test", "{bad}", "-o", "{out}/s.parquet"), r"{oof}: task cls with classes \[.*\] differs from its "
                 r"test predictions {bad}", 2, id="stack-S-classes-differ"),
]


# clean, pseudo and pack (written after the table above): the same root causes through their inputs and outputs
PACK = ("--comp", "demo")
CASES += [
    # ---- A
    pytest.param(bf.edited("oof", frame=bf.probs_each(lambda n: 0.5)), ("clean", "{bad}", "-o",
                 "{out}/issues.parquet"), r"{bad}: probs for id '.*' is 0\.5, " + NOT_NUMBERS, 2,
                 id="clean-A-probs-scalars"),
    pytest.param(bf.out_dir_named("issues.parquet"), ("clean", "{oof}", "-o", "{out}/issues.parquet"),
                 r"-o {out}/issues\.parquet: is a directory; give a file name to write", 2,
                 id="clean-A-output-is-a-directory"),
    pytest.param(bf.edited("test", meta=bf.drop_meta("kind")), ("pseudo", "{bad}", "-o", "{out}/pseudo.parquet"),
                 r"{bad}: predictions metadata lacks 'kind'", 2, id="pseudo-A-metadata-without-kind"),
    pytest.param(bf.out_dir_named("pseudo.parquet"), ("pseudo", "{test}", "-o", "{out}/pseudo.parquet"),
                 r"-o {out}/pseudo\.parquet: is a directory", 2, id="pseudo-A-output-is-a-directory"),
    pytest.param(bf.edited("test", meta=bf.drop_meta("kind")), ("pack", "{bad}", *PACK, "-o", "{out}/pkg"),
                 r"{bad}: predictions metadata lacks 'kind'", 2, id="pack-A-metadata-without-kind"),
    pytest.param(bf.out_file_named("pkg"), ("pack", "{test}", *PACK, "-o", "{out}/pkg"),
                 r"-o {out}/pkg: exists and is not a directory", 2, id="pack-A-output-dir-is-a-file"),
    # ---- C
    *(pytest.param(DEMO, (*argv, "-o", "-", "--json"), r"-o - with --json: both would go to stdout", 2,
                   id=f"{argv[0]}-C-stdout-output-and-json") for argv in (("clean", "{oof}"), ("pseudo", "{test}"))),
    pytest.param(DEMO, ("pack", "{test}", *PACK, "-o", "-"), r"-o -: a directory cannot go to stdout", 2,
                 id="pack-C-directory-to-stdout"),
    # ---- D
    pytest.param(bf.copies("oof"), ("clean", "{oof_copy}", "-o", "{oof_copy}"),
                 r"-o {oof_copy}: is one of the inputs", 2, id="clean-D-output-is-the-oof"),
    pytest.param(DEMO, ("clean", "{oof}", "-o", "{folds}"),
                 r"-o {folds}: is the index of predictions {oof} \(read through an input\)", 2,
                 id="clean-D-output-is-the-index-of-the-predictions"),
    pytest.param(bf.copies("test"), ("pseudo", "{test_copy}", "-o", "{test_copy}"),
                 r"-o {test_copy}: is one of the inputs", 2, id="pseudo-D-output-is-the-predictions"),
    pytest.param(bf.thresholds(task="seg", classes={}), ("pseudo", "{test}", "--thresholds", "{bad}", "-o", "{bad}"),
                 r"-o {bad}: is one of the inputs", 2, id="pseudo-D-output-is-the-thresholds"),
    pytest.param(DEMO, ("pseudo", "{test}", "-o", "{folds}"),
                 r"-o {folds}: is the index of predictions {test} \(read through an input\)", 2,
                 id="pseudo-D-output-is-the-index-of-the-predictions"),
    pytest.param(DEMO, ("pack", "{test}", "{run}", *PACK, "-o", "{run}/pkg"),
                 r"-o {run}/pkg: lies inside the input run directory {run}", 2, id="pack-D-output-inside-the-run"),
    pytest.param(DEMO, ("pack", "{test}", *PACK, "-o", "{run}/pkg"),
                 r"-o {run}/pkg: lies inside the input run directory {run}", 2,
                 id="pack-D-output-inside-the-run-the-predictions-name"),
    pytest.param(bf.copies("test"), ("pack", "{test_copy}", *PACK, "-o", "{tmp}"),
                 r"-o {tmp}: holds input {test_copy}, which this command would write over", 2,
                 id="pack-D-output-holds-an-input"),
    # ---- F
    pytest.param(bf.edited("oof", frame=bf.probs_first(lambda p: p - 0.5)), ("clean", "{bad}", "-o",
                 "{out}/issues.parquet"), r"{bad}: probs for id '.*' has -0\.\d+\.\.-?0\.\d+; probabilities lie in",
                 2, id="clean-F-negative-probabilities"),
    pytest.param(bf.edited("test", frame=bf.probs_first(lambda p: p * 9)), ("pseudo", "{bad}", "-o",
                 "{out}/pseudo.parquet"), r"{bad}: probs for id '.*' has .*; probabilities lie in \[0, 1\]", 2,
                 id="pseudo-F-probabilities-above-1"),
    pytest.param(bf.edited("test", frame=bf.probs_first(lambda p: p[:2])), ("pack", "{bad}", *PACK, "-o",
                 "{out}/pkg"), r"{bad}: probs for id '.*' has 2 value\(s\), expected the 5 classes", 2,
                 id="pack-F-fewer-probabilities-than-classes"),
    # ---- H: an earlier package at -o ({out}/pkg/MANIFEST.json, see _existing_output) survives a failed pack
    pytest.param(bf.edited("test", frame=bf.first_row("id", None)), ("pack", "{bad}", *PACK, "-o", "{out}/pkg"),
                 r"{bad}: column id is empty for 1 row\(s\)", 2, id="pack-H-bad-input-over-an-earlier-package"),
    # ---- J
    pytest.param(DEMO, ("clean", "{oof}", "-o", "{out}/" + "c" * 256), r"a name longer than 255 bytes \(256\)", 2,
                 id="clean-J-file-name-of-256-bytes"),
    pytest.param(DEMO, ("pseudo", "{test}", "-o", "{out}/" + "p" * 252 + ".pqt"), r"a name longer than 255 bytes", 2,
                 id="pseudo-J-file-name-of-256-bytes"),
    pytest.param(DEMO, ("pack", "{test}", *PACK, "-o", "{out}/" + "é" * 128), r"a name longer than 255 bytes", 2,
                 id="pack-J-directory-name-of-256-utf8-bytes"),
    # ---- K
    pytest.param(bf.directory("oof.parquet"), ("clean", "{bad}", "-o", "{out}/issues.parquet"),
                 r"{bad}: is a directory, expected a parquet table", 2, id="clean-K-directory-as-oof"),
    pytest.param(bf.fifo("test.parquet"), ("pseudo", "{bad}", "-o", "{out}/pseudo.parquet"),
                 r"{bad}: is a FIFO \(named pipe\), not a regular file", 2, id="pseudo-K-fifo-as-predictions"),
    pytest.param(bf.fifo("test.parquet"), ("pack", "{bad}", *PACK, "-o", "{out}/pkg"),
                 r"{bad}: is a FIFO \(named pipe\), not a regular file", 2, id="pack-K-fifo-as-predictions"),
]

# ---------------------------------------------------------------------------------------------------- checking


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (symlinks not followed) with its type, and for files the inode, size, mtime and (for
    small files) a sha256 of the content."""
    snap: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < (1 << 22) else None
            snap[str(p.relative_to(root))] = ("file", st.st_ino, st.st_size, st.st_mtime_ns, digest)
        elif stat.S_ISLNK(st.st_mode):
            snap[str(p.relative_to(root))] = ("link", os.readlink(p))
        else:
            snap[str(p.relative_to(root))] = ("dir" if stat.S_ISDIR(st.st_mode) else "special", stat.S_IFMT(st.st_mode))
    return snap


def _snapshots(roots: list[Path]) -> dict[str, dict[str, tuple]]:
    return {str(r): _snapshot(r) for r in roots}


def _existing_output(argv: list[str], out: Path) -> Path | None:
    """Put known bytes where the command would write, as a previous successful run would have left them (only where
    nothing is yet: an existing target is the row's point, e.g. a directory or an input)."""
    if "-o" not in argv:
        return None
    target = Path(argv[argv.index("-o") + 1])
    if argv[0] == "prep":  # -o is the data dir
        target = target / "index.parquet"
    elif argv[0] == "pack":  # -o is the package dir: an earlier package there must survive a failed pack
        target = target / "MANIFEST.json"
    elif argv[0] == "report":  # -o is the report dir
        target = target / "index.html"
    elif argv[0] == "train":  # -o is the run dir: a user's dir, or (resume case) an existing run left as it is
        if os.path.lexists(target):
            return None
        target = target / "notes.txt"
    ancestors = [a for a in target.parents if os.path.lexists(a)]
    if (not target.is_relative_to(out) or os.path.lexists(target) or not ancestors[0].is_dir()
            or any(len(os.fsencode(part)) > 255 for part in target.parts)):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(OLD_BYTES)
    os.utime(target, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return target


def _fill(template: str, names: dict[str, Any], escape: bool) -> str:
    out = template
    for key in sorted(names, key=len, reverse=True):
        value = str(names[key])
        out = out.replace("{" + key + "}", re.escape(value) if escape else value)
    assert not re.search(r"\{[a-z_]+\}", out), f"unfilled placeholder in {template!r}"
    return out


COMMANDS = ("prep", "split", "train", "oof", "tta", "wbf", "ensemble", "stack", "tune-threshold", "submit", "report",
            "clean", "pseudo", "pack")
# issue 19's root causes -> the commands each applies to (B, special files as -o, is tests/commands/test_outputs.py).
# I (paths leaving the data root) is for the commands that open an index's files; clean, pseudo and pack open none
# (pseudo copies the relative paths, which `train --extra` resolves in the root).
CAUSES = {
    "A": COMMANDS,
    "C": ("prep", "split", "train", "oof", "tta", "wbf", "ensemble", "stack", "tune-threshold", "submit", "report",
          "clean", "pseudo", "pack"),
    "D": ("split", "train", "oof", "tta", "wbf", "ensemble", "stack", "tune-threshold", "submit", "report", "clean",
          "pseudo", "pack"),
    "F": ("split", "train", "oof", "tta", "wbf", "ensemble", "stack", "tune-threshold", "submit", "report", "clean",
          "pseudo", "pack"),
    "H": ("prep", "tta", "report", "pack"),
    "I": ("train", "oof", "tta"),
    "J": ("split", "train", "submit", "report", "clean", "pseudo", "pack"),
    "K": ("split", "train", "oof", "ensemble", "tune-threshold", "submit", "report", "clean", "pseudo", "pack"),
    "S": ("stack",),
}


def test_bad_input_table_has_at_least_150_rows() -> None:
    assert len(CASES) >= 150, len(CASES)
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    for command in COMMANDS:
        assert any(c.values[1][0] == command for c in CASES), command


def test_root_causes_cover_commands() -> None:
    """Every root cause of issue 19 has a row for every command it applies to (ids COMMAND-CAUSE-what)."""
    seen = {(m.group(1), m.group(2)) for c in CASES if (m := re.match(r"([a-z-]+?)-([A-Z])-", c.id))}
    for c in CASES:
        if re.match(r"([a-z-]+?)-([A-Z])-", c.id):
            assert c.id.startswith(c.values[1][0] + "-"), f"{c.id} runs {c.values[1][0]}"
    missing = [f"{cmd}-{cause}" for cause, cmds in CAUSES.items() for cmd in cmds if (cmd, cause) not in seen]
    assert not missing, missing


@pytest.mark.parametrize(("setup", "argv", "pattern", "code"), CASES)
def test_bad_input(setup: Setup, argv: tuple[str, ...], pattern: str, code: int, tmp_path: Path,
                   request: pytest.FixtureRequest) -> None:
    work, out = tmp_path / "in", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    ctx = Ctx(work, out, request)
    setup(ctx)
    names = {"tmp": work, "out": out, **ctx.names}
    args = [_fill(a, names, escape=False) for a in argv]
    existing = _existing_output(args, out)
    roots = [out, work, *([ctx.demo["root"]] if ctx.uses_demo else [])]  # outputs, the row's inputs, the demo's
    before = _snapshots(roots)

    r = run_cli(*args, cwd=work)

    assert r.code == code, f"exit {r.code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{r.stderr}"
    assert [ln for ln in lines if ln.startswith("kcomp:")] == lines
    line = lines[0]
    assert line.startswith("kcomp: error: "), line
    assert re.search(_fill(pattern, names, escape=True), line), f"{line!r} does not match {pattern!r}"
    assert r.stdout == "", "nothing written, so no path printed"
    after = _snapshots(roots)
    for root in before:
        assert after[root] == before[root], f"a failed command changed or added files under {root}"
    if existing is not None:
        assert existing.read_bytes() == OLD_BYTES
        assert existing.stat().st_mtime_ns == OLD_MTIME_NS


# ------------------------------------------------------------------------------------------- around the table


def test_debug_flag_prints_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.parquet"
    r = run_cli("--debug", "split", missing, "-o", tmp_path / "folds.parquet")
    assert r.code == 2
    assert "Traceback (most recent call last)" in r.stderr
    assert "kcomp.errors.BadInput" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == f"kcomp: error: {missing}: no such file"
    assert r.last_error_line == f"kcomp: error: {missing}: no such file"
    assert not (tmp_path / "folds.parquet").exists()


_BOOM = """
import sys
import kcomp.data.split

def boom(*args, **kwargs):
    raise RuntimeError("simulated bug\\nsecond line")

kcomp.data.split.assign_folds = boom
from kcomp.commands.main import run
sys.argv = ["kcomp", *sys.argv[1:]]
run()
"""


@pytest.mark.internal_error
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_unexpected_failure_exits_1(demo_run: dict[str, Path], tmp_path: Path, debug: bool) -> None:
    out = tmp_path / "folds.parquet"
    flags = ["--debug"] if debug else []
    proc = subprocess.run([sys.executable, "-c", _BOOM, *flags, "split", str(demo_run["index"]), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "kcomp: internal error (RuntimeError): simulated bug" in proc.stderr
    assert ("Traceback" in proc.stderr) is debug
    if not debug:
        assert proc.stderr.splitlines() == ["kcomp: internal error (RuntimeError): simulated bug",
                                            "kcomp: re-run with --debug for the traceback"]
    assert ("re-run with --debug" in proc.stderr) is not debug
    assert proc.stdout == "" and not out.exists()


def test_prep_demo_prints_only_paths_on_stdout(tmp_path: Path) -> None:
    """No --quiet: logs and progress go to stderr, a pipe on stdout gets exactly the paths written."""
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "kcomp.commands.main", "prep", "demo", "-o", str(data)],
                          capture_output=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == f"{data / 'index.parquet'}\n"
    assert all(Path(p).is_file() for p in proc.stdout.decode().splitlines())
    assert proc.stderr, "the log went to stderr"
