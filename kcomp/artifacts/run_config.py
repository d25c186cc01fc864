"""RUN/config.json: the resolved options of a run and what its outputs mean, checked once for every reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kcomp.artifacts import paths
from kcomp.artifacts._input import directory
from kcomp.artifacts.jsonfile import read_json
from kcomp.errors import BadInput

# what `oof`, `tta`, `report` and `submit` read from `config` (anything else is the task's own to interpret)
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {"task": (str,), "folds": (str,), "model": (str,),
                                              "img_size": (int,), "batch_size": (int,), "amp": (str,)}


def read_run_config(run: str | Path) -> dict[str, Any]:
    """The saved `{config, setup}` of run directory `run`, with the keys readers rely on of the right type."""
    run = directory(run, "run directory")
    path = paths.config(run)
    if not path.exists():
        raise BadInput("not a kcomp run directory (no config.json)", path=run)
    saved = read_json(path, "run-config")
    cfg = saved["config"]
    for key, types in _CONFIG_TYPES.items():
        value = cfg.get(key)
        if not isinstance(value, types) or isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise BadInput(f"config {key!r} is {value!r:.60}, expected a {' or '.join(t.__name__ for t in types)}"
                           + (" >= 1" if types == (int,) else ""), path=path)
    classes = saved["setup"].get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise BadInput(f"setup 'classes' is {classes!r:.60}, expected a list of class names", path=path)
    return saved
