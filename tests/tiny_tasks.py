"""One miniature folds file per task, built in-process from the competitions' test fixtures, with the training
options that keep a step of it small: for tests that need a real fold of every task (and `benchmarks/gpu_check.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASK_NAMES = ("cls", "seg", "det", "ink")
# train options per task (config keys), small enough for a step to take well under a second on one CPU core
OPTIONS: dict[str, dict[str, Any]] = {
    "cls": {"model": "test_convnext", "img_size": 32, "batch_size": 8},
    "seg": {"arch": "unet", "model": "resnet18", "img_size": 64, "batch_size": 2},
    "det": {"model": "tf_efficientdet_d0", "img_size": 128, "batch_size": 2},
    "ink": {"model": "resnet18", "layers": "2x3", "patch": 32, "batch_size": 4},
}


def make_folds(task: str, root: Path) -> Path:
    """`root/folds.parquet` of a miniature competition for `task`, 2 folds."""
    from kcomp.artifacts import read_index, write_folds
    from kcomp.competitions import get_competition
    from kcomp.data.split import assign_folds

    root = Path(root)
    if task == "cls":
        from kcomp.competitions.demo import make_cls_layout

        raw = make_cls_layout(root / "raw", n_train=48, n_test=8, seed=0)
        get_competition("demo").prep(raw, root / "data")
        index, strategy = root / "data" / "index.parquet", "stratified"
    elif task == "seg":
        from tests.clouds_fixture import make_clouds_layout

        layout = make_clouds_layout(root / "raw", n_train=8, n_test=2, size=(140, 210), seed=3)
        get_competition("clouds").prep(layout.raw, root / "data")
        index, strategy = root / "data" / "index.parquet", "kfold"
    elif task == "det":
        from tests.test_det import make_det_index

        index, strategy = make_det_index(root / "data", n_train=8, n_test=2), "group"
    elif task == "ink":
        from tests.vesuvius_fixture import make_vesuvius_layout

        raw = make_vesuvius_layout(root / "raw", n_layers=16, seed=1)
        get_competition("vesuvius").prep(raw, root / "data")
        index, strategy = root / "data" / "index.parquet", "group"
    else:
        raise ValueError(task)
    table = read_index(index)
    folds = assign_folds(table.df, n_folds=2, strategy=strategy, seed=0, label_col=None, group_col=None)
    return Path(write_folds(table, folds, root / "folds.parquet"))


def cli_options(task: str) -> list[str]:
    """`OPTIONS[task]` as `kcomp train` arguments."""
    return [a for k, v in OPTIONS[task].items() for a in (f"--{k.replace('_', '-')}", str(v))]
