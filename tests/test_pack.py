"""`kcomp pack`: the package's parts (stripped fp16 weights, manifest, verify, notebook = predict.sh, the time
estimate, the error contract) on the session's demo run; the slow test replays a two-run ensemble in a fresh offline
environment that has only the base packages, and gets the local submission byte for byte."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_chain, run_cli
from tests.pack_fixture import fresh_venv, wheel_from_installed, write_base


def _pack(*args: str | Path, cwd: Path | None = None) -> dict:
    r = run_cli("pack", *args, "--json", cwd=cwd, timeout=600)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def packed(demo_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo run's test predictions packed with --half against a base that has everything but kcomp."""
    root = tmp_path_factory.mktemp("pack")
    write_base(root / "base.txt", set())
    pkg = root / "pkg"
    summary = _pack(demo_run["test"], demo_run["run"], "--comp", "demo", "-o", pkg, "--base", root / "base.txt",
                    "--half", "--test-images", "1000", "--time-limit", "1h")
    return {"root": root, "pkg": pkg, "summary": summary}


def test_models_hold_only_the_evaluated_weights_in_fp16(packed: dict, demo_run: dict[str, Path]) -> None:
    import torch

    from kcomp.artifacts import paths

    pkg, run = packed["pkg"], demo_run["run"]
    name = run.name
    assert (pkg / "models" / name / "config.json").read_bytes() == paths.config(run).read_bytes()
    folds = paths.trained_folds(run)
    assert paths.trained_folds(pkg / "models" / name) == folds
    for fold in folds:
        ck = torch.load(pkg / "models" / name / f"fold{fold}" / "best.pt", weights_only=True)
        assert not {"optimizer", "scheduler", "scaler", "rng", "ema", "history"} & set(ck)
        assert {"config", "setup", "task", "schema"} <= set(ck)
        src = torch.load(paths.best_checkpoint(run, fold), weights_only=True)["model"]
        assert set(ck["model"]) == set(src)
        for k, v in ck["model"].items():
            assert v.dtype == (torch.float16 if src[k].is_floating_point() else src[k].dtype), k
            torch.testing.assert_close(v.float(), src[k].float(), rtol=1e-3, atol=1e-3) if v.is_floating_point() \
                else torch.testing.assert_close(v, src[k])
        assert not (pkg / "models" / name / f"fold{fold}" / "last.pt").exists()  # tta used best.pt only
    s = packed["summary"]
    assert s["runs_bytes"] >= 3 * s["bytes"], (s["runs_bytes"], s["bytes"])  # resnet18: no optimizer state, fp16


def test_fp16_weights_load_into_float32_modules() -> None:
    """`pack --half` stores fp16; a model built on them (on the meta device, `assign=True`) keeps float32."""
    import torch

    from kcomp.models import create_cls_model
    from kcomp.models._factory import build_with_weights

    src = create_cls_model("resnet18", 3)
    half = {k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    model = build_with_weights(lambda: create_cls_model("resnet18", 3), half)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), src.eval()(x), rtol=1e-2, atol=1e-2)


def test_notebook_holds_the_commands_of_predict_sh(packed: dict) -> None:
    import nbformat

    pkg = packed["pkg"]
    nb = nbformat.read(pkg / "predict.ipynb", as_version=4)
    nbformat.validate(nb)
    sh = (pkg / "predict.sh").read_text()
    assert subprocess.run(["bash", "-n", str(pkg / "predict.sh")], check=False).returncode == 0
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    compile(cells[0], "env cell", "exec")
    bash = [c.removeprefix("%%bash\nset -euo pipefail\n") for c in cells[1:]]
    assert all(c.startswith("%%bash\n") for c in cells[1:])
    commands = [ln for c in bash for ln in c.splitlines() if not ln.startswith("#")]
    assert commands == packed["summary"]["commands"]
    assert [ln for ln in sh.splitlines() if ln in commands] == commands  # same lines, same order
    for var, default in [("INPUT", "/kaggle/input/demo"), ("WORK", "/kaggle/working/kcomp"),
                         ("OUT", "/kaggle/working/submission.csv")]:
        assert f'export {var}="${{{var}:-{default}}}"' in sh and f'"{var}", {default!r}' in cells[0]
    assert f"find_package({packed['summary']['id']!r})" in cells[0]
    steps = [c.split()[1] for c in commands if c.startswith("kcomp ")]
    assert steps == ["pack", "prep", "tta", "submit"]
    tta = next(c for c in commands if c.startswith("kcomp tta"))
    assert '"$PKG/models/run" "$WORK/data/index.parquet" -o "$WORK/pred/test.parquet"' in tta
    assert "--workers 0" in tta  # recorded options travel; --device would not
    assert commands[-1] == ('kcomp submit demo "$WORK/pred/test.parquet" -o "$OUT" '
                            '--sample "$INPUT/sample_submission.csv"')


def test_manifest_and_estimate(packed: dict) -> None:
    pkg, s = packed["pkg"], packed["summary"]
    manifest = json.loads((pkg / "MANIFEST.json").read_text())
    files = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()} - {"MANIFEST.json"}
    assert set(manifest["files"]) == files
    assert all(re.fullmatch(r"[0-9a-f]{64}", e["sha256"]) for e in manifest["files"].values())
    assert manifest["kcomp_version"] and manifest["commands"] == s["commands"] and manifest["id"] == s["id"]
    assert [w.split("-")[0] for w in s["wheels"]] == ["kcomp"]  # the base has everything else
    est = s["estimate"]
    assert est["seconds_per_image"] > 0 and est["steps"][0]["device"] == "cpu"  # recorded by the session's tta
    assert est["seconds"] == pytest.approx(1000 * est["seconds_per_image"])
    assert est["fits"] == (est["seconds"] <= 3600) and est["time_limit"] == 3600
    from tests.test_report import _documented

    assert set(s) == set(_documented()["pack"]), sorted(s)


def test_verify_names_a_changed_missing_or_extra_file(packed: dict) -> None:
    pkg = packed["pkg"]
    assert run_cli("pack", "--verify", pkg).code == 0
    target = pkg / "models" / "run" / "config.json"
    original = target.read_bytes()
    try:
        target.write_bytes(original + b" ")
        r = run_cli("pack", "--verify", pkg)
        assert r.code == 2 and "models/run/config.json: changed since packing" in r.last_error_line
        target.unlink()
        r = run_cli("pack", "--verify", pkg)
        assert r.code == 2 and "models/run/config.json: missing" in r.last_error_line
    finally:
        target.write_bytes(original)
    extra = pkg / "wheels" / "extra.whl"
    extra.write_bytes(b"x")
    try:
        r = run_cli("pack", "--verify", pkg)
        assert r.code == 2 and "wheels/extra.whl: not in MANIFEST.json" in r.last_error_line
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        extra.unlink()
    (pkg / "dataset-metadata.json").write_text("{}")  # `kaggle datasets init` writes it; it is not uploaded
    try:
        assert run_cli("pack", "--verify", pkg).code == 0
    finally:
        (pkg / "dataset-metadata.json").unlink()


def test_stack_replays_its_test_inputs_and_ships_its_oof_inputs(demo_run: dict[str, Path], tmp_path: Path) -> None:
    from kcomp.pack._argv import render
    from kcomp.pack.chain import Tracer

    stacked = tmp_path / "stacked.parquet"
    r = run_cli("stack", demo_run["oof"], "--test", demo_run["test"], "-o", stacked, "--folds", "2")
    assert r.code == 0, r.stderr
    plan = Tracer("demo", []).plan([stacked], None)
    assert [s.kind for s in plan.steps] == ["prep", "tta", "stack"]
    assert list(plan.statics.values()) == [demo_run["oof"].resolve()]
    assert render(plan.steps[-1].argv) == ('kcomp stack "$PKG/inputs/oof.parquet" --test "$WORK/pred/test.parquet" '
                                           '-o "$WORK/pred/stacked.parquet" --folds 2')
    both = Tracer("demo", []).plan([demo_run["test"], stacked], None)  # an intermediate given too: not submitted
    assert [render([r]) for r in both.finals] == ['"$WORK/pred/stacked.parquet"']


def test_thresholds_and_intermediates_given_travel_into_submit(demo_run: dict[str, Path], tmp_path: Path) -> None:
    from kcomp.artifacts import write_json
    from kcomp.pack.build import _blocks
    from kcomp.pack.chain import Tracer

    thr = tmp_path / "thr.json"
    write_json(thr, "thresholds", {"task": "cls", "method": "argmax", "metric": "accuracy", "score": 0.5})
    plan = Tracer("demo", [demo_run["run"]]).plan([demo_run["test"], demo_run["test"]], thr)
    assert [s.kind for s in plan.steps] == ["prep", "tta"] and list(plan.statics) == ["inputs/thr.json"]
    submit = _blocks(plan, "demo", "", None)[-1].lines
    assert submit == ['kcomp submit demo "$WORK/pred/test.parquet" -o "$OUT" --thresholds "$PKG/inputs/thr.json"']


def _error(demo: dict[str, Path], tmp: Path, args: list) -> str:
    from kcomp.errors import KcompError
    from kcomp.pack import pack

    kwargs = {"competition": "demo", "output": str(tmp / "pkg")}
    inputs = []
    for a in args:
        if isinstance(a, tuple):
            kwargs[a[0]] = a[1](demo, tmp) if callable(a[1]) else a[1]
        else:
            inputs.append(str(a(demo, tmp)) if callable(a) else a)
    with pytest.raises(KcompError) as e:
        pack(inputs, **kwargs)
    return str(e.value)


def _nonempty(demo: dict, tmp: Path) -> str:
    (tmp / "full").mkdir()
    (tmp / "full" / "notes.txt").write_text("mine")
    return str(tmp / "full")


def _plain_dir(demo: dict, tmp: Path) -> Path:
    (tmp / "plain").mkdir()
    return tmp / "plain"


def _test(demo: dict, tmp: Path) -> Path:
    return demo["test"]


ERRORS = [
    ([_test, ("competition", "nope")], r"unknown competition 'nope'"),
    ([_test, _plain_dir], r"plain: directory is not a run directory \(no config.json\)"),
    ([_test, ("competition", "clouds")], r"seg submissions are cut at tuned thresholds"),
    ([_test, ("output", lambda d, t: d["run"])], r"-o .*run: overlaps the input"),
    ([_test, ("output", lambda d, t: d["run"] / "pkg")], r"overlaps the input .*run \(is it"),
    ([_test, ("output", _nonempty)], r"exists, is not empty and is not a kcomp package"),
    ([_test, ("output", "-")], r"a package is a directory"),
    ([lambda d, t: d["oof"]], r"oof.parquet: holds oof predictions"),
    ([lambda d, t: d["run"]], r"give the test predictions `kcomp submit` takes"),
    ([_test, ("time_limit", "soon")], r"--time-limit soon: expected a positive duration"),
    ([_test, ("test_images", 0)], r"--test-images 0: must be at least 1"),
    ([_test, ("none_power", 0.3)], r"--none-power does not apply to competition demo"),
    ([_test, ("base", lambda d, t: t / "none.txt")], r"none.txt: no such file"),
    ([_test, ("sample", "../x.csv")], r"--sample \.\./x\.csv"),
    ([_test, ("work", "/tmp/$HOME")], r"--work '/tmp/\$HOME': give a path without quotes"),
    ([_test, ("find_links", lambda d, t: [str(t / "nowhere")])], r"nowhere: --find-links: no such directory"),
    ([_test, _test, lambda d, t: d["run"].parent.parent / "elsewhere.json"], r"elsewhere.json: no such file"),
]


@pytest.mark.parametrize(("args", "pattern"), ERRORS)
def test_pack_errors(args: list, pattern: str, demo_run: dict[str, Path], tmp_path: Path) -> None:
    assert re.search(pattern, _error(demo_run, tmp_path, args))
    assert not (tmp_path / "pkg").exists() and not list(tmp_path.glob(".pkg.*"))


def test_pack_cli_errors_are_one_line_exit_2(demo_run: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("pack", tmp_path, "--comp", "demo", "-o", tmp_path / "pkg")
    assert r.code == 2 and r.last_error_line.endswith("directory is not a run directory (no config.json)")
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    r = run_cli("pack", "--verify", tmp_path)
    assert r.code == 2 and "not a kcomp package (no MANIFEST.json)" in r.last_error_line
    r = run_cli("pack", demo_run["test"], "--verify", tmp_path)
    assert r.code == 2 and "give no inputs" in r.last_error_line


def test_wheels_left_out_are_what_the_kaggle_image_has() -> None:
    from importlib import metadata

    from kcomp.pack.wheels import DEFAULT_BASE, missing, read_base

    base = read_base(DEFAULT_BASE)
    assert base["torch"] and base["timm"] and "ensemble-boxes" not in base
    requires = metadata.distribution("kcomp").requires or []
    pins, _ = missing([r for r in requires if "extra ==" not in r], base)
    names = {p.name for p in pins}
    assert {"ensemble-boxes", "effdet", "segmentation-models-pytorch"} <= names
    assert not names & {"torch", "torchvision", "numpy", "timm", "pandas"}
    assert all(p.version == metadata.version(p.name) for p in pins)  # the versions the local chain ran with
    pins, _ = missing(["typer>=0.12"], {"typer": "0.9.0"})  # the image's typer is too old: ship ours
    assert "typer" in {p.name for p in pins}


def test_base_list_errors_name_the_line(tmp_path: Path) -> None:
    from kcomp.errors import BadInput
    from kcomp.pack.wheels import read_base

    (tmp_path / "base.txt").write_text("# image\ntorch==2.10.0+cu126\n\nnot a requirement!!\n")
    with pytest.raises(BadInput, match=r"base.txt: line 4: not a requirement"):
        read_base(tmp_path / "base.txt")


def test_recorded_command_lines_parse() -> None:
    from kcomp.pack._argv import parse
    from kcomp.pack.estimate import parse_duration

    rec = parse("/x/commands/main.py --quiet tta runs/a 'runs/b c' -o p.parquet --tta=4 --json --workers 0", "f")
    assert rec.sub == "tta" and rec.positionals == ["runs/a", "runs/b c"]
    assert rec.options == [("-o", "p.parquet"), ("--tta", "4"), ("--json", None), ("--workers", "0")]
    assert [parse_duration(t) for t in ("9h", "90m", "1h30m", "3600")] == [32400, 5400, 5400, 3600]


# ------------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_package_replays_an_ensemble_offline_byte_for_byte(tmp_path: Path) -> None:
    """Two runs + an ensemble, packed; a fresh venv holding only the base packages (everything here but kcomp and
    ensemble-boxes, which the package ships as wheels), no network; predict.sh on the demo's raw layout writes the
    local submission exactly."""
    data = tmp_path / "data"
    train = ["--folds", "data/folds.parquet", "--fold", "all", "--img-size", "32", "--epochs", "1", "--batch-size",
             "32", "--workers", "0"]
    run_chain([
        ("prep", "demo", "-o", "data"),
        ("split", "data/index.parquet", "-o", "data/folds.parquet", "--folds", "2"),
        ("train", "cls", *train, "-o", "runs/a"),
        ("train", "cls", *train, "--ema", "0.9", "--seed", "7", "-o", "runs/b"),
        ("tta", "runs/a", "-o", "pred/a.parquet", "--tta", "2", "--workers", "0"),
        ("tta", "runs/b", "-o", "pred/b.parquet", "--checkpoints", "best+last", "--workers", "0"),
        ("ensemble", "pred/a.parquet", "pred/b.parquet", "-o", "pred/ens.parquet", "--weights", "1,2"),
        ("submit", "demo", "pred/ens.parquet", "-o", "submission.csv"),
    ], cwd=tmp_path)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    wheel_from_installed("ensemble-boxes", wheelhouse)
    base = write_base(tmp_path / "base.txt", {"ensemble-boxes"})
    summary = _pack("runs/a", "runs/b", "pred/ens.parquet", "--comp", "demo", "-o", "pkg", "--base", "base.txt",
                    "--find-links", wheelhouse, "--no-index", cwd=tmp_path)
    assert sorted(w.split("-")[0] for w in summary["wheels"]) == ["ensemble_boxes", "kcomp"]
    assert (tmp_path / "pkg/models/b/fold0/last.pt").is_file()  # best+last travels with its last.pt

    python = fresh_venv(tmp_path / "venv", base)
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "INPUT": str(data / "raw"),
           "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out" / "submission.csv")}
    isolate = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0 else []
    proc = subprocess.run([*isolate, "bash", str(tmp_path / "pkg" / "predict.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code = "import kcomp, ensemble_boxes; print(kcomp.__file__, ensemble_boxes.__file__)"
    where = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                           check=False)
    assert where.stdout.count(str(tmp_path / "venv" / "lib")) == 2, where  # installed from the package's wheels
    assert (tmp_path / "out" / "submission.csv").read_bytes() == (tmp_path / "submission.csv").read_bytes()

    # --half: a sixth of the runs' size for resnet18, predictions within fp16 rounding of the originals
    half = _pack("runs/a", "runs/b", "pred/ens.parquet", "--comp", "demo", "-o", "pkg-half", "--base", "base.txt",
                 "--find-links", wheelhouse, "--no-index", "--half", cwd=tmp_path)
    assert half["runs_bytes"] >= 3 * half["bytes"]
    r = run_cli("tta", "pkg-half/models/b", "data/index.parquet", "-o", "half.parquet", "--checkpoints", "best+last",
                "--workers", "0", cwd=tmp_path)
    assert r.code == 0, r.stderr
    from kcomp.artifacts.predictions import read_predictions

    local, fp16 = read_predictions(tmp_path / "pred/b.parquet"), read_predictions(tmp_path / "half.parquet")
    assert list(local.df["id"]) == list(fp16.df["id"]) and abs(local.probs() - fp16.probs()).max() < 1e-3
