"""Shared fixtures: the CLI as a subprocess (real exit codes, real stdout), and miniature competitions on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    raw_stdout: bytes = b""

    @property
    def last_error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("kcomp:")]
        return lines[0] if lines else ""


def run_cli(*args: str | Path, cwd: Path | None = None, stdin: bytes | None = None, timeout: float = 600,
            internal_error: bool = False) -> CliResult:
    """Run `kcomp ARGS` in a fresh interpreter, as a shell or Make would. "internal error" is reserved for bugs:
    one fails the calling test unless it says it provokes one (`internal_error=True`)."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONHASHSEED": "0"}
    if internal_error:
        env.pop(INTERNAL_ERROR_LOG, None)
    proc = subprocess.run([sys.executable, "-m", "kcomp.commands.main", "--quiet", *map(str, args)], cwd=cwd,
                          input=stdin, capture_output=True, timeout=timeout, env=env)
    result = CliResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                       proc.stdout)
    if not internal_error and "internal error" in result.stderr:
        pytest.fail(f"kcomp {' '.join(map(str, args))}: an internal error (a bug, not bad input):\n{result.stderr}")
    return result


# Every kcomp a test starts (run_cli, Makefiles, torchrun, plain subprocesses) inherits this log and appends a line
# per "internal error" (commands/_common.py); `_no_internal_error` fails the test that produced one unless it is
# marked `internal_error`.
INTERNAL_ERROR_LOG = "KCOMP_INTERNAL_ERROR_LOG"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "internal_error: the test provokes kcomp's 'internal error' on purpose")
    os.environ[INTERNAL_ERROR_LOG] = str(Path(tempfile.mkdtemp(prefix="kcomp-tests-")) / "internal-errors.log")


@pytest.fixture(autouse=True)
def _no_internal_error(request: pytest.FixtureRequest) -> Iterator[None]:
    log = Path(os.environ[INTERNAL_ERROR_LOG])
    start = log.stat().st_size if log.exists() else 0
    yield
    if log.exists() and log.stat().st_size > start and not request.node.get_closest_marker("internal_error"):
        with log.open() as f:
            f.seek(start)
            pytest.fail(f"kcomp reported an internal error (a bug, not bad input):\n{f.read()}")


def run_chain(steps: list[tuple], cwd: Path, timeout: float = 600) -> dict[str, str]:
    """Run a pipeline step by step as a Makefile would; every step must succeed. Returns stdout by command."""
    outs = {}
    for step in steps:
        r = run_cli(*step, cwd=cwd, timeout=timeout)
        assert r.code == 0, f"{step[0]}: {r.stderr}"
        outs[step[0]] = r.stdout
    return outs


@pytest.fixture(scope="session")
def cassava_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature Cassava download: real file names and columns, 800x600 JPEGs, 5 classes."""
    from kcomp.competitions.demo import make_cls_layout

    return make_cls_layout(tmp_path_factory.mktemp("cassava") / "raw", n_train=150, n_test=15, size=(600, 800),
                           seed=3)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """prep -> split -> train (2 folds, 1 epoch, 32 px) once per session for the commands that read runs."""
    root = tmp_path_factory.mktemp("demo")
    data, run = root / "data", root / "run"
    assert run_cli("prep", "demo", "-o", data).code == 0
    assert run_cli("split", data / "index.parquet", "-o", data / "folds.parquet", "--folds", "2").code == 0
    r = run_cli("train", "cls", "--folds", data / "folds.parquet", "--fold", "all", "--img-size", "32",
                "--epochs", "1", "--batch-size", "32", "--workers", "0", "-o", run)
    assert r.code == 0, r.stderr
    oof = run_cli("oof", run, "-o", root / "oof.parquet", "--workers", "0")
    test = run_cli("tta", run, "-o", root / "test.parquet", "--workers", "0")
    assert oof.code == 0 and test.code == 0, oof.stderr + test.stderr
    return {"root": root, "data": data, "run": run, "oof": root / "oof.parquet", "test": root / "test.parquet",
            "folds": data / "folds.parquet", "index": data / "index.parquet",
            "sample": data / "raw" / "sample_submission.csv"}
