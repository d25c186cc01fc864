"""Artifact readers and writers at library level: round trips, and every malformed input as a one-line BadInput."""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kcomp
from kcomp.artifacts import (IndexTable, atomic_write, read_index, read_json, read_table, write_folds, write_index,
                             write_json, write_table)
from kcomp.artifacts.index import validate_index
from kcomp.errors import BadInput, EnvironmentFailure, KcompError

CLASSES = ["disc", "square", "ring"]


def _index_frame(n_train: int = 6, n_test: int = 2) -> pd.DataFrame:
    rows = [{"id": f"t{i}.jpg", "path": f"train_images/t{i}.jpg", "split": "train", "label": i % 3}
            for i in range(n_train)]
    rows += [{"id": f"s{i}.jpg", "path": f"test_images/s{i}.jpg", "split": "test", "label": -1} for i in range(n_test)]
    df = pd.DataFrame(rows)
    df["height"], df["width"] = 60, 80
    return df


def _make_data_dir(base: Path) -> tuple[Path, Path, pd.DataFrame]:
    """base/raw/{train,test}_images/* as the data root, base/index.parquet pointing into it."""
    df = _index_frame()
    raw = base / "raw"
    for p in df["path"]:
        (raw / p).parent.mkdir(parents=True, exist_ok=True)
        (raw / p).write_bytes(b"img " + p.encode())
    index = base / "index.parquet"
    write_index(df, index, root=raw, competition="demo", task="cls", classes=CLASSES)
    return raw, index, df


def _patch_kcomp_meta(path: Path, **changes: object) -> None:
    """Rewrite a kcomp parquet's metadata with pyarrow (as a newer kcomp or a hand edit would)."""
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"kcomp"])
    for key, value in changes.items():
        if key == "version":
            meta["schema"]["version"] = value
        else:
            meta[key] = value
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"kcomp": json.dumps(meta).encode()}),
                   path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _raises_bad_input(fn, *args, match: str, path: Path | str | None = None, **kwargs) -> BadInput:
    with pytest.raises(BadInput, match=match) as info:
        fn(*args, **kwargs)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value), "errors are printed as one line"
    if path is not None:
        assert str(path) in str(info.value)
    return info.value


# ---------------------------------------------------------------------------------------------------------- tables


def test_table_round_trip_keeps_data_and_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/kcomp", "split", "in dex.parquet", "-o", "f.parquet"])
    df = pd.DataFrame({"id": ["0001", "0002", "0003"], "n": [1, 2, 3], "x": [0.5, np.nan, 2.0],
                       "v": [[0.1, 0.9], [0.5, 0.5], [1.0, 0.0]]})
    path = tmp_path / "t.parquet"
    assert write_table(df, path, "metrics", fold=3, note="é") == str(path)
    back, meta = read_table(path, "metrics")
    pd.testing.assert_frame_equal(back[["id", "n", "x"]], df[["id", "n", "x"]])
    assert [list(v) for v in back["v"]] == [[0.1, 0.9], [0.5, 0.5], [1.0, 0.0]]
    assert back["id"].tolist() == ["0001", "0002", "0003"]
    assert meta["kcomp_version"] == kcomp.__version__
    assert meta["schema"] == {"name": "metrics", "version": 1}
    assert meta["command"] == "kcomp split 'in dex.parquet' -o f.parquet"
    assert meta["fold"] == 3 and meta["note"] == "é"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"], "no temp file left behind"


def test_table_of_another_schema_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "metrics.parquet"
    write_table(pd.DataFrame({"a": [1]}), path, "metrics")
    _raises_bad_input(read_table, path, "index", match=r"is a kcomp 'metrics' file, expected index", path=path)
    _raises_bad_input(read_table, path, ("index", "folds"), match=r"expected index or folds", path=path)


def test_plain_parquet_is_not_a_kcomp_artifact(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "label": [0, 1]}), path)
    _raises_bad_input(read_table, path, "index", match=r"not a kcomp artifact", path=path)


def test_truncated_parquet_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"x": np.arange(10_000)}), path, "metrics")
    _truncate(path)
    _raises_bad_input(read_table, path, "metrics", match=r"not a readable parquet file", path=path)


@pytest.mark.parametrize("content", [b"", b"id,label\na,1\n", b"PAR1garbagePAR1"], ids=["empty", "csv", "garbage"])
def test_non_parquet_bytes_are_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    _raises_bad_input(read_table, path, "index", match=r"not a readable parquet file", path=path)


def test_missing_table_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nope.parquet"
    _raises_bad_input(read_table, path, "index", match=r"no such file", path=path)


def test_schema_version_from_the_future_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1]}), path, "predictions", task="cls", kind="oof")
    _patch_kcomp_meta(path, version=99)
    _raises_bad_input(read_table, path, "predictions", match=r"predictions schema version 99 is newer", path=path)
    _patch_kcomp_meta(path, version="1")  # not an int either: said so, not "1 is newer than ... (<= 1)"
    err = _raises_bad_input(read_table, path, "predictions", match=r"schema version '1' is not a version number",
                            path=path)
    assert "newer" not in str(err)


# ----------------------------------------------------------------------------------------------- index and folds


def test_index_paths_resolve_after_moving_the_data_dir(tmp_path: Path) -> None:
    raw, index, df = _make_data_dir(tmp_path / "data")
    table = read_index(index)
    assert table.meta["root"] == "raw", "the root is stored relative to the index file"
    assert table.root == raw.resolve()
    assert table.classes == CLASSES and table.task == "cls" and table.competition == "demo"
    pd.testing.assert_frame_equal(table.df, df)
    assert table.rows("test")["id"].tolist() == ["s0.jpg", "s1.jpg"]

    moved = tmp_path / "elsewhere" / "data2"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "data"), moved)
    table = read_index(moved / "index.parquet")
    assert table.root == (moved / "raw").resolve()
    for p in df["path"]:
        f = table.file(p)
        assert f.is_file() and f.read_bytes() == b"img " + p.encode()


def test_index_read_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_data_dir(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data" / "raw" / "train_images")
    table = read_index(Path("../../index.parquet"))
    assert table.file("train_images/t0.jpg").is_file()


@pytest.mark.parametrize("rel", ["../x.jpg", "train_images/../../x.jpg", "a/b/../../../etc/passwd"])
def test_index_file_rejects_escapes(tmp_path: Path, rel: str) -> None:
    _, index, _ = _make_data_dir(tmp_path / "data")
    table = read_index(index)
    _raises_bad_input(table.file, rel, match=r"escapes the data root", path=index)


def test_index_file_rejects_absolute_paths(tmp_path: Path) -> None:
    _, index, _ = _make_data_dir(tmp_path / "data")
    table = read_index(index)
    _raises_bad_input(table.file, str(tmp_path / "data" / "raw" / "train_images" / "t0.jpg"),
                      match=r"absolute path .* not allowed", path=index)
    _raises_bad_input(table.file, "/etc/passwd", match=r"absolute path '/etc/passwd' not allowed")


def test_index_file_allows_dotted_paths_inside_the_root(tmp_path: Path) -> None:
    raw, index, _ = _make_data_dir(tmp_path / "data")
    table = read_index(index)
    assert table.file("train_images/../test_images/s0.jpg") == raw.resolve() / "test_images" / "s0.jpg"
    assert isinstance(table, IndexTable)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        pytest.param(lambda d: d.assign(id=["t0.jpg"] * 2 + d["id"].tolist()[2:]), r"duplicate id 't0.jpg'",
                     id="duplicate-id"),
        pytest.param(lambda d: d.assign(split=["train"] * 7 + ["valid"]), r"column split has value 'valid'",
                     id="bad-split"),
        pytest.param(lambda d: d.assign(label=[0, 1, 2, 3, 0, 1, -1, -1]), r"column label has value 3 outside 0..2",
                     id="label-too-large"),
        pytest.param(lambda d: d.assign(label=[0, -2, 2, 0, 1, 2, -1, -1]), r"column label has value -2 outside",
                     id="label-negative"),
        pytest.param(lambda d: d.assign(label=[0, None, 2, 0, 1, 2, -1, -1]), r"column label is empty for 1 train",
                     id="label-empty"),
        pytest.param(lambda d: d.drop(columns=["height"]), r"missing column\(s\) height", id="missing-height"),
        pytest.param(lambda d: d.drop(columns=["id", "path"]), r"missing column\(s\) id, path", id="missing-id-path"),
    ],
)
def test_validate_index_catches_bad_rows(tmp_path: Path, mutate, match: str) -> None:
    df = mutate(_index_frame())
    _raises_bad_input(validate_index, df, "idx.parquet", classes=CLASSES, task="cls", match=match,
                      path="idx.parquet")
    # the writer validates first: nothing is written
    out = tmp_path / "index.parquet"
    _raises_bad_input(write_index, df, out, root=tmp_path, competition="demo", task="cls", classes=CLASSES,
                      match=match, path=out)
    assert list(tmp_path.iterdir()) == []


def test_validate_index_accepts_test_rows_without_labels() -> None:
    validate_index(_index_frame(), "idx", classes=CLASSES, task="cls")


def test_read_index_validates_what_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "index.parquet"
    write_table(_index_frame().assign(split="val"), path, "index", root=".", classes=CLASSES, task="cls")
    _raises_bad_input(read_index, path, match=r"column split has value 'val'", path=path)


def test_folds_written_elsewhere_still_resolve(tmp_path: Path) -> None:
    raw, index, df = _make_data_dir(tmp_path / "data")
    table = read_index(index)
    fold = np.array([0, 1, 0, 1, 0, 1, -1, -1])
    out = tmp_path / "work" / "deeper" / "folds.parquet"
    assert write_folds(table, fold, out, strategy="kfold", n_folds=2) == str(out)
    folds = read_index(out, "folds")
    assert folds.meta["schema"]["name"] == "folds"
    assert folds.meta["root"] == os.path.relpath(raw.resolve(), out.parent.resolve())
    assert folds.root == raw.resolve()
    assert folds.df["fold"].tolist() == fold.tolist()
    assert folds.classes == CLASSES and folds.meta["strategy"] == "kfold" and folds.meta["n_folds"] == 2
    assert all(folds.file(p).is_file() for p in df["path"])
    # an index is not a folds table, and a folds table without a fold column is not one either
    _raises_bad_input(read_index, index, "folds", match=r"is a kcomp 'index' file, expected folds", path=index)
    no_fold = tmp_path / "nofold.parquet"
    write_table(df, no_fold, "folds", root=".", classes=CLASSES, task="cls")
    _raises_bad_input(read_index, no_fold, "folds", match=r"missing column\(s\) fold", path=no_fold)


# ------------------------------------------------------------------------------------------------- atomic writes


def test_exception_inside_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    target.write_bytes(b"old contents")
    os.utime(target, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write(b"half of the new cont")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old contents"
    assert target.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"], "the temp file is removed"


def test_exception_inside_atomic_write_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.bin") as f:
        f.write(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_an_environment_failure(tmp_path: Path) -> None:
    target = tmp_path / "preds.parquet"
    target.write_bytes(b"old predictions")
    with pytest.raises(EnvironmentFailure, match=r"no space left on device") as info, atomic_write(target) as f:
        f.write(b"new")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.exit_code == 1
    assert isinstance(info.value, KcompError)
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"old predictions"
    assert [p.name for p in tmp_path.iterdir()] == ["preds.parquet"]


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    target = tmp_path / "t.bin"
    with pytest.raises(PermissionError), atomic_write(target) as f:
        f.write(b"x")
        raise PermissionError(errno.EACCES, "denied")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_success_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "t.bin"
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    with atomic_write(target, "w") as f:
        f.write("text")
    assert target.read_text() == "text"
    assert [p.name for p in target.parent.iterdir()] == ["t.bin"]


_WRITER = """
import sys
import numpy as np
import pandas as pd
from kcomp.artifacts import write_table

path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(int(sys.argv[3]))
print("ready", flush=True)
gen = 0
while True:
    x = rng.random(n)
    write_table(pd.DataFrame({"gen": np.full(n, gen), "x": x}), path, "metrics", gen=gen, n=n, total=float(x.sum()))
    print(gen, flush=True)
    gen += 1
"""


def _check_complete(path: Path, n: int) -> int:
    df, meta = read_table(path, "metrics")
    assert len(df) == n == meta["n"]
    assert (df["gen"] == meta["gen"]).all()
    assert df["x"].sum() == pytest.approx(meta["total"])
    return int(meta["gen"])


def test_sigkill_during_writes_never_leaves_a_truncated_table(tmp_path: Path) -> None:
    n = 500_000
    target = tmp_path / "big.parquet"
    x = np.zeros(n)
    write_table(pd.DataFrame({"gen": np.full(n, -1), "x": x}), target, "metrics", gen=-1, n=n, total=0.0)
    rng = random.Random(20240611)
    gens = []
    for i in range(5):
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(n), str(i)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == b"ready", child.stderr.read().decode()
            if i == 0:  # a loaded machine must not make every kill land before the first replacement
                assert child.stdout.readline().strip() == b"0", child.stderr.read().decode()
            time.sleep(rng.uniform(0.05, 0.5))
            assert child.poll() is None, child.stderr.read().decode()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        gens.append(_check_complete(target, n))  # the old table or a new one, complete, never half-written
    assert gens[-1] >= 0, "the children did replace the table"
    # only the target and (SIGKILL leaves no chance to clean up) hidden temp files of the interrupted writes
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".big.parquet.")} == {"big.parquet"}


# --------------------------------------------------------------------------------------------------- checkpoints


class Opaque:
    """An arbitrary class: pickling it means unpickling would run code, so kcomp must refuse it."""

    def __init__(self) -> None:
        self.lr = 0.1


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    import torch

    from kcomp.artifacts.checkpoint import load_checkpoint, save_checkpoint

    state = {"task": "cls", "model": {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}, "epoch": 3,
             "config": {"lr": 1e-3, "model": "resnet18"}, "classes": ["a", "b"], "rng": torch.ByteTensor([1, 2])}
    path = tmp_path / "fold0" / "best.pt"
    save_checkpoint(path, state)
    ck = load_checkpoint(path, task="cls")
    assert ck["schema"] == {"name": "checkpoint", "version": 1}
    assert ck["kcomp_version"] == kcomp.__version__ and isinstance(ck["command"], str)
    assert torch.equal(ck["model"]["w"], state["model"]["w"]) and torch.equal(ck["rng"], state["rng"])
    assert ck["epoch"] == 3 and ck["config"] == state["config"] and ck["classes"] == ["a", "b"]
    assert load_checkpoint(path)["task"] == "cls"
    # plain torch can read it safely too
    assert torch.load(path, weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("payload", [lambda: {"x": Opaque()}, lambda: {"args": argparse.Namespace(lr=0.1)}],
                         ids=["custom-class", "argparse-namespace"])
def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path, payload) -> None:
    import torch

    from kcomp.artifacts.checkpoint import load_checkpoint

    path = tmp_path / "best.pt"
    torch.save({"task": "cls", "model": {"w": torch.ones(1)}, **payload()}, path)
    _raises_bad_input(load_checkpoint, path, match=r"contains pickled objects", path=path)


def test_truncated_checkpoint_is_rejected(tmp_path: Path) -> None:
    import torch

    from kcomp.artifacts.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"task": "cls", "model": {"w": torch.randn(64, 64)}})
    _truncate(path)
    _raises_bad_input(load_checkpoint, path, match=r"not a readable torch checkpoint", path=path)
    path.write_bytes(b"")
    _raises_bad_input(load_checkpoint, path, match=r"not a readable torch checkpoint", path=path)


def test_checkpoint_of_another_task_names_both(tmp_path: Path) -> None:
    import torch

    from kcomp.artifacts.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "best.pt"
    save_checkpoint(path, {"task": "seg", "model": {"w": torch.ones(1)}})
    err = _raises_bad_input(load_checkpoint, path, task="cls", match=r"task 'seg', not 'cls'", path=path)
    assert "seg" in str(err) and "cls" in str(err)


def test_checkpoint_without_kcomp_metadata_or_file(tmp_path: Path) -> None:
    import torch

    from kcomp.artifacts.checkpoint import load_checkpoint

    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.ones(1)}, path)
    _raises_bad_input(load_checkpoint, path, match=r"not a kcomp artifact", path=path)
    torch.save(torch.ones(3), path)
    _raises_bad_input(load_checkpoint, path, match=r"not a kcomp artifact", path=path)
    _raises_bad_input(load_checkpoint, tmp_path / "nope.pt", match=r"no such file", path=tmp_path / "nope.pt")


# --------------------------------------------------------------------------------------------------- predictions


def _preds(path: Path, probs: list, *, ids: list[str] | None = None, kind: str = "oof",
           classes: list[str] | None = None, task: str = "cls") -> Path:
    from kcomp.artifacts.predictions import write_predictions

    ids = ids if ids is not None else [f"{i:04d}" for i in range(len(probs))]
    df = pd.DataFrame({"id": ids, "fold": [0] * len(ids), "probs": probs})
    if kind == "oof":
        df["target"] = [0] * len(ids)
    write_predictions(df, path, task=task, kind=kind, classes=classes or ["a", "b"])
    return path


def test_predictions_round_trip(tmp_path: Path) -> None:
    from kcomp.artifacts.predictions import read_predictions

    path = _preds(tmp_path / "p.parquet", [[0.2, 0.8], [0.6, 0.4]], ids=["0001", "0002"])
    p = read_predictions(path, kind="oof")
    assert p.kind == "oof" and p.task == "cls" and p.classes == ["a", "b"]
    assert p.meta["values"] == "probabilities"
    assert p.df["id"].tolist() == ["0001", "0002"]
    np.testing.assert_allclose(p.probs(), [[0.2, 0.8], [0.6, 0.4]], rtol=1e-6)


def test_predictions_reject_empty_tables(tmp_path: Path) -> None:
    from kcomp.artifacts.predictions import read_predictions

    path = _preds(tmp_path / "p.parquet", [], ids=[])
    _raises_bad_input(read_predictions, path, match=r"prediction file has no rows", path=path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_predictions_reject_non_finite_probabilities(tmp_path: Path, bad: float) -> None:
    from kcomp.artifacts.predictions import read_predictions

    path = _preds(tmp_path / "p.parquet", [[0.5, 0.5], [0.1, 0.9], [bad, 0.3], [0.3, bad]],
                  ids=["ok1", "ok2", "bad1", "bad2"])
    _raises_bad_input(read_predictions, path, match=r"NaN or inf in probs for id 'bad1' \(2 row\(s\)\)", path=path)


def test_predictions_reject_ragged_vectors(tmp_path: Path) -> None:
    from kcomp.artifacts.predictions import read_predictions

    path = _preds(tmp_path / "p.parquet", [[0.5, 0.5], [0.2, 0.3, 0.5]])
    _raises_bad_input(read_predictions, path, match=r"probs for id '0001' has 3 value\(s\), expected the 2 classes",
                      path=path)


def test_predictions_reject_duplicate_ids(tmp_path: Path) -> None:
    from kcomp.artifacts.predictions import read_predictions

    path = _preds(tmp_path / "p.parquet", [[0.5, 0.5]] * 3, ids=["x", "y", "x"])
    _raises_bad_input(read_predictions, path, match=r"duplicate id 'x'", path=path)


def test_predictions_of_the_wrong_kind_or_shape(tmp_path: Path) -> None:
    from kcomp.artifacts.predictions import read_predictions

    path = _preds(tmp_path / "p.parquet", [[0.5, 0.5]], kind="test")
    _raises_bad_input(read_predictions, path, kind="oof", match=r"holds test predictions, expected oof", path=path)
    other = tmp_path / "no_probs.parquet"
    write_table(pd.DataFrame({"id": ["a"], "fold": [0]}), other, "predictions", task="cls", kind="oof")
    _raises_bad_input(read_predictions, other, match=r"missing column\(s\) probs", path=other)
    index = tmp_path / "index.parquet"
    write_table(_index_frame(), index, "index", root=".", classes=CLASSES, task="cls")
    _raises_bad_input(read_predictions, index, match=r"is a kcomp 'index' file, expected predictions", path=index)


def test_check_compatible_rejects_mismatches(tmp_path: Path) -> None:
    from kcomp.artifacts.predictions import aligned, check_compatible, read_predictions

    probs = [[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]]
    a = read_predictions(_preds(tmp_path / "a.parquet", probs, ids=["p", "q", "r"]))
    same = read_predictions(_preds(tmp_path / "same.parquet", probs[::-1], ids=["r", "q", "p"]))
    check_compatible([a, same])
    np.testing.assert_allclose(aligned([a, same])[1], probs, rtol=1e-6)

    other_ids = read_predictions(_preds(tmp_path / "ids.parquet", probs, ids=["p", "q", "zz"]))
    _raises_bad_input(check_compatible, [a, other_ids],
                      match=r"ids differ from .*a\.parquet \(2 not shared, e\.g\. 'zz'\)",
                      path=tmp_path / "ids.parquet")
    fewer = read_predictions(_preds(tmp_path / "fewer.parquet", probs[:2], ids=["p", "q"]))
    _raises_bad_input(check_compatible, [a, fewer], match=r"ids differ .* e\.g\. 'r'", path=tmp_path / "fewer.parquet")
    other_classes = read_predictions(_preds(tmp_path / "cls.parquet", probs, ids=["p", "q", "r"], classes=["b", "a"]))
    _raises_bad_input(check_compatible, [a, other_classes], match=r"classes differ from those of .*a\.parquet",
                      path=tmp_path / "cls.parquet")
    test = read_predictions(_preds(tmp_path / "test.parquet", probs, ids=["p", "q", "r"], kind="test"))
    _raises_bad_input(check_compatible, [a, test], match=r"kind 'test' differs from 'oof'",
                      path=tmp_path / "test.parquet")


# ---------------------------------------------------------------------------------------------------------- json


def test_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    assert write_json(path, "thresholds", {"metric": "accuracy", "score": np.float32(0.5), "path": Path("a")}) \
        == str(path)
    data = read_json(path, "thresholds")
    assert data["schema"] == {"name": "thresholds", "version": 1} and data["kcomp_version"] == kcomp.__version__
    assert data["metric"] == "accuracy" and data["score"] == 0.5 and data["path"] == "a"


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe"], ids=["broken", "empty", "binary"])
def test_json_rejects_invalid_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(text.encode("latin-1"))
    _raises_bad_input(read_json, path, "thresholds", match=r"not valid JSON", path=path)


def test_json_rejects_wrong_schema(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_json(path, "run-config", {"config": {}})
    _raises_bad_input(read_json, path, "thresholds", match=r"is a kcomp 'run-config' file, expected thresholds",
                      path=path)
    path.write_text(json.dumps({"metric": "accuracy"}))
    _raises_bad_input(read_json, path, "thresholds", match=r"not a kcomp artifact", path=path)
    path.write_text("[1, 2]")
    _raises_bad_input(read_json, path, "thresholds", match=r"not a kcomp artifact", path=path)
    path.write_text(json.dumps({"schema": {"name": "thresholds", "version": 7}}))
    _raises_bad_input(read_json, path, "thresholds", match=r"version 7 is newer", path=path)
    _raises_bad_input(read_json, tmp_path / "nope.json", "thresholds", match=r"no such file")


# ---------------------------------------------------------------------------------------------------- submission


def _sample(path: Path, ids: list[str]) -> Path:
    path.write_text("image_id,label\n" + "".join(f"{i},0\n" for i in ids))
    return path


def test_align_to_sample_reorders_rows(tmp_path: Path) -> None:
    from kcomp.artifacts.submission import align_to_sample

    sample = _sample(tmp_path / "sample.csv", ["0003", "0001", "0002"])
    sub = pd.DataFrame({"image_id": ["0001", "0002", "0003"], "label": [1, 2, 3]})
    out = align_to_sample(sub, sample, "image_id")
    assert out["image_id"].tolist() == ["0003", "0001", "0002"]
    assert out["label"].tolist() == [3, 1, 2]
    assert list(out.columns) == ["image_id", "label"]


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        pytest.param(["0001", "0002"], r"1 id\(s\) of the sample have no prediction, e\.g\. '0003'", id="missing"),
        pytest.param(["0001", "0002", "0003", "0002"], r"predictions have duplicate id '0002'", id="duplicate"),
        pytest.param(["0001", "0002", "0003", "0009"], r"1 predicted id\(s\) are not in the sample, e\.g\. '0009'",
                     id="unknown"),
        pytest.param(["1", "2", "3"], r"3 id\(s\) of the sample have no prediction, e\.g\. '0001'",
                     id="leading-zeros-matter"),
    ],
)
def test_align_to_sample_rejects_id_mismatches(tmp_path: Path, ids: list[str], match: str) -> None:
    from kcomp.artifacts.submission import align_to_sample

    sample = _sample(tmp_path / "sample.csv", ["0001", "0002", "0003"])
    sub = pd.DataFrame({"image_id": ids, "label": range(len(ids))})
    _raises_bad_input(align_to_sample, sub, sample, "image_id", match=match, path=sample)


def test_align_to_sample_rejects_bad_samples(tmp_path: Path) -> None:
    from kcomp.artifacts.submission import align_to_sample

    sub = pd.DataFrame({"image_id": ["0001"], "label": [1]})
    ids_only = tmp_path / "ids_only.csv"
    ids_only.write_text("image_id\n0001\n")
    _raises_bad_input(align_to_sample, sub, ids_only, "image_id", match=r"sample has columns \['image_id'\]",
                      path=ids_only)
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("id,label\n0001,0\n")
    _raises_bad_input(align_to_sample, sub, no_id, "image_id", match=r"missing column\(s\) image_id", path=no_id)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _raises_bad_input(align_to_sample, sub, empty, "image_id", match=r"not a readable CSV", path=empty)
    _raises_bad_input(align_to_sample, sub, tmp_path / "nope.csv", "image_id", match=r"no such file")


def test_truncated_maps_npz_is_a_clear_error(tmp_path):
    import numpy as np
    import pandas as pd

    from kcomp.artifacts.predictions import read_predictions, write_predictions

    df = pd.DataFrame({"id": ["a"], "fold": [-1], "map_key": ["a"], "map": [np.ones((8, 8), np.uint8)]})
    write_predictions(df, tmp_path / "p.parquet", task="ink", kind="test", classes=["ink"])
    p = read_predictions(tmp_path / "p.parquet")
    assert (p.maps()["a"] == 1).all()
    npz = tmp_path / "p.npz"
    npz.write_bytes(npz.read_bytes()[:40])
    with pytest.raises(BadInput, match="p.npz: not a readable .npz"):
        read_predictions(tmp_path / "p.parquet").maps()
