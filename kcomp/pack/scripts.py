"""PKG/predict.sh and PKG/predict.ipynb: the same commands, as a script and as notebook cells. Paths are four
variables, each overridable: PKG (the package), INPUT (the competition's data), WORK (intermediate files) and OUT
(the submission)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PIP_NO_INDEX": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


@dataclass
class Block:
    """One notebook cell, one paragraph of predict.sh."""

    title: str
    lines: list[str]


@dataclass
class Paths:
    input: str
    work: str
    out: str


def predict_sh(blocks: list[Block], paths: Paths, header: str) -> str:
    env = [
        'export PKG="${PKG:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"',
        f'export INPUT="${{INPUT:-{paths.input}}}"',
        f'export WORK="${{WORK:-{paths.work}}}"',
        f'export OUT="${{OUT:-{paths.out}}}"',
        "export " + " ".join(f"{k}={v}" for k, v in OFFLINE.items()),
        'mkdir -p "$WORK" "$(dirname "$OUT")"',
    ]
    body = [f"# {b.title}\n" + "\n".join(b.lines) for b in blocks]
    return "\n\n".join(["#!/usr/bin/env bash\n" + header + "set -euo pipefail\n" + "\n".join(env), *body]) + "\n"


def notebook(blocks: list[Block], paths: Paths, package_id: str, header: str) -> Any:
    """nbformat 4: a markdown cell, a Python cell that finds the package and sets the variables, then one
    `%%bash` cell per block holding predict.sh's lines of that block."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}})
    text = header.replace("# ", "").replace("#\n", "\n")
    nb.cells.append(nbformat.v4.new_markdown_cell(text + "\nAttach the package's dataset and the competition, "
                                                  "then run all cells (internet off)."))
    nb.cells.append(nbformat.v4.new_code_cell(_env_cell(paths, package_id)))
    for b in blocks:
        nb.cells.append(nbformat.v4.new_code_cell("%%bash\nset -euo pipefail\n" + f"# {b.title}\n"
                                                  + "\n".join(b.lines)))
    return nb


def _env_cell(paths: Paths, package_id: str) -> str:
    offline = ", ".join(f"{k}={v!r}" for k, v in OFFLINE.items())
    return f"""\
# Where the package is (found by its id among the attached datasets), the competition's data, the outputs.
import glob, json, os


def find_package(package_id):
    for depth in range(1, 5):
        for manifest in sorted(glob.glob("/kaggle/input/" + "*/" * depth + "MANIFEST.json")):
            try:
                with open(manifest) as f:
                    if json.load(f).get("id") == package_id:
                        return os.path.dirname(manifest)
            except (OSError, ValueError):
                continue
    raise FileNotFoundError(f"no kcomp package {{package_id}} under /kaggle/input: attach its dataset")


if "PKG" not in os.environ:
    os.environ["PKG"] = find_package({package_id!r})
os.environ.setdefault("INPUT", {paths.input!r})
os.environ.setdefault("WORK", {paths.work!r})
os.environ.setdefault("OUT", {paths.out!r})
os.environ.update(dict({offline}))
os.makedirs(os.environ["WORK"], exist_ok=True)
os.makedirs(os.path.dirname(os.environ["OUT"]) or ".", exist_ok=True)
print({{k: os.environ[k] for k in ("PKG", "INPUT", "WORK", "OUT")}})
"""
