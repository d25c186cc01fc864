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
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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

    @property
    def demo(self) -> dict[str, Path]:
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


# ---------------------------------------------------------------------------------------------------- checking


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root with its inode, size, mtime and (for small files) content hash."""
    snap: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < (1 << 22) else None
            snap[str(p.relative_to(root))] = ("file", st.st_ino, st.st_size, st.st_mtime_ns, digest)
        else:
            snap[str(p.relative_to(root))] = ("dir",)
    return snap


def _existing_output(argv: list[str]) -> Path | None:
    """Put known bytes where the command would write, as a previous successful run would have left them."""
    if "-o" not in argv:
        return None
    target = Path(argv[argv.index("-o") + 1])
    if argv[0] == "prep":  # -o is the data dir
        target = target / "index.parquet"
    elif argv[0] == "train":  # -o is the run dir: a user's dir, or (resume case) an existing run left as it is
        if target.exists():
            return None
        target = target / "notes.txt"
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


def test_bad_input_table_has_at_least_40_rows() -> None:
    assert len(CASES) >= 40, len(CASES)
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    for command in ("prep", "split", "train", "oof", "tta", "ensemble", "stack", "tune-threshold", "submit"):
        assert any(c.values[1][0] == command for c in CASES), command


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
    existing = _existing_output(args)
    before = _snapshot(out)

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
    assert _snapshot(out) == before, "a failed command changed or added files under the output dir"
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
