"""Layers point down only: import-linter's contracts in pyproject.toml hold, and an upward import breaks them.

The contracts are checked on the installed layout (`kcomp.commands` inside `kcomp/`), staged in a temporary
directory: in the repository `commands/` sits beside `kcomp/`, where import-linter's graph would not see it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stage(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    shutil.copytree(ROOT / "kcomp", dest / "kcomp", ignore=ignore)
    shutil.copytree(ROOT / "commands", dest / "kcomp" / "commands", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(staged: Path) -> subprocess.CompletedProcess[str]:
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    env = {**os.environ, "PYTHONPATH": str(staged)}  # the staged kcomp, not the editable install
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=staged, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_layer_contracts_hold(tmp_path):
    r = _lint(_stage(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize(("module", "upward", "shown"), [
    ("kcomp/formats/rle.py", "from kcomp.runs import predict", "kcomp.formats.rle -> kcomp.runs.predict"),
    ("kcomp/data/seg_dataset.py", "from kcomp.post import seg_threshold",
     "kcomp.data.seg_dataset -> kcomp.post.seg_threshold"),
    ("kcomp/runs/config.py", "import typer", "kcomp.runs.config -> typer"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward, shown):
    staged = _stage(tmp_path)
    path = staged / module
    path.write_text(path.read_text() + f"\n{upward}  # deliberately upward\n")
    r = _lint(staged)
    assert r.returncode == 1, r.stdout + r.stderr
    assert shown in r.stdout
