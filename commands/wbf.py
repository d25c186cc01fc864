"""kcomp wbf PRED... -o PRED"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    preds: Annotated[list[str], typer.Argument(help="Box prediction files (task det) of the same images.")],
    output: Output = ...,
    iou: Annotated[float, typer.Option("--iou", help="IoU above which boxes are fused.")] = 0.55,
    skip_box_thr: Annotated[float | None, typer.Option(help="Boxes scoring below this are dropped first (wbf, "
                                                             "soft_nms). Default 0.01.")] = None,
    weights: Annotated[str | None, typer.Option(help="Comma-separated, one per file, e.g. 1,1.")] = None,
    method: Annotated[str, typer.Option(help="wbf | nms | soft_nms")] = "wbf",
    conf_type: Annotated[str, typer.Option(help="avg | max | box_and_model_avg | absent_model_aware_avg")] = "avg",
    as_json: Json = False,
) -> None:
    """Fuse the boxes of several detection prediction files (models, folds, TTA views) image by image with
    weighted boxes fusion (or NMS / soft-NMS); boxes stay in original pixel coordinates. Writes PRED."""
    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.artifacts.predictions import aligned_boxes, check_compatible, read_predictions, write_predictions
    from kcomp.errors import BadInput
    from kcomp.post.wbf import WbfOptions, fuse_boxes

    check_outputs({"-o": output}, inputs=preds, summary_on_stdout=as_json)
    opts = WbfOptions.from_cli(weights=weights, inputs=len(preds), iou=iou, skip_box_thr=skip_box_thr,
                               method=method, conf_type=conf_type)
    files = [read_predictions(p) for p in preds]
    for f in files:
        if f.task != "det":
            raise BadInput(f"holds {f.task} predictions; wbf fuses det (box) predictions", path=f.source)
    check_compatible(files)
    options.validated("wbf")
    df = files[0].df
    fused = fuse_boxes(aligned_boxes(files), df["height"].to_numpy(), df["width"].to_numpy(), method=opts.method,
                       iou_thr=opts.iou, skip_box_thr=opts.box_thr, weights=opts.weights, conf_type=opts.conf_type)
    meta = files[0].carried_meta()
    meta["fusion"] = {"method": opts.method, "iou": opts.iou, "skip_box_thr": opts.box_thr, "weights": weights,
                      "conf_type": opts.conf_type, "inputs": list(preds)}
    n = fused.n_boxes
    log(f"wbf: {n} boxes on {len(df)} images from {len(files)} file(s)")
    emit(write_predictions(df, output, boxes=fused, **meta), {"images": len(df), "boxes": n}, as_json)


def register(app: typer.Typer) -> None:
    app.command("wbf")(command)
