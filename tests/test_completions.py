"""Shell completion: the checked-in scripts are current, they complete in real shells, and neither completion nor
`--help` pays for torch & co."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"
GEN = ROOT / "tools" / "gen_completions.py"
COMMANDS = ["prep", "split", "train", "oof", "tta", "wbf", "ensemble", "stack", "tune-threshold", "submit",
            "clean", "pseudo", "pack", "report"]
# What a completion request or --help must not import (seconds of start-up each).
HEAVY = ["torch", "torchvision", "timm", "pandas", "pyarrow", "albumentations", "sklearn", "scipy", "cv2",
         "segmentation_models_pytorch", "effdet", "matplotlib", "numpy", "numba", "pydicom", "cleanlab",
         "yaml"]  # yaml: only a --config file given to a command is read with it (commands/_config.py)
# --help also stays clear of rich (kcomp.console imports it on first use) and of pydantic (typer imports it to
# coerce an option value that is not a bool; the root group's unset flags are False, see commands/main.py).
HELP_HEAVY = [*HEAVY, "rich", "pydantic"]
# The CLI as the console script sees it: program name `kcomp`, so the completion variable is _KCOMP_COMPLETE.
RUNNER = "import sys; sys.argv[0] = 'kcomp'; from kcomp.commands.main import run; run()"
CONSOLE_SCRIPT = Path(sys.executable).parent / "kcomp"


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_completions", GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_KCOMP", "_TYPER", "COMP_"))}
    if CONSOLE_SCRIPT.exists():
        env["PATH"] = f"{CONSOLE_SCRIPT.parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _kcomp() -> list[str]:
    """`kcomp` itself when installed (what the shell scripts call), else the same entry point via python."""
    return [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-c", RUNNER]


def _complete(shell: str, line: str) -> list[str]:
    """Ask the CLI for completions of `line` (cursor at its end) with typer's protocol for `shell`."""
    if shell == "bash":  # the bash shim passes the words and the index of the word under the cursor
        words = line.split()
        cword = len(words) if line.endswith(" ") else len(words) - 1
        env = _env(_KCOMP_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(cword))
    else:  # zsh and fish pass the command line up to the cursor
        env = _env(_KCOMP_COMPLETE=f"complete_{shell}", _TYPER_COMPLETE_ARGS=line,
                   _TYPER_COMPLETE_FISH_ACTION="get-args")
    proc = subprocess.run(_kcomp(), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


# --- the checked-in scripts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_checked_in_script_is_current(shell: str) -> None:
    gen = _gen_module()
    path = COMPLETIONS / gen.FILES[shell]
    assert path.exists(), f"{path} missing: run python tools/gen_completions.py"
    assert path.read_text() == gen.render(shell), f"{path} is stale: run python tools/gen_completions.py"


def test_gen_check_mode_passes_on_the_repo() -> None:
    proc = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not list(COMPLETIONS.glob(".*.tmp"))


def test_gen_writes_prints_and_detects_drift(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(GEN), "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = {"kcomp.bash", "_kcomp", "kcomp.fish"}
    assert {Path(line).name for line in proc.stdout.split()} == names
    assert {p.name for p in tmp_path.iterdir()} == names
    for name in names:
        assert (tmp_path / name).read_text() == (COMPLETIONS / name).read_text()
    (tmp_path / "kcomp.fish").write_text("# edited by hand\n")
    (tmp_path / "_kcomp").unlink()
    proc = subprocess.run([sys.executable, str(GEN), "--check", "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "kcomp.fish: differs" in proc.stderr and "_kcomp: missing" in proc.stderr
    assert (tmp_path / "kcomp.fish").read_text() == "# edited by hand\n"  # --check never writes
    assert not (tmp_path / "_kcomp").exists()


def test_zsh_script_keeps_compdef_first_and_completes_on_first_tab() -> None:
    text = (COMPLETIONS / "_kcomp").read_text()
    assert text.startswith("#compdef kcomp\n")  # compinit only picks up files whose first line says so
    assert "loadautofunc" in text and "compdef _kcomp_completion kcomp" in text


# --- the protocol the scripts speak ------------------------------------------------------------------------------

def test_bash_completes_subcommands() -> None:
    assert _complete("bash", "kcomp pr") == ["prep"]
    assert set(_complete("bash", "kcomp t")) == {"train", "tta", "tune-threshold"}
    assert set(COMMANDS) <= set(_complete("bash", "kcomp "))


def test_bash_completes_options() -> None:
    assert _complete("bash", "kcomp train --ep") == ["--epochs"]
    assert set(_complete("bash", "kcomp train --w")) == {"--weight-decay", "--warmup-epochs", "--weights",
                                                        "--weights-partial", "--workers"}
    assert _complete("bash", "kcomp tune-threshold --o") == ["--output"]
    assert "--folds" in _complete("bash", "kcomp split --")
    assert _complete("bash", "kcomp --vers") == ["--version"]


def test_zsh_and_fish_protocols() -> None:
    zsh = "\n".join(_complete("zsh", "kcomp pr"))
    assert zsh.startswith("_arguments") and '"prep"' in zsh
    fish = _complete("fish", "kcomp train --ep")
    assert [line.split("\t")[0] for line in fish] == ["--epochs"]


# --- the scripts in real shells ----------------------------------------------------------------------------------

needs_console_script = pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="kcomp console script not installed")


@needs_console_script
@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_script_in_bash() -> None:
    script = f"""
        source {COMPLETIONS / 'kcomp.bash'}
        complete -p kcomp
        COMP_WORDS=(kcomp train --ep); COMP_CWORD=2; _kcomp_completion kcomp
        printf 'reply:%s\\n' "${{COMPREPLY[@]}}"
        COMP_WORDS=(kcomp pr); COMP_CWORD=1; _kcomp_completion kcomp
        printf 'reply:%s\\n' "${{COMPREPLY[@]}}"
    """
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "complete -o default -F _kcomp_completion kcomp" in proc.stdout
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("reply:")] == ["reply:--epochs", "reply:prep"]


@needs_console_script
@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_script_in_fish() -> None:
    script = f"source {COMPLETIONS / 'kcomp.fish'}; complete -C 'kcomp pr'; complete -C 'kcomp train --ep'"
    proc = subprocess.run(["fish", "--no-config", "-c", script], env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [ln.split("\t")[0] for ln in proc.stdout.splitlines()] == ["prep", "--epochs"]


@needs_console_script
@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_script_in_zsh_autoloaded_and_sourced() -> None:
    # Completion widgets need a terminal; stub the two completion-system calls the script makes and call it the
    # ways zsh does: autoloaded from $fpath on the first Tab (must complete at once), and after `source`.
    stubs = 'compdef() { print -r -- "compdef $*" }; _arguments() { print -r -- "args $*" }'
    autoload = f"""{stubs}
        fpath=({COMPLETIONS} $fpath); autoload -Uz _kcomp
        words=(kcomp pr); CURRENT=2; _kcomp
    """
    sourced = f"""{stubs}
        source {COMPLETIONS / '_kcomp'}
        words=(kcomp train --ep); CURRENT=3; _kcomp_completion
    """
    out = []
    for script in (autoload, sourced):
        proc = subprocess.run(["zsh", "-f", "-c", script], env=_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out.append(proc.stdout.splitlines())
    assert out[0][0] == "compdef _kcomp_completion kcomp"
    assert out[0][1].startswith("args *: :((") and '"prep"' in out[0][1]
    assert out[1][0] == "compdef _kcomp_completion kcomp"
    assert out[1][1].startswith("args *: :((") and '"--epochs"' in out[1][1]


# --- start-up cost -----------------------------------------------------------------------------------------------

def _heavy_after(code: str, env: dict[str, str], heavy: list[str] = HEAVY
                 ) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run `code` in a fresh interpreter; which `heavy` modules were imported by the time it exited."""
    probe = ("import atexit, json, sys\n"
             f"atexit.register(lambda: print('HEAVY=' + json.dumps([m for m in {heavy!r} if m in sys.modules]), "
             "file=sys.stderr))\n" + code)
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert lines, proc.stderr
    return json.loads(lines[-1][len("HEAVY="):]), proc


@pytest.mark.parametrize("line", ["kcomp pr", "kcomp train --ep", "kcomp submit cassava ", "kcomp oof ",
                                  "kcomp train --config recipe.yaml --ep"])
def test_completion_request_imports_nothing_heavy(line: str) -> None:
    words = line.split()
    env = _env(_KCOMP_COMPLETE="complete_bash", COMP_WORDS=line,
               COMP_CWORD=str(len(words) if line.endswith(" ") else len(words) - 1))
    heavy, proc = _heavy_after(RUNNER, env)
    assert proc.returncode == 0, proc.stderr
    assert heavy == [], f"completing {line!r} imported {heavy}"


def test_help_imports_nothing_heavy() -> None:
    code = f"""
from typer.main import get_command
from typer.testing import CliRunner
from kcomp.commands.main import app
names = sorted(get_command(app).commands)
assert names == sorted({COMMANDS!r}), names
runner = CliRunner()
for args in [["--help"], ["--version"]] + [[c, "--help"] for c in {COMMANDS!r}]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    assert ("Usage:" in result.output) or ("kcomp" in result.output), (args, result.output)
"""
    heavy, proc = _heavy_after(code, _env(), HELP_HEAVY)
    assert proc.returncode == 0, proc.stderr
    assert heavy == [], f"--help imported {heavy}"


@pytest.mark.parametrize("command", [[], ["train"], ["submit"]])
def test_help_through_the_entry_point_imports_nothing_heavy(command: list[str]) -> None:
    heavy, proc = _heavy_after(f"import sys; sys.argv[1:] = {[*command, '--help']!r}; " + RUNNER, _env(), HELP_HEAVY)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: kcomp" in proc.stdout
    assert heavy == [], f"kcomp {' '.join(command)} --help imported {heavy}"
