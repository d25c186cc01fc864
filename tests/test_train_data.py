"""`kcomp train --drop / --relabel / --extra / --teacher` (issue 24): through the real command, pseudo rows are in
every fold's training rows and no validation rows, --drop/--relabel change training rows only; the options are
recorded and a resume with others is refused; distillation through the training path is the CE to the teacher at
alpha 1 and today's loss at alpha 0. The slow tests print what the options do on the demo's held-out labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kcomp.artifacts.index import read_index
from kcomp.artifacts.label_issues import read_label_issues
from kcomp.artifacts.predictions import read_predictions
from kcomp.artifacts.pseudo import read_pseudo
from kcomp.tasks.pseudo import make_pseudo
from tests.commands.test_options import SEAM, invoke, seam  # noqa: F401 (seam: a fixture)

FAST = ("--img-size", "32", "--epochs", "1", "--batch-size", "32", "--workers", "0")


@pytest.fixture(scope="module")
def soft_pseudo(demo_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's test predictions as pseudo rows with soft labels."""
    out = tmp_path_factory.mktemp("pseudo") / "pseudo.parquet"
    make_pseudo([str(demo_run["test"])], str(out), soft=True)
    return out


@pytest.fixture
def datasets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, list[Any], Any]]:
    """(train, row ids, dataset) of every dataset the cls task builds, in order."""
    from kcomp.tasks.cls import ClsTask

    seen: list[tuple[bool, list[Any], Any]] = []
    real = ClsTask.dataset

    def recording(self: ClsTask, table: Any, rows: Any, opts: Any, setup: Any, *, train: bool,
                  with_targets: bool = True) -> Any:
        ds = real(self, table, rows, opts, setup, train=train, with_targets=with_targets)
        seen.append((train, list(rows["id"]), ds))
        return ds

    monkeypatch.setattr(ClsTask, "dataset", recording)
    return seen


@pytest.mark.usefixtures("seam")
def test_kcomp_train_extra_trains_pseudo_rows_in_every_fold_and_validates_none(
        demo_run: dict[str, Path], soft_pseudo: Path, tmp_path: Path, datasets: list) -> None:
    """Through `kcomp train --extra` for each fold, stopped once its loaders are built (a real run with pseudo rows
    trains in the next test)."""
    table, pseudo = read_index(demo_run["folds"]), read_pseudo(soft_pseudo)
    labelled = table.df[(table.df["split"] == "train") & (table.df["fold"] >= 0)]
    folds = sorted(labelled["fold"].unique())
    for k in folds:
        r = invoke("train", "cls", "--folds", demo_run["folds"], "--fold", str(k), *FAST, "--extra", soft_pseudo,
                   "-o", tmp_path / "run")
        assert r.code == SEAM, r.stderr
    assert [d[0] for d in datasets] == [True, False] * len(folds)  # per fold: training, then validation rows
    classes = len(table.classes)
    for k, (trained, validated) in zip(folds, zip(datasets[::2], datasets[1::2], strict=True), strict=True):
        own = labelled["id"][labelled["fold"] != k].tolist()
        assert trained[1] == own + pseudo.df["id"].tolist()  # every pseudo row, in every fold's training rows
        assert validated[1] == labelled["id"][labelled["fold"] == k].tolist()  # validation: the folds file's
        assert not set(pseudo.df["id"]) & set(validated[1])
        ds = trained[2]  # what the fold's loader draws from: soft rows for pseudo rows, one-hot for the others
        assert len(ds) == len(trained[1]) and ds.targets.shape == (len(trained[1]), classes)
        np.testing.assert_allclose(ds.targets[len(own):], np.stack(pseudo.df["soft"].to_numpy()), atol=1e-6)
        assert (ds.targets[:len(own)].max(1) == 1).all() and (ds.targets[:len(own)].sum(1) == 1).all()
        assert validated[2].targets_array().dtype == np.int64  # validation scores hard labels as ever


@pytest.mark.usefixtures("seam")
def test_kcomp_train_drop_and_relabel_change_training_rows_only(demo_run: dict[str, Path], tmp_path: Path,
                                                                datasets: list) -> None:
    """Through `kcomp train` (stopped once its loaders are built): --drop leaves the flagged rows out of the fold's
    training rows, --relabel trains them on the suggested class; the validation rows, a flagged one among them, are
    the folds file's either way."""
    import pandas as pd

    from kcomp.artifacts.label_issues import write_label_issues

    table = read_index(demo_run["folds"])
    labelled = table.df[(table.df["split"] == "train") & (table.df["fold"] >= 0)]
    c = len(table.classes)
    flagged = pd.concat([labelled[labelled["fold"] != 0].iloc[:5], labelled[labelled["fold"] == 0].iloc[:1]])
    given = flagged["label"].astype(int).to_numpy()
    issues = pd.DataFrame({"id": flagged["id"].to_numpy(), "fold": flagged["fold"].to_numpy(), "given": given,
                           "suggested": (given + 1) % c, "given_class": [table.classes[g] for g in given],
                           "suggested_class": [table.classes[(g + 1) % c] for g in given], "quality": 0.1})
    write_label_issues(issues, tmp_path / "issues.parquet", classes=table.classes, target="label")
    suggested = dict(zip(issues["id"], issues["suggested"], strict=True))
    own = labelled[labelled["fold"] != 0]
    val_ids = labelled["id"][labelled["fold"] == 0].tolist()
    train = ("train", "cls", "--folds", demo_run["folds"], "--fold", "0", *FAST, "-o", tmp_path / "run")

    assert invoke(*train, "--drop", tmp_path / "issues.parquet").code == SEAM
    (_, dropped, _), (_, val, _) = datasets
    assert dropped == [i for i in own["id"] if i not in suggested] and val == val_ids
    datasets.clear()
    assert invoke(*train, "--relabel", tmp_path / "issues.parquet").code == SEAM
    (_, ids, ds), (_, val, val_ds) = datasets
    assert ids == own["id"].tolist() and val == val_ids
    want = [suggested.get(i, int(k)) for i, k in zip(own["id"], own["label"], strict=True)]
    assert np.asarray(ds.targets).tolist() == want and sum(w != int(k) for w, k in zip(want, own["label"])) == 5
    assert val_ds.targets_array().tolist() == labelled["label"][labelled["fold"] == 0].astype(int).tolist()
    # flagging every training row of a class would leave the model nothing to learn it from: refused, naming the file
    lost = own[own["label"] == own["label"].iloc[0]]
    every = pd.DataFrame({"id": lost["id"].to_numpy(), "fold": lost["fold"].to_numpy(), "given": lost["label"],
                          "suggested": (lost["label"] + 1) % c, "given_class": table.classes[lost["label"].iloc[0]],
                          "suggested_class": table.classes[(lost["label"].iloc[0] + 1) % c], "quality": 0.1})
    write_label_issues(every, tmp_path / "every.parquet", classes=table.classes, target="label")
    for option in ("--drop", "--relabel"):
        r = invoke(*train, option, tmp_path / "every.parquet")
        assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"leaves fold 0's training rows no example of class {table.classes[lost['label'].iloc[0]]!r}" in r.stderr


def test_teacher_and_pseudo_rows_train_together_with_mixing(demo_run: dict[str, Path], soft_pseudo: Path,
                                                             tmp_path: Path, datasets: list) -> None:
    """Packed (N, 2C) targets, mixed as one (mixup over 2C columns); pseudo rows, which no OOF covers, take their
    own soft labels as the teacher's half."""
    from kcomp.data.teacher import teacher_probs

    run = tmp_path / "run"
    train = ("train", "cls", "--folds", demo_run["folds"], "--fold", "0", *FAST, "--teacher", demo_run["oof"],
             "--distill-alpha", "0.5", "--distill-temperature", "2", "--mixup", "0.4", "-o", run)
    r = invoke(*train, "--extra", soft_pseudo)
    assert r.code == 0, r.stderr
    (_, ids, ds), (_, val_ids, val) = datasets
    pseudo = read_pseudo(soft_pseudo)
    own = [i for i in ids if i not in set(pseudo.df["id"])]
    c = len(read_index(demo_run["folds"]).classes)
    assert ds.targets.shape == (len(ids), 2 * c)
    teacher = teacher_probs(read_predictions(demo_run["oof"]), own, read_index(demo_run["folds"]).classes)
    np.testing.assert_allclose(ds.targets[:len(own), c:], teacher, atol=1e-6)
    soft = np.stack(pseudo.df["soft"].to_numpy())
    np.testing.assert_allclose(ds.targets[len(own):, :c], soft, atol=1e-6)
    np.testing.assert_allclose(ds.targets[len(own):, c:], soft, atol=1e-6)
    assert val.targets_array().dtype == np.int64 and not set(val_ids) & set(pseudo.df["id"])
    saved = json.loads((run / "config.json").read_text())["config"]
    assert (saved["teacher"], saved["distill_alpha"], saved["distill_temperature"]) == (
        str(Path(demo_run["oof"]).resolve()), 0.5, 2.0)
    assert saved["extra"] == [str(soft_pseudo.resolve())] and saved["drop"] is None
    # a resume is the same run: other data options are refused before anything changes
    r = invoke(*train)
    assert r.code == 2 and "extra: [" in r.stderr and "-> []" in r.stderr, r.stderr


def _first_batch_loss(demo_run: dict[str, Path], tmp_path: Path, **opts: Any) -> tuple[Any, ...]:
    """The first training batch of fold 0 as the training loop draws it, the model's logits for it and the loss
    the loop computes on them."""
    from kcomp.runs import config
    from kcomp.runs._data import DataChanges
    from kcomp.runs._fold import build_fold
    from kcomp.tasks import get_task

    o = config.resolve(task="cls", folds=str(demo_run["folds"]), img_size=32, batch_size=16, workers=0,
                       device="cpu", **opts)
    table, task = read_index(o.folds), get_task("cls")
    setup = task.setup(table, o)
    f = build_fold(o, table, task, setup, tmp_path / "run", 0, DataChanges.read(o))
    f.sampler.set_epoch(0)
    x, y = next(iter(f.train_dl))
    rows = [i for i, _ in list(iter(f.sampler))[: len(x)]]
    with torch.no_grad():
        logits = f.model.eval()(x)
    return logits, y, f.loss_fn(logits, y), f.sampler, rows, setup


def test_distillation_through_the_training_path(demo_run: dict[str, Path], tmp_path: Path) -> None:
    """alpha 1: the loss of a training batch is the CE to the teacher's probabilities of those rows; alpha 0: the
    loss a run without --teacher computes on the same batch."""
    import torch.nn.functional as F

    from kcomp.data.training_rows import fold_rows

    teacher = read_predictions(demo_run["oof"])
    logits, y, loss, _, rows, setup = _first_batch_loss(demo_run, tmp_path / "a1", teacher=str(demo_run["oof"]),
                                                        distill_alpha=1.0)
    c = len(setup["classes"])
    ids = fold_rows(read_index(demo_run["folds"]), 0).train["id"].to_numpy()[rows]
    q = torch.from_numpy(np.stack(teacher.df.set_index("id").loc[ids, "probs"].to_numpy())).float()
    q = q / q.sum(1, keepdim=True)
    torch.testing.assert_close(y[:, c:], q)
    torch.testing.assert_close(loss, -(q * F.log_softmax(logits.float(), 1)).sum(1).mean())

    logits0, y0, loss0, *_ = _first_batch_loss(demo_run, tmp_path / "a0", teacher=str(demo_run["oof"]),
                                               distill_alpha=0.0)
    plain_logits, plain_y, plain_loss, *_ = _first_batch_loss(demo_run, tmp_path / "plain")
    torch.testing.assert_close(logits0, plain_logits)  # same seed, same batch, same model
    assert plain_y.dtype == torch.int64 and torch.equal(y0[:, :c].argmax(1), plain_y)
    torch.testing.assert_close(loss0, plain_loss)


# ------------------------------------------------------------------------------------ slow: on the demo's labels


def _held_out_demo(root: Path, *, flip: float = 0.0) -> tuple[Path, dict[str, int], set[str]]:
    """The demo with 100 of its train rows held out as test rows (the demo's own test rows have no labels; these
    keep their true labels aside) and `flip` of the remaining train labels moved to another class (seeded).
    Returns (folds file, true test labels by id, flipped ids)."""
    from kcomp.artifacts.index import write_folds
    from tests.conftest import run_chain
    from tests.test_clean import _flip

    data = root / "data"
    run_chain([("prep", "demo", "-o", data),
               ("split", data / "index.parquet", "-o", data / "all_folds.parquet", "--folds", "4")], cwd=root)
    table = read_index(data / "all_folds.parquet")
    df = table.df[table.df["split"] == "train"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    held = np.zeros(len(df), bool)
    held[rng.choice(len(df), 100, replace=False)] = True
    truth = dict(zip(df["id"][held], df["label"][held].astype(int), strict=True))
    df.loc[held, ["split", "label", "fold"]] = ["test", -1, -1]
    train = ~held
    noisy, rows = _flip(df.loc[train, "label"].to_numpy(), flip, len(table.classes), seed=1)
    df.loc[train, "label"] = noisy
    table.df = df
    write_folds(table, df["fold"].to_numpy(), data / "folds.parquet")
    return data / "folds.parquet", truth, set(df["id"][train].to_numpy()[rows])


def _test_accuracy(run: Path, truth: dict[str, int], out: Path) -> float:
    from tests.conftest import run_cli

    r = run_cli("tta", run, "-o", out, "--workers", "0")
    assert r.code == 0, r.stderr
    preds = read_predictions(out)
    return float(np.mean([truth[i] == int(np.argmax(p)) for i, p in zip(preds.df["id"], preds.df["probs"],
                                                                         strict=True)]))


TRAIN_DEMO = ("--img-size", "64", "--epochs", "6", "--workers", "0")


@pytest.mark.slow
def test_pseudo_rows_test_accuracy_beside_the_run_without_them(tmp_path: Path) -> None:
    """The issue's report: the demo run with pseudo-labelled held-out rows beside the run without (printed)."""
    from tests.conftest import run_cli

    folds, truth, _ = _held_out_demo(tmp_path)
    base = ("train", "cls", "--folds", folds, "--fold", "all", *TRAIN_DEMO)
    assert run_cli(*base, "-o", tmp_path / "plain", timeout=3600).code == 0
    without = _test_accuracy(tmp_path / "plain", truth, tmp_path / "plain.parquet")
    r = run_cli("pseudo", tmp_path / "plain.parquet", "-o", tmp_path / "pseudo.parquet", "--soft")
    assert r.code == 0, r.stderr
    r = run_cli(*base, "--extra", tmp_path / "pseudo.parquet", "-o", tmp_path / "pseudo", timeout=3600)
    assert r.code == 0, r.stderr
    with_pseudo = _test_accuracy(tmp_path / "pseudo", truth, tmp_path / "pseudo_test.parquet")
    print(f"demo, {len(truth)} held-out rows: test accuracy {without:.3f} without pseudo rows, {with_pseudo:.3f} "
          f"with {len(read_pseudo(tmp_path / 'pseudo.parquet').df)} soft pseudo rows")


@pytest.mark.slow
def test_drop_from_clean_beats_all_rows_with_flipped_labels(tmp_path: Path) -> None:
    """The issue's acceptance: 20% of the demo's train labels flipped (seeded); `kcomp clean` on the OOF of a run on
    them; fold 0 trained on all its rows and with --drop, 3 seeds each; the mean test accuracy on the true labels
    of held-out rows is higher with --drop (both printed)."""
    from tests.conftest import run_chain, run_cli

    folds, truth, flipped = _held_out_demo(tmp_path, flip=0.2)
    run_chain([("train", "cls", "--folds", folds, "--fold", "all", *TRAIN_DEMO, "-o", tmp_path / "oof_run"),
               ("oof", tmp_path / "oof_run", "-o", tmp_path / "oof.parquet", "--workers", "0"),
               ("clean", tmp_path / "oof.parquet", "-o", tmp_path / "issues.parquet")], cwd=tmp_path, timeout=3600)
    found = set(read_label_issues(tmp_path / "issues.parquet").df["id"])
    scores: dict[str, list[float]] = {"all rows": [], "--drop": []}
    for seed in (0, 1, 2):
        for name, extra in (("all rows", ()), ("--drop", ("--drop", tmp_path / "issues.parquet"))):
            run = tmp_path / f"{name.strip('-').replace(' ', '_')}_{seed}"
            r = run_cli("train", "cls", "--folds", folds, "--fold", "0", *TRAIN_DEMO, "--seed", str(seed), *extra,
                        "-o", run, timeout=3600)
            assert r.code == 0, r.stderr
            scores[name].append(_test_accuracy(run, truth, tmp_path / f"{run.name}.parquet"))
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    print(f"demo with 20% flipped: clean flagged {len(found)} rows ({len(found & flipped)} of {len(flipped)} flipped);"
          f" test accuracy over seeds 0-2: all rows {scores['all rows']} mean {means['all rows']:.3f}, --drop "
          f"{scores['--drop']} mean {means['--drop']:.3f}")
    assert means["--drop"] > means["all rows"]
