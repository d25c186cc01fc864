"""Image decoding with errors that name the file, and cheap header reads for image sizes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kcomp.errors import BadInput

if TYPE_CHECKING:
    import numpy as np
    import torch


def read_rgb(path: str | Path, reduce_to: int | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB. `reduce_to` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the network input is
    much smaller than the file (an 800x600 JPEG for a 128 px model decodes several times faster)."""
    import cv2

    flag = cv2.IMREAD_COLOR
    if reduce_to and str(path).lower().endswith((".jpg", ".jpeg")):
        flag = _reduced_flag(path, reduce_to)
    img = cv2.imread(str(path), flag)
    if img is None:
        if not Path(path).is_file():
            raise BadInput("image file not found", path=path)
        raise BadInput("not a readable image", path=path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_square(path: str | Path, size: int) -> np.ndarray:
    """size x size x 3 uint8 RGB, stretched per axis: what seg models and the prep image cache see. Downscaling
    averages (INTER_AREA, no aliasing); upscaling interpolates linearly."""
    import cv2

    img = read_rgb(path, size)
    if img.shape[:2] != (size, size):
        down = img.shape[0] > size and img.shape[1] > size
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the header only; also proves the file is an image before training starts."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            im.verify()
    except FileNotFoundError:
        raise BadInput("image file not found", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise BadInput(f"not a readable image ({type(e).__name__})", path=path) from None
    return h, w


def _reduced_flag(path: str | Path, reduce_to: int) -> int:
    import cv2

    h, w = image_size(path)
    short = min(h, w)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if short // factor >= reduce_to:
            return flag
    return cv2.IMREAD_COLOR


def chw_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWxC -> contiguous CxHxW tensor, same dtype, transposed by numpy. A torch copy here wakes torch's intra-op
    threads for every item; in the main process (`--workers 0`, or inference on a busy CPU) that alternates with
    OpenCV's thread pool and cost several times the copy itself (2 cores, `bench_loop.py`)."""
    import numpy as np
    import torch

    if img.ndim == 2:
        img = img[..., None]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
