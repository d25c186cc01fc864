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


# Numba kernels longer than 60 lines, and why each stays whole (docs/architecture.md).
LONG_KERNELS = {
    # union-find over every pixel: its hot loop keeps ~15 arrays and counters in registers; helpers would have to be
    # compiled at import (numba's register_jitable), which this module avoids to keep `import` light
    "kcomp/post/seg_threshold.py:_counts_py",
    # greedy clustering of each group's boxes: pending the WBF branch that is changing this kernel (split after it
    # merges: the rescoring half is a per-group call)
    "kcomp/post/_wbf_fast.py:_cluster",
}


def _function_lengths(root: Path) -> dict[str, int]:
    import ast

    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out[f"{path.relative_to(ROOT).as_posix()}:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_function_in_kcomp_is_longer_than_60_lines():
    lengths = _function_lengths(ROOT / "kcomp")
    long = {name: n for name, n in lengths.items() if n > 60}
    assert {k: v for k, v in long.items() if k not in LONG_KERNELS} == {}
    assert set(long) == LONG_KERNELS, "an exempted kernel got short: drop it from LONG_KERNELS"


def test_ruff_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
