"""Cassava Leaf Disease Classification (https://www.kaggle.com/competitions/cassava-leaf-disease-classification).

Raw: train.csv (image_id,label 0-4), train_images/*.jpg (800x600), test_images/, sample_submission.csv,
label_num_to_disease_map.json. Metric: accuracy. Submission: image_id,label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kcomp.competitions import register_competition
from kcomp.competitions._cls_csv import prep_cls_layout, submit_argmax


@register_competition("cassava")
class Cassava:
    """Cassava Leaf Disease (cls, accuracy): train.csv + train_images/ -> image_id,label"""

    task = "cls"
    id_column = "image_id"
    kaggle_slug = "cassava-leaf-disease-classification"  # /kaggle/input/<slug> in a notebook (`kcomp pack`)

    def prep(self, raw: Path | None, out: Path, *, size: int | None = None, workers: int | None = None) -> list[str]:
        return prep_cls_layout(raw, out, competition="cassava", size=size, workers=workers)

    def submit(self, preds: list[Any], *, thresholds: dict[str, Any] | None) -> Any:
        return submit_argmax(preds)
