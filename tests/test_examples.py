"""The example workflows: examples/{cassava,clouds,siim-covid19,vesuvius,demo}/Makefile and
examples/cassava/pipeline.sh.

Dry runs (`make -n`) check the chain and its dependency order; a fake `kcomp` checks the shell pipeline; the slow
tests really run the demo (and Cassava on a miniature download) with every output under tmp_path.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASSAVA = ROOT / "examples" / "cassava"
DEMO = ROOT / "examples" / "demo"
CLOUDS = ROOT / "examples" / "clouds"
SIIM = ROOT / "examples" / "siim-covid19"
VESUVIUS = ROOT / "examples" / "vesuvius"
VARIABLES = ["RAW", "DATA", "RUNS", "OUT", "MODEL", "MODEL2", "NAME", "NAME2", "IMG", "EPOCHS", "FOLDS", "TTA", "SEED",
             "KCOMP", "DEVICE", "NGPU", "WEIGHTS", "WEIGHTS2", "FLAGS", "FLAGS2", "EXTRA", "ENSEMBLE", "TASK",
             "STRATEGY", "PREDICT", "CHAIN", "ARCH", "ARCH2", "OUT_SIZE", "LAYERS", "LAYERS2", "PATCH",
             "SPLIT_FRAGMENT", "SIZE", "REGULARISE", "DET_MODEL", "DET_MODEL2", "DET_IMG", "DET_IMG2", "DET_NAME",
             "DET_NAME2", "CLS_MODEL", "CLS_IMG", "STUDY_NAME", "OPACITY_NAME", "DET_TTA", "CLS_TTA", "DET_WEIGHTS",
             "DET_WEIGHTS2", "CLS_WEIGHTS", "DET_FLAGS", "CLS_FLAGS", "WBF_IOU", "WBF_SKIP", "NONE_POWER", "RECIPE",
             "RECIPE2", "DET_RECIPE", "CLS_RECIPE", "HERE"]
KCOMP_MODULE = f"{sys.executable} -m kcomp.commands.main"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def _env() -> dict[str, str]:
    """The caller's environment minus anything that would leak into the Makefiles' `?=` defaults or make itself."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", *VARIABLES}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _make(directory: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(directory), *args], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Call:
    env: dict[str, str]
    sub: str
    args: list[str]
    redirect: str | None
    cwd: Path = ROOT  # where make ran it: a relative --config file is read from there

    def opt(self, name: str) -> str | None:
        """The value the command gets for `name`: the last `name VALUE` (click keeps the last of repeated options),
        else the `--config` file's (a model recipe; its options lose to the command line's)."""
        values = [self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a == name]
        if values:
            return values[-1]
        return self.recipe().get(name[2:]) if name.startswith("--") and name != "--config" else None

    def recipe(self) -> dict[str, str]:
        """The options of the --config file, keyed as flags without the dashes, values as text (as kcomp reads
        them); {} without one."""
        import yaml

        path = self.opt("--config")
        if path is None:
            return {}
        with open(self.cwd / path) as f:
            return {k.replace("_", "-"): v for k, v in (yaml.load(f, Loader=yaml.BaseLoader) or {}).items()}

    @property
    def positional(self) -> list[str]:
        out, skip = [], False
        for a in self.args:
            if skip:
                skip = False
            elif a.startswith("-"):
                skip = a not in {"--json", "--deterministic", "--resume", "--compile"}
            else:
                out.append(a)
        return out


def _dry_run(directory: Path, *args: str) -> tuple[list[Call], list[str]]:
    """`make -n` -> the kcomp calls in order, and the other shell lines (mkdir, mv)."""
    proc = _make(directory, "-n", "KCOMP=kcomp", *args)
    assert proc.returncode == 0, proc.stderr
    calls, other = [], []
    for line in proc.stdout.replace("\\\n", " ").splitlines():
        env = {}
        while m := re.match(r"([A-Z_]+)=(\$\(\(.*?\)\)|\S+)\s+", line):  # VAR=$(( k % n )) or VAR=word
            env[m[1]] = m[2]
            line = line[m.end():]
        words = shlex.split(line)
        if words and words[0] == "kcomp":
            redirect = None
            if ">" in words:
                i = words.index(">")
                redirect, words = words[i + 1], words[:i]
            calls.append(Call(env, words[1], words[2:], redirect, directory))
        elif line.strip():
            other.append(line)
    return calls, other


def _index(calls: list[Call], sub: str, **opts: str) -> int:
    found = [i for i, c in enumerate(calls) if c.sub == sub and all(c.opt(f"--{k}") == v for k, v in opts.items())]
    assert len(found) == 1, (sub, opts, found)
    return found[0]


def _assert_chain(calls: list[Call], *, comp: str, raw: str, data: Path, runs: Path, out: Path,
                  models: dict[str, str], folds: int, tta: str, sample: str, task: str = "cls",
                  strategy: str = "stratified") -> dict[str, list[Call]]:
    """prep, split, train (every fold of every model), oof/tta per model, ensembles, tune-threshold, submit."""
    by_sub: dict[str, list[Call]] = {}
    for c in calls:
        by_sub.setdefault(c.sub, []).append(c)
    assert sorted(by_sub) == sorted(["prep", "split", "train", "oof", "tta", "ensemble", "tune-threshold", "submit"])

    prep, split = calls[0], calls[1]
    assert (prep.sub, prep.positional, prep.opt("-o")) == ("prep", [comp, raw], str(data))
    assert split.sub == "split" and split.positional == [f"{data}/index.parquet"]
    assert split.opt("--folds") == str(folds) and split.opt("--strategy") == strategy
    folds_file = split.opt("-o")
    assert folds_file == f"{data}/folds{folds}.parquet"

    trains = by_sub["train"]
    assert sorted((c.opt("-o"), c.opt("--fold")) for c in trains) == sorted(
        (f"{runs}/{name}", str(k)) for name in models for k in range(folds))
    for c in trains:
        assert c.positional == [task] and c.opt("--folds") == folds_file
        name = Path(c.opt("-o")).name
        assert c.opt("--model") == models[name]
        assert c.redirect == f"{runs}/{name}/fold{c.opt('--fold')}/train.json.tmp" and "--json" in c.args

    last_train = {name: max(i for i, c in enumerate(calls) if c.sub == "train" and c.opt("-o") == f"{runs}/{name}")
                  for name in models}
    first_train = min(i for i, c in enumerate(calls) if c.sub == "train")
    assert first_train > 1
    preds: dict[str, dict[str, str]] = {"oof": {}, "tta": {}}
    for sub in ("oof", "tta"):
        assert len(by_sub[sub]) == len(models)
        for name in models:
            i = next(i for i, c in enumerate(calls) if c.sub == sub and c.positional == [f"{runs}/{name}"])
            assert i > last_train[name], f"{sub} of {name} before its last fold finished training"
            assert calls[i].opt("--tta") == tta
            preds[sub][name] = calls[i].opt("-o")
            assert preds[sub][name].startswith(f"{out}/")

    ensembles = by_sub["ensemble"]
    assert len(ensembles) == 2
    ens = {}
    for kind, sub in (("oof", "oof"), ("test", "tta")):
        c = next(c for c in ensembles if c.positional == list(preds[sub].values()))
        i = calls.index(c)
        assert all(i > calls.index(p) for p in by_sub[sub])
        ens[kind] = (i, c.opt("-o"))
    tune = _index(calls, "tune-threshold")
    assert tune > ens["oof"][0] and calls[tune].positional == [ens["oof"][1]]
    submit = calls[-1]
    assert submit.sub == "submit" and submit.positional == [comp, ens["test"][1]]
    assert calls.index(submit) > max(tune, ens["test"][0])
    assert submit.opt("--thresholds") == calls[tune].opt("-o")
    assert submit.opt("--sample") == sample
    assert submit.opt("-o") == f"{out}/submission.csv"
    return by_sub


def _assert_writes_only_under(calls: list[Call], other: list[str], root: Path) -> None:
    for c in calls:
        for path in filter(None, [c.opt("-o"), c.opt("--oof-output"), c.redirect]):
            assert path.startswith(f"{root}/"), f"{c.sub} writes {path} outside {root}"
    for line in other:
        words = shlex.split(line)
        assert words[0] in {"mkdir", "mv"}, line
        assert all(w.startswith(f"{root}/") for w in words[1:] if not w.startswith("-")), line


# --- examples/cassava/Makefile -----------------------------------------------------------------------------------

def test_cassava_dry_run_prints_the_chain(tmp_path: Path) -> None:
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    calls, other = _dry_run(CASSAVA, "RAW=/some/raw", f"DATA={data}", f"RUNS={runs}", f"OUT={out}")
    by_sub = _assert_chain(calls, comp="cassava", raw="/some/raw", data=data, runs=runs, out=out,
                           models={"tf_efficientnet_b3": "tf_efficientnet_b3", "resnet50": "resnet50"}, folds=5,
                           tta="4", sample="/some/raw/sample_submission.csv")
    for c in by_sub["train"]:  # the Cassava defaults: size, epochs, bi-tempered loss, CutMix, EMA
        assert (c.opt("--img-size"), c.opt("--epochs"), c.opt("--device")) == ("384", "10", "auto")
        assert (c.opt("--loss"), c.opt("--t1"), c.opt("--t2")) == ("bi_tempered", "0.8", "1.4")
        assert (c.opt("--cutmix"), c.opt("--ema")) == ("1.0", "0.999")
        assert c.opt("--config") == "recipes/noisy-labels.yaml"  # from the model recipe
        assert c.env == {}  # no GPU pinning unless NGPU is set
    _assert_writes_only_under(calls, other, tmp_path)


def test_cassava_variables_reach_the_commands(tmp_path: Path) -> None:
    calls, other = _dry_run(CASSAVA, "RAW=/r", f"DATA={tmp_path}/d", f"RUNS={tmp_path}/r", f"OUT={tmp_path}/o",
                            "MODEL=convnext_tiny", "MODEL2=deit_small_patch16_224", "FOLDS=2", "EPOCHS=1", "IMG=224",
                            "TTA=8", "DEVICE=cuda", "SEED=7", "NGPU=2", "EXTRA=--batch-size 8 --deterministic",
                            "WEIGHTS=/w/convnext.pth", "ENSEMBLE=rank", "TTA_SCALES=0.9,1,1.1")
    _assert_chain(calls, comp="cassava", raw="/r", data=tmp_path / "d", runs=tmp_path / "r", out=tmp_path / "o",
                  models={"convnext_tiny": "convnext_tiny", "deit_small_patch16_224": "deit_small_patch16_224"},
                  folds=2, tta="8", sample="/r/sample_submission.csv")
    trains = [c for c in calls if c.sub == "train"]
    for c in trains:
        assert (c.opt("--epochs"), c.opt("--img-size"), c.opt("--device"), c.opt("--seed")) == ("1", "224", "cuda",
                                                                                               "7")
        assert c.opt("--batch-size") == "8" and "--deterministic" in c.args
        assert c.opt("--weights") == ("/w/convnext.pth" if c.opt("--model") == "convnext_tiny" else None)
        assert c.env == {"CUDA_VISIBLE_DEVICES": f"$(( {c.opt('--fold')} % 2 ))"}
    assert [c.opt("--method") for c in calls if c.sub == "ensemble"] == ["rank", "rank"]
    scaled = [c.opt("--tta-scales") for c in calls if c.sub in ("oof", "tta")]
    assert scaled == ["0.9,1,1.1"] * 4  # OOF and test predictions of both models, at the same scales
    assert next(c for c in calls if c.sub == "split").opt("--seed") == "7"
    _assert_writes_only_under(calls, other, tmp_path)


@pytest.mark.parametrize("example", [CASSAVA, DEMO], ids=["cassava", "demo"])
def test_stack_target_is_the_alternative_blend(tmp_path: Path, example: Path) -> None:
    out = tmp_path / "out"
    calls, other = _dry_run(example, "RAW=/r", f"DATA={tmp_path}/d", f"RUNS={tmp_path}/r", f"OUT={out}", "stack")
    subs = [c.sub for c in calls]
    assert "ensemble" not in subs and subs[-3:] == ["stack", "tune-threshold", "submit"]
    stack, tune, submit = calls[-3:]
    oofs = [c.opt("-o") for c in calls if c.sub == "oof"]
    tests = [c.opt("-o") for c in calls if c.sub == "tta"]
    assert stack.args[:len(oofs)] == oofs and len(oofs) == 2
    assert [stack.args[i + 1] for i, a in enumerate(stack.args) if a == "--test"] == tests  # a repeated option
    assert (stack.opt("-o"), stack.opt("--oof-output")) == (f"{out}/test_stack.parquet", f"{out}/oof_stack.parquet")
    assert stack.opt("--model") == "logreg"
    assert tune.positional == [f"{out}/oof_stack.parquet"]
    assert submit.positional[1:] == [f"{out}/test_stack.parquet"]
    assert submit.opt("--thresholds") == tune.opt("-o") and submit.opt("-o") == f"{out}/submission_stack.csv"
    _assert_writes_only_under(calls, other, tmp_path)


def test_cassava_refuses_two_models_in_one_run_dir() -> None:
    proc = _make(CASSAVA, "-n", "RAW=/r", "MODEL2=tf_efficientnet_b3")
    assert proc.returncode != 0 and "own run directories" in proc.stderr


def test_cassava_targets_are_real_files(tmp_path: Path) -> None:
    """Once every output exists in order, nothing is left to do; a retrained fold redoes only what follows it."""
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    variables = ["RAW=/some/raw", f"DATA={data}", f"RUNS={runs}", f"OUT={out}", "FOLDS=2", "KCOMP=kcomp"]
    calls, _ = _dry_run(CASSAVA, *variables)
    produced = [c.redirect.removesuffix(".tmp") if c.redirect else c.opt("-o") for c in calls]
    produced[0] = f"{data}/index.parquet"  # prep's target
    for t, path in enumerate(produced):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("x")
        os.utime(path, (1_000_000 + t, 1_000_000 + t))
    assert _make(CASSAVA, "-q", *variables).returncode == 0, "make -q: something is out of date"

    os.utime(runs / "resnet50" / "fold1" / "train.json", (2_000_000, 2_000_000))
    redo, _ = _dry_run(CASSAVA, *variables)
    assert [c.sub for c in redo] == ["oof", "ensemble", "tune-threshold", "tta", "ensemble", "submit"]
    assert all("resnet50" in " ".join(c.positional) for c in redo if c.sub in ("oof", "tta"))


# --- examples/cassava/pipeline.sh --------------------------------------------------------------------------------

def _fake_kcomp(tmp_path: Path, fail_on: str = "") -> tuple[str, Path]:
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "fake_kcomp.py"
    fake.write_text("import json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    f"sys.exit(3 if sys.argv[1:2] == [{fail_on!r}] else 0)\n")
    return f"{sys.executable} {fake}", log


def _pipeline(raw: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CASSAVA / "pipeline.sh"), raw], env={**_env(), **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_pipeline_sh_runs_the_chain_for_one_model(tmp_path: Path) -> None:
    kcomp, log = _fake_kcomp(tmp_path)
    d, r, o = tmp_path / "d", tmp_path / "r", tmp_path / "o"
    proc = _pipeline("/some/raw", {"KCOMP": kcomp, "FOLDS": "2", "DATA": str(d), "RUNS": str(r), "OUT": str(o),
                                   "EXTRA": "--batch-size 8"})
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    run = f"{r}/tf_efficientnet_b3"
    assert [c[0] for c in calls] == ["prep", "split", "train", "train", "oof", "tta", "tune-threshold", "submit"]
    assert calls[0] == ["prep", "cassava", "/some/raw", "-o", str(d)]
    assert calls[1][:4] == ["split", f"{d}/index.parquet", "-o", f"{d}/folds2.parquet"]
    for k, c in enumerate(calls[2:4]):
        text = " ".join(c)
        assert f"--fold {k} " in text and f"-o {run} " in text and "--batch-size 8" in text
        recipe = Call({}, "train", c[1:], None).recipe()  # bi-tempered loss, CutMix, EMA
        assert c[c.index("--config") + 1] == f"{CASSAVA}/recipes/noisy-labels.yaml"
        assert recipe == {"loss": "bi_tempered", "t1": "0.8", "t2": "1.4", "cutmix": "1.0", "ema": "0.999"}
    assert calls[4][:4] == ["oof", run, "-o", f"{o}/oof_tf_efficientnet_b3.parquet"]
    assert calls[5][:4] == ["tta", run, "-o", f"{o}/test_tf_efficientnet_b3.parquet"]
    assert calls[6] == ["tune-threshold", f"{o}/oof_tf_efficientnet_b3.parquet", "-o", f"{o}/thresholds.json"]
    assert calls[7] == ["submit", "cassava", f"{o}/test_tf_efficientnet_b3.parquet", "-o", f"{o}/submission.csv",
                        "--thresholds", f"{o}/thresholds.json", "--sample", "/some/raw/sample_submission.csv"]


def test_pipeline_sh_stops_at_the_first_failure_and_wants_raw(tmp_path: Path) -> None:
    kcomp, log = _fake_kcomp(tmp_path, fail_on="train")
    proc = _pipeline("/raw", {"KCOMP": kcomp, "DATA": str(tmp_path / "d"), "RUNS": str(tmp_path / "r"),
                              "OUT": str(tmp_path / "o")})
    assert proc.returncode == 3
    assert [json.loads(line)[0] for line in log.read_text().splitlines()] == ["prep", "split", "train"]
    proc = subprocess.run(["bash", str(CASSAVA / "pipeline.sh")], env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


# --- examples/clouds, examples/vesuvius: the two-model chain for seg and ink ----------------------------------------

def test_clouds_dry_run_prints_the_chain(tmp_path: Path) -> None:
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    calls, other = _dry_run(CLOUDS, "RAW=/some/raw", f"DATA={data}", f"RUNS={runs}", f"OUT={out}")
    by_sub = _assert_chain(calls, comp="clouds", raw="/some/raw", data=data, runs=runs, out=out,
                           models={"unet-resnet34": "resnet34", "fpn-resnet34": "resnet34"}, folds=5, tta="2",
                           sample="/some/raw/sample_submission.csv", task="seg", strategy="auto")
    for c in by_sub["train"]:  # a Unet and an FPN on the same encoder, BCE + Dice
        assert c.opt("--arch") == Path(c.opt("-o")).name.split("-")[0]
        assert (c.opt("--img-size"), c.opt("--epochs"), c.opt("--seg-loss")) == ("384", "15", "bce_dice")
    for c in by_sub["oof"] + by_sub["tta"]:  # maps stored (and thresholds tuned) at the submission's size
        assert c.opt("--out-size") == "350x525"
    _assert_writes_only_under(calls, other, tmp_path)


def test_vesuvius_dry_run_prints_the_chain(tmp_path: Path) -> None:
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    calls, other = _dry_run(VESUVIUS, "RAW=/v", f"DATA={data}", f"RUNS={runs}", f"OUT={out}", "NGPU=4")
    by_sub = _assert_chain(calls, comp="vesuvius", raw="/v", data=data, runs=runs, out=out,
                           models={"ink5x7-resnet34": "resnet34", "ink6x6-resnet34": "resnet34"}, folds=4, tta="8",
                           sample="/v/sample_submission.csv", task="ink", strategy="group")
    assert calls[0].opt("--split-fragment") == "2"  # fragment 2 as two halves: 4 groups for 4 folds
    for c in by_sub["train"]:  # the README's recipe, with the layer choice of each variant
        assert c.opt("--layers") == Path(c.opt("-o")).name[3:6] and c.opt("--patch") == "224"
        assert (c.opt("--drop-path"), c.opt("--drop-rate"), c.opt("--ema"), c.opt("--smoothing")) == (
            "0.2", "0.4", "0.999", "0.1")
        assert c.opt("--img-size") is None  # ink trains on patches
        assert c.env == {"CUDA_VISIBLE_DEVICES": f"$(( {c.opt('--fold')} % 4 ))"}
    _assert_writes_only_under(calls, other, tmp_path)


@pytest.mark.parametrize("example", [CLOUDS, VESUVIUS], ids=["clouds", "vesuvius"])
def test_seg_and_ink_examples_have_no_stack_target(example: Path) -> None:
    proc = _make(example, "-n", "RAW=/r", "stack")
    assert proc.returncode != 0 and "stack" in proc.stderr  # stacking is for class probabilities


# --- examples/siim-covid19: detectors + classifiers, WBF, none/opacity fusion -----------------------------------

def test_siim_dry_run_prints_the_chain(tmp_path: Path) -> None:
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    calls, other = _dry_run(SIIM, "RAW=/s", f"DATA={data}", f"RUNS={runs}", f"OUT={out}", "FOLDS=3", "NGPU=2")
    subs = [c.sub for c in calls]
    assert sorted(set(subs)) == ["oof", "prep", "split", "submit", "train", "tta", "tune-threshold", "wbf"]
    prep, split = calls[0], calls[1]
    assert (prep.positional, prep.opt("-o"), prep.opt("--size")) == (["siim-covid19", "/s"], str(data), "512")
    assert split.positional == [f"{data}/index.parquet"] and split.opt("--strategy") == "group"
    folds_file = split.opt("-o")

    runs_of = {"det-tf_efficientdet_d0": (["det"], None, "tf_efficientdet_d0", "512"),
               "det-tf_efficientdet_d1": (["det"], None, "tf_efficientdet_d1", "640"),
               "study-tf_efficientnet_b3": (["cls"], "study", "tf_efficientnet_b3", "384"),
               "opacity-tf_efficientnet_b3": (["cls"], "has_opacity", "tf_efficientnet_b3", "384")}
    trains = [c for c in calls if c.sub == "train"]
    assert sorted((Path(c.opt("-o")).name, c.opt("--fold")) for c in trains) == sorted(
        (name, str(k)) for name in runs_of for k in range(3))
    for c in trains:
        name = Path(c.opt("-o")).name
        assert (c.positional, c.opt("--target"), c.opt("--model"), c.opt("--img-size")) == runs_of[name]
        assert c.opt("--folds") == folds_file and calls.index(c) > 1
        assert c.redirect == f"{runs}/{name}/fold{c.opt('--fold')}/train.json.tmp" and "--json" in c.args
        assert c.env == {"CUDA_VISIBLE_DEVICES": f"$(( {c.opt('--fold')} % 2 ))"}
        det = c.positional == ["det"]  # the recipes: EMA for all, label smoothing for the classifiers
        assert c.opt("--config") == f"recipes/{'det' if det else 'cls'}.yaml"
        assert (c.opt("--ema"), c.opt("--smoothing")) == ("0.999", None if det else "0.1")

    pred: dict[tuple[str, str], int] = {}
    for i, c in enumerate(calls):
        if c.sub in ("oof", "tta"):
            name = Path(c.positional[0]).name
            last_fold = max(j for j, t in enumerate(calls) if t.sub == "train" and Path(t.opt("-o")).name == name)
            assert i > last_fold, f"{c.sub} of {name} before its last fold finished training"
            assert c.opt("--tta") == ("4" if name.startswith("det") else "2")
            assert c.opt("-o") == f"{out}/{'test' if c.sub == 'tta' else 'oof'}_{name}.parquet"
            pred[c.sub, name] = i
    assert len(pred) == 8
    wbf = {c.opt("-o"): (i, c) for i, c in enumerate(calls) if c.sub == "wbf"}
    assert sorted(wbf) == [f"{out}/oof_det_wbf.parquet", f"{out}/test_det_wbf.parquet"]
    for kind, sub in (("oof", "oof"), ("test", "tta")):
        i, c = wbf[f"{out}/{kind}_det_wbf.parquet"]
        assert c.positional == [f"{out}/{kind}_det-tf_efficientdet_d0.parquet",
                                f"{out}/{kind}_det-tf_efficientdet_d1.parquet"]
        assert (c.opt("--iou"), c.opt("--skip-box-thr")) == ("0.6", "0.01")
        assert i > max(pred[sub, "det-tf_efficientdet_d0"], pred[sub, "det-tf_efficientdet_d1"])
    tune = _index(calls, "tune-threshold")
    assert calls[tune].positional == [f"{out}/oof_det_wbf.parquet"] and tune > wbf[f"{out}/oof_det_wbf.parquet"][0]
    submit = _index(calls, "submit")
    c = calls[submit]
    assert c.positional == ["siim-covid19", f"{out}/test_det_wbf.parquet",
                            f"{out}/test_study-tf_efficientnet_b3.parquet",
                            f"{out}/test_opacity-tf_efficientnet_b3.parquet"]
    assert (c.opt("--none-power"), c.opt("--sample"), c.opt("-o")) == ("0.3", "/s/sample_submission.csv",
                                                                       f"{out}/submission.csv")
    assert submit > max(wbf[f"{out}/test_det_wbf.parquet"][0], pred["tta", "study-tf_efficientnet_b3"],
                        pred["tta", "opacity-tf_efficientnet_b3"])
    _assert_writes_only_under(calls, other, tmp_path)


def test_siim_variables_reach_the_commands(tmp_path: Path) -> None:
    calls, other = _dry_run(SIIM, "RAW=/s", f"DATA={tmp_path}/d", f"RUNS={tmp_path}/r", f"OUT={tmp_path}/o",
                            "FOLDS=2", "DET_MODEL2=tf_efficientdet_d0", "DET_NAME2=d0-768", "DET_IMG2=768",
                            "CLS_MODEL=resnet50", "NONE_POWER=0.5", "DET_TTA=8", "SIZE=1024",
                            "DET_WEIGHTS=/w/d0.pth", "EXTRA=--batch-size 4", "TTA_SCALES=1,1.25")
    trains = [c for c in calls if c.sub == "train"]
    assert {Path(c.opt("-o")).name for c in trains} == {"det-tf_efficientdet_d0", "d0-768", "study-resnet50",
                                                        "opacity-resnet50"}
    for c in trains:
        name = Path(c.opt("-o")).name
        assert c.opt("--batch-size") == "4"
        assert c.opt("--weights") == ("/w/d0.pth" if name == "det-tf_efficientdet_d0" else None)
        if name == "d0-768":
            assert (c.opt("--model"), c.opt("--img-size")) == ("tf_efficientdet_d0", "768")
    assert calls[0].opt("--size") == "1024"
    assert {c.opt("--tta") for c in calls if c.sub in ("oof", "tta") and "det" in c.opt("-o")} == {"8"}
    assert {c.opt("--tta-scales") for c in calls if c.sub in ("oof", "tta")} == {"1,1.25"}
    assert next(c for c in calls if c.sub == "submit").opt("--none-power") == "0.5"
    _assert_writes_only_under(calls, other, tmp_path)


def test_siim_refuses_two_runs_in_one_dir() -> None:
    proc = _make(SIIM, "-n", "RAW=/r", "DET_NAME2=det-tf_efficientdet_d0")
    assert proc.returncode != 0 and "must differ" in proc.stderr


# --- every Makefile ---------------------------------------------------------------------------------------------

RECIPES = sorted(ROOT.glob("examples/*/recipes/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{r.parent.parent.name}/{r.name}" for r in RECIPES])
def test_recipes_are_train_options(recipe: Path) -> None:
    """`kcomp train --config RECIPE` reads every key of every shipped recipe as the option it names."""
    from typer.main import get_command

    from kcomp.commands.main import app

    ctx = get_command(app).commands["train"].make_context("train", ["cls", "--folds", "f", "-o", "r", "--config",
                                                                    str(recipe)])
    keys = Call({}, "train", ["--config", str(recipe)], None).recipe()
    assert keys, f"{recipe} sets nothing"
    for key in keys:
        assert ctx.get_parameter_source(key.replace("-", "_")).name == "DEFAULT_MAP", key


ALL = [CASSAVA, CLOUDS, SIIM, VESUVIUS, DEMO]
ALL_IDS = ["cassava", "clouds", "siim-covid19", "vesuvius", "demo"]


@pytest.mark.parametrize("example", ALL, ids=ALL_IDS)
def test_targets_are_real_files(tmp_path: Path, example: Path) -> None:
    """Once every output of `make -n` exists in order, `make -q` has nothing left to do (no phony or
    intermediate file in the chain)."""
    variables = ["RAW=/some/raw", f"DATA={tmp_path}/data", f"RUNS={tmp_path}/runs", f"OUT={tmp_path}/out", "FOLDS=2",
                 "KCOMP=kcomp"]
    calls, _ = _dry_run(example, *variables)
    assert calls[0].sub == "prep"
    produced = [f"{tmp_path}/data/index.parquet"] + [c.redirect.removesuffix(".tmp") if c.redirect else c.opt("-o")
                                                     for c in calls[1:]]
    for t, path in enumerate(produced):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("x")
        os.utime(path, (1_000_000 + t, 1_000_000 + t))
    proc = _make(example, "-q", *variables)
    assert proc.returncode == 0, f"make -q: something is out of date\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("example", ALL, ids=ALL_IDS)
def test_report_target_draws_runs_and_predictions(tmp_path: Path, example: Path) -> None:
    out = tmp_path / "out"
    calls, other = _dry_run(example, "RAW=/r", f"DATA={tmp_path}/d", f"RUNS={tmp_path}/r", f"OUT={out}", "FOLDS=2",
                            "report")
    report = calls[-1]
    assert report.sub == "report" and [c.sub for c in calls].count("report") == 1
    assert report.opt("-o") == f"{out}/report"
    trained = sorted({c.opt("-o") for c in calls if c.sub == "train"})
    inputs = report.positional
    assert sorted(i for i in inputs if i in trained) == trained  # every run's curves
    written = {c.opt("-o") for c in calls}
    assert all(i in written for i in inputs), inputs  # and only files the chain makes
    assert any(i.endswith(".parquet") and "/oof_" in i for i in inputs)
    _assert_writes_only_under(calls, other, tmp_path)


# --- examples/demo/Makefile --------------------------------------------------------------------------------------

def test_demo_dry_run_prints_the_chain(tmp_path: Path) -> None:
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    calls, other = _dry_run(DEMO, f"DATA={data}", f"RUNS={runs}", f"OUT={out}")
    by_sub = _assert_chain(calls, comp="demo", raw=f"{data}/raw", data=data, runs=runs, out=out,
                           models={"resnet18": "resnet18", "resnet18-light": "resnet18"}, folds=3, tta="2",
                           sample=f"{data}/raw/sample_submission.csv")
    for c in by_sub["train"]:
        assert (c.opt("--img-size"), c.opt("--epochs"), c.opt("--device")) == ("64", "3", "auto")
        light = c.opt("-o").endswith("resnet18-light")
        assert c.opt("--aug") == ("light" if light else None)
        assert c.opt("--seed") == ("7" if light else "42")
    _assert_writes_only_under(calls, other, tmp_path)


def test_demo_defaults_stay_inside_the_example_dir() -> None:
    calls, other = _dry_run(DEMO)
    for c in calls:
        for path in filter(None, [c.opt("-o"), c.redirect]):
            assert not os.path.isabs(path) and not path.startswith(".."), path


def _repo_files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@pytest.mark.slow
def test_demo_makefile_runs_end_to_end(tmp_path: Path) -> None:
    before = _repo_files(DEMO)
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    variables = [f"DATA={data}", f"RUNS={runs}", f"OUT={out}", f"KCOMP={KCOMP_MODULE}"]
    proc = _make(DEMO, *variables, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "oof: CV accuracy" in proc.stderr

    with open(data / "raw" / "sample_submission.csv") as f:
        sample = list(csv.DictReader(f))
    with open(out / "submission.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["image_id", "label"]
        rows = list(reader)
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in sample] and len(rows) == 60
    assert {int(r["label"]) for r in rows} <= set(range(5))
    assert len({r["label"] for r in rows}) > 1  # a trained model, not a constant
    assert _make(DEMO, "-q", *variables).returncode == 0  # every target is a real, up-to-date file

    proc = _make(DEMO, *variables, "stack", timeout=600)  # reuses the trained runs and their predictions
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train" not in proc.stdout.split() and " oof " not in proc.stdout
    with open(out / "submission_stack.csv") as f:
        assert [r["image_id"] for r in csv.DictReader(f)] == [r["image_id"] for r in sample]

    proc = _make(DEMO, *variables, "report", timeout=600)  # draws what exists; trains and predicts nothing
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train" not in proc.stdout.split() and " oof " not in proc.stdout and " tta " not in proc.stdout
    echoed = proc.stdout.replace("\\\n", " ").splitlines()
    assert [line.split()[-2:] for line in echoed if " report " in line] == [["-o", f"{out}/report"]]
    pngs = sorted(p.name for p in (out / "report").glob("*.png"))
    assert "resnet18_loss.png" in pngs and "oof_ens_confusion.png" in pngs, pngs
    assert (out / "report" / "index.html").stat().st_size > 1000
    assert _repo_files(DEMO) == before, "the demo wrote into the repository"


@pytest.mark.slow
def test_cassava_makefile_runs_on_a_miniature_download(tmp_path: Path, cassava_raw: Path) -> None:
    """The real Cassava flags (bi-tempered loss, CutMix, EMA) and submit against the sample, on tiny settings."""
    before = _repo_files(CASSAVA)
    variables = [f"RAW={cassava_raw}", f"DATA={tmp_path}/data", f"RUNS={tmp_path}/runs", f"OUT={tmp_path}/out",
                 f"KCOMP={KCOMP_MODULE}", "MODEL=resnet18", "MODEL2=resnet18", "NAME2=resnet18-b", "FOLDS=2",
                 "EPOCHS=1", "IMG=32", "TTA=2", "EXTRA=--batch-size 16 --workers 0 --no-pretrained"]
    proc = _make(CASSAVA, *variables, "all", "stack", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(cassava_raw / "sample_submission.csv") as f:
        ids = [r["image_id"] for r in csv.DictReader(f)]
    for name in ("submission.csv", "submission_stack.csv"):
        with open(tmp_path / "out" / name) as f:
            rows = list(csv.DictReader(f))
        assert [r["image_id"] for r in rows] == ids
        assert {int(r["label"]) for r in rows} <= set(range(5))
    assert _repo_files(CASSAVA) == before


@pytest.mark.slow
def test_pipeline_sh_runs_on_a_miniature_download(tmp_path: Path, cassava_raw: Path) -> None:
    env = {"KCOMP": KCOMP_MODULE, "DATA": str(tmp_path / "d"), "RUNS": str(tmp_path / "r"),
           "OUT": str(tmp_path / "o"), "MODEL": "resnet18", "FOLDS": "2", "EPOCHS": "1", "IMG": "32", "TTA": "2",
           "EXTRA": "--batch-size 16 --workers 0 --no-pretrained"}
    proc = _pipeline(str(cassava_raw), env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "o" / "submission.csv").read_text().startswith("image_id,label\n")
