"""`--config FILE.yaml` on every command (commands/_config.py) and `--help` grouped in panels (commands/_cli.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import typer

from tests.commands.test_options import invoke
from tests.conftest import run_cli

COMMANDS = ["prep", "split", "train", "oof", "tune-threshold", "tta", "wbf", "ensemble", "stack", "submit", "clean",
            "pseudo", "report", "pack"]


def _yaml(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _context(command: str, *args: str | Path) -> Any:
    """The click context of `kcomp COMMAND ARGS` once its options are read (nothing runs)."""
    from typer.main import get_command

    from kcomp.commands.main import app

    cmd = get_command(app).commands[command]
    return cmd.make_context(command, [str(a) for a in args])


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("config") / "data"
    assert run_cli("prep", "demo", "-o", data).code == 0
    return data / "index.parquet"


def _folds(path: Path) -> tuple[pd.DataFrame, str]:
    meta = json.loads(pq.read_schema(path).metadata[b"kcomp"])
    return pd.read_parquet(path), meta["command"]


# --- the file's values reach the computation, under the command line ---------------------------------------------

def test_split_from_a_file_writes_what_the_flags_write(tmp_path: Path, index: Path) -> None:
    recipe = _yaml(tmp_path, "folds: 3\nseed: 7\nstrategy: kfold\n")
    outs = {}
    for name, args in {"file": ["--config", recipe], "flags": ["--folds", "3", "--seed", "7", "--strategy", "kfold"],
                       "default": []}.items():
        outs[name] = tmp_path / f"{name}.parquet"
        r = run_cli("split", index, "-o", outs[name], *args)
        assert r.code == 0, r.stderr
    (file, command), (flags, _), (default, _) = map(_folds, outs.values())
    pd.testing.assert_frame_equal(file, flags)
    assert not file["fold"].equals(default["fold"]) and sorted(file["fold"][file["fold"] >= 0].unique()) == [0, 1, 2]
    # the recorded command is complete without the file: its options in place of --config
    assert "--config" not in command and command.endswith("--folds 3 --seed 7 --strategy kfold")


def test_the_command_line_wins_over_the_file(tmp_path: Path, index: Path) -> None:
    recipe = _yaml(tmp_path, "folds: 3\nseed: 7\nstrategy: kfold\n")
    both, flags = tmp_path / "both.parquet", tmp_path / "flags.parquet"
    assert run_cli("split", index, "-o", both, "--seed", "8", "--config", recipe).code == 0
    assert run_cli("split", index, "-o", flags, "--folds", "3", "--seed", "8", "--strategy", "kfold").code == 0
    (got, command), (want, _) = _folds(both), _folds(flags)
    pd.testing.assert_frame_equal(got, want)
    assert command.split().count("--seed") == 1 and "--seed 8" in command


def test_train_records_the_file_options_in_config_json(tmp_path: Path, index: Path) -> None:
    folds = tmp_path / "folds.parquet"
    assert run_cli("split", index, "-o", folds, "--folds", "2").code == 0
    recipe = _yaml(tmp_path, "lr: 3e-4\nbatch_size: 16\nimg-size: 32\nepochs: 1\nworkers: 0\n"
                             "deterministic: yes\npretrained: off\namp: off\n")
    r = run_cli("train", "cls", "--folds", folds, "-o", tmp_path / "run", "--config", recipe, "--batch-size", "8")
    assert r.code == 0, r.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    config = saved["config"]
    assert (config["lr"], config["img_size"], config["epochs"], config["workers"]) == (3e-4, 32, 1, 0)
    assert config["deterministic"] is True and config["pretrained"] is False and config["amp"] == "off"
    assert config["batch_size"] == 8  # the command line's
    command = saved["command"].split()
    assert "--config" not in command and "--batch-size" in command and command.count("--batch-size") == 1
    assert {"--lr", "3e-4", "--deterministic", "--no-pretrained", "--amp", "off"} <= set(command)


def test_values_are_read_as_the_command_line_reads_them(tmp_path: Path) -> None:
    recipe = _yaml(tmp_path, "lr: 1e-3\nextra: [a.parquet, b.parquet]\nchannels_last: false\nsync-bn: on\n"
                             "amp: off\nlayers: 5x7\n")
    ctx = _context("train", "ink", "--folds", "f", "-o", "r", "--config", recipe)
    p = ctx.params
    assert (p["lr"], p["extra"], p["channels_last"], p["sync_bn"]) == (1e-3, ["a.parquet", "b.parquet"], False, True)
    assert (p["amp"], p["layers"], p["task"], p["folds"]) == ("off", "5x7", "ink", "f")  # `off` is a word here
    one = _yaml(tmp_path, "extra: a.parquet\n", "one.yaml")  # a repeatable option given once
    assert _context("train", "cls", "--folds", "f", "-o", "r", "--config", one).params["extra"] == ["a.parquet"]
    empty = _yaml(tmp_path, "# nothing yet\n", "empty.yaml")
    assert _context("split", "i", "-o", "o", "--config", empty).params["folds"] == 5
    required = _yaml(tmp_path, "folds: f.parquet\n", "required.yaml")  # a required option may come from the file
    assert _context("train", "cls", "-o", "r", "--config", required).params["folds"] == "f.parquet"


def test_every_command_takes_a_config_file(tmp_path: Path) -> None:
    recipe = _yaml(tmp_path, "no_such_option: 1\n")
    for command in COMMANDS:
        r = invoke(command, "--config", recipe)
        assert r.code == 2, (command, r.stderr)
        assert f"kcomp: error: {recipe}: no_such_option: not an option of kcomp {command} (" in r.stderr, r.stderr


# --- bad files: exit 2, one line naming the file and the key -----------------------------------------------------

BAD = [  # (file text, what the one line says after "FILE: ")
    ("- lr\n- 3e-4\n", "a --config file is a mapping of `option: value` lines, not a list"),
    ("just text\n", "a --config file is a mapping of `option: value` lines, not a str"),
    ("folds: [3\n", "not valid YAML at line 2: expected ',' or ']'"),
    ("fods: 3\n", "fods: not an option of kcomp split (did you mean folds?)"),
    ("zzz: 3\n", "zzz: not an option of kcomp split (its options: folds, group-col, json, label-col, seed, strategy)"),
    ("folds: many\n", "folds: 'many': invalid value for --folds: "),
    ("folds: [3, 4]\n", "folds: --folds takes one value, not a list"),
    ("folds: {n: 3}\n", "folds: give a value or a list of values, not a mapping or nested lists"),
    ("index: x.parquet\n", "index: INDEX is an argument of kcomp split: arguments stay on the command line"),
    ("output: x.parquet\n", "output: where kcomp split writes (-o/--output) stays on the command line"),
    ("o: x.parquet\n", "o: where kcomp split writes (-o/--output) stays on the command line"),
    ("config: other.yaml\n", "config: a --config file cannot name another one"),
    ("seed: 1\nlabel-col: a\nlabel_col: b\n", "label_col: --label-col is set twice in the file"),
]


@pytest.mark.parametrize(("text", "line"), BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_a_bad_file_is_one_line(tmp_path: Path, text: str, line: str) -> None:
    recipe = _yaml(tmp_path, text)
    r = invoke("split", tmp_path / "index.parquet", "-o", tmp_path / "folds.parquet", "--config", recipe)
    assert r.code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"kcomp: error: {recipe}: {line}"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_unreadable_files_and_other_outputs(tmp_path: Path) -> None:
    missing, binary = tmp_path / "missing.yaml", tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00lr")
    for path, line in [(missing, "cannot read the --config file: No such file or directory"),
                       (tmp_path, "cannot read the --config file: Is a directory"),
                       (binary, "the --config file is not UTF-8 text")]:
        r = invoke("split", "i.parquet", "-o", "f.parquet", "--config", path)
        assert r.code == 2 and r.stderr == f"kcomp: error: {path}: {line}\n", r.stderr
    recipe = _yaml(tmp_path, "oof_output: level2.parquet\n")
    r = invoke("stack", "a.parquet", "-o", "s.parquet", "--config", recipe)
    assert r.code == 2 and "oof_output: where kcomp stack writes (--oof-output) stays on the command line" in r.stderr


def test_the_recorded_command_replaces_config_in_place() -> None:
    from kcomp.commands._config import _replace_config

    assert _replace_config(["i", "--config", "a.yaml", "-o", "f"], ["--seed", "7"]) == [
        "i", "--seed", "7", "-o", "f"]
    assert _replace_config(["i", "--config=a.yaml", "--config", "b.yaml"], ["--json"]) == ["i", "--json"]


# --- --help in panels ---------------------------------------------------------------------------------------------

def _help_sections(command: str) -> dict[str, list[str]]:
    """Heading -> the options listed under it (their first flag), parsed from `kcomp COMMAND --help`."""
    r = invoke(command, "--help")
    assert r.code == 0, r.stderr
    sections: dict[str, list[str]] = {}
    heading = None
    for line in r.stdout.splitlines():
        if re.fullmatch(r"\S.*:", line):
            heading = line[:-1]
            sections[heading] = []
        elif heading and (m := re.match(r"  (-\w, )?(--[\w-]+)", line)):
            sections[heading].append(m[2])
    return sections


TRAIN_PANELS = {
    "Common options": ["--folds", "--output", "--fold", "--model", "--epochs", "--seed", "--json", "--config",
                       "--help"],
    "Optimisation": ["--lr", "--weight-decay", "--warmup-epochs", "--accum", "--ema"],
    "Augmentation": ["--aug", "--mixup", "--cutmix", "--mix-prob"],
    "cls": ["--target", "--loss", "--t1", "--t2", "--taylor-n"],
    "seg": ["--arch", "--seg-loss"],
    "ink": ["--layers", "--layer-start", "--patch", "--stride", "--layer-shift", "--neg-fraction"],
    "Data loop": ["--drop", "--relabel", "--extra", "--teacher", "--distill-alpha", "--distill-temperature"],
    "Devices and distributed": ["--device", "--workers", "--compile", "--amp", "--channels-last", "--sync-bn", "--gpus",
                                "--nodes", "--node-rank", "--master-addr", "--master-port", "--parallel-folds"],
}


def test_train_help_groups_options_in_panels() -> None:
    sections = _help_sections("train")
    order = [h for h in ["Arguments", *TRAIN_PANELS] if h in sections]
    assert list(sections) == [*order, *[h for h in sections if h not in order]]
    assert set(TRAIN_PANELS) <= set(sections)
    for panel, options in TRAIN_PANELS.items():
        assert set(options) <= set(sections[panel]), (panel, sections[panel])
    listed = [o for opts in sections.values() for o in opts]
    assert len(listed) == len(set(listed))  # each option once


def test_panels_come_from_the_options_attribute() -> None:
    """Whatever declares `rich_help_panel` (an option added later included) is listed under it; a command with no
    panels keeps click's single "Options" heading."""
    from typer.main import get_command

    from kcomp.commands.main import app

    group = get_command(app)
    for name in ("train", "oof", "tta", "pack"):
        sections = _help_sections(name)
        for param in group.commands[name].params:
            long = next((o for o in reversed(param.opts) if o.startswith("--")), None)
            if param.param_type_name == "option" and long and not param.hidden:
                panel = getattr(param, "rich_help_panel", None) or "Common options"
                assert long in sections[panel], (name, long, panel)
    assert list(_help_sections("split")) == ["Arguments", "Options"]


def test_a_new_panel_is_drawn_after_the_known_ones() -> None:
    from typer.main import get_command
    from typer.testing import CliRunner

    from kcomp.commands import _cli

    app = typer.Typer(rich_markup_mode=None)

    @app.command()
    def fit(nms: Annotated[float, typer.Option(rich_help_panel="det")] = 0.5,
            extra: Annotated[int, typer.Option(rich_help_panel="Zeta")] = 0,
            lr: Annotated[float, typer.Option(rich_help_panel="Optimisation")] = 0.1, seed: int = 0) -> None:
        """Fit."""

    @app.command()
    def other() -> None:
        """A second command, so `fit` is a subcommand."""

    _cli.install(app)
    assert isinstance(get_command(app).commands["fit"], _cli.KcompCommand)
    text = CliRunner().invoke(app, ["fit", "--help"]).output
    headings = [line[:-1] for line in text.splitlines() if re.fullmatch(r"\S.*:", line)]
    assert headings == ["Common options", "Optimisation", "det", "Zeta"]
    assert re.search(r"det:\n  --nms", text) and re.search(r"Common options:\n  --seed", text)
