"""DICOM -> grayscale uint8/uint16 arrays the way chest X-ray competitors prepared them, with errors naming the file.

Decoding (pydicom 3): the pixel data of any transfer syntax with an installed decoder (native, RLE Lossless through
pydicom itself, JPEG baseline/extended/lossless, JPEG-LS and JPEG 2000 through the pylibjpeg plugins); then the
modality LUT (rescale slope/intercept), then the VOI LUT or window (`apply_voi_lut`), MONOCHROME1 inverted so bone
is bright everywhere, and a min-max stretch to the full range of `bits`.

Choices worth knowing:
- Multi-frame files: only the first frame is decoded (chest radiographs are single-frame; frame 0 of anything
  else is a reasonable preview and keeps one image per file).
- Colour files (RGB, YBR_* and PALETTE COLOR): converted to RGB by pydicom, then to luma
  (0.299 R + 0.587 G + 0.114 B); no modality/VOI LUT applies to colour data.
- `read_dicom_header` reads everything but the pixel values (deferred) so a whole download can be checked, and its
  original sizes learnt, before anything is decoded or written.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp.errors import BadInput

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

__all__ = ["read_dicom", "read_dicom_header", "resize_cached", "to_bits"]

BITS = (8, 16)
_PIXEL_DATA = 0x7FE00010
_DEFER = 1024  # bytes: larger values are left on disk by the header read


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def _open(path: Path, **kwargs: Any) -> tuple[Dataset, list[str]]:
    """dcmread with every failure mapped to BadInput; returns the dataset and the warnings pydicom raised."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, **kwargs)
        except FileNotFoundError:
            raise BadInput("DICOM file not found", path=path) from None
        except IsADirectoryError:
            raise BadInput("is a directory, not a DICOM file", path=path) from None
        except InvalidDicomError:
            raise BadInput("not a DICOM file (no 'DICM' marker or file meta header)", path=path) from None
        except Exception as e:  # noqa: BLE001 - pydicom raises many types on damaged files
            raise BadInput(f"unreadable DICOM (truncated or corrupt?): {type(e).__name__}: {_first_line(e)}",
                           path=path) from None
    return ds, [str(w.message) for w in caught]


def _int(ds: Dataset, keyword: str, path: Path, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None:
        raise BadInput(f"missing element {keyword}", path=path)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadInput(f"element {keyword} = {value!r} is not an integer", path=path) from None


def _info(ds: Dataset, path: Path) -> dict[str, Any]:
    """The header facts prep and users need: original size, photometric, transfer syntax, frames, UIDs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values (IS '1A') are reported by _int, not as warnings
        return _info_of(ds, path)


def _info_of(ds: Dataset, path: Path) -> dict[str, Any]:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        raise BadInput("file meta has no TransferSyntaxUID: cannot tell how the pixel data is encoded", path=path)
    height, width = _int(ds, "Rows", path), _int(ds, "Columns", path)
    if height <= 0 or width <= 0:
        raise BadInput(f"image size {height}x{width} is empty", path=path)
    return {"height": height, "width": width, "photometric": str(ds.get("PhotometricInterpretation", "")).strip(),
            "transfer_syntax": str(ts), "transfer_syntax_name": ts.name, "compressed": bool(ts.is_compressed),
            "frames": _int(ds, "NumberOfFrames", path, 1), "samples_per_pixel": _int(ds, "SamplesPerPixel", path, 1),
            "bits_allocated": _int(ds, "BitsAllocated", path), "bits_stored": _int(ds, "BitsStored", path, 0),
            "study_uid": str(ds.get("StudyInstanceUID", "")), "series_uid": str(ds.get("SeriesInstanceUID", "")),
            "sop_uid": str(ds.get("SOPInstanceUID", ""))}


def _check_decoder(info: dict[str, Any], path: Path) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(info["transfer_syntax"])
    except NotImplementedError:
        raise BadInput(f"transfer syntax {info['transfer_syntax_name']} ({info['transfer_syntax']}) has no pixel "
                       "data decoder in pydicom", path=path) from None
    if not decoder.is_available:
        need = "; ".join(f"{k}: {', '.join(v)}" for k, v in decoder.missing_dependencies.items()) \
            if isinstance(decoder.missing_dependencies, dict) else str(decoder.missing_dependencies)
        raise BadInput(f"transfer syntax {info['transfer_syntax_name']} needs a decoder plugin that is not installed "
                       f"({need or 'pylibjpeg-libjpeg, pylibjpeg-openjpeg or gdcm'})", path=path)


def read_dicom_header(path: str | Path) -> dict[str, Any]:
    """Header facts (see `_info`) after checking the file can be decoded: it is DICOM, has pixel data, a decoder
    for its transfer syntax is installed, and native pixel data is as long as Rows x Columns x ... says.
    Pixel values are not read for native files (deferred), so this costs a header read."""
    import os

    from pydicom.pixels.utils import get_expected_length

    path = Path(path)
    ds, warned = _open(path, defer_size=_DEFER)
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)  # where its value starts, how long it says it is
    if raw is None:
        eof = any("End of file" in w or "delimiter" in w for w in warned)
        raise BadInput("no pixel data" + (" (file truncated inside it)" if eof else ""), path=path)
    info = _info(ds, path)
    _check_decoder(info, path)
    length, tell = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if not info["compressed"] and length is not None and length != 0xFFFFFFFF:
        if ds.file_meta.TransferSyntaxUID.is_deflated:  # offsets are into the inflated stream
            tell = None
        size = os.path.getsize(path)
        try:
            expected = int(get_expected_length(ds, unit="bytes"))
        except Exception as e:  # noqa: BLE001 - odd group 0028 values
            raise BadInput(f"inconsistent image description: {_first_line(e)}", path=path) from None
        have = min(length, size - tell) if tell is not None else length
        if have < expected:
            raise BadInput(f"truncated pixel data: {have} of {expected} bytes", path=path)
    return info


def _to_gray(arr: np.ndarray, ds: Dataset, info: dict[str, Any]) -> np.ndarray:
    """Float32 HxW where larger means brighter (modality + VOI LUT for grayscale, luma for colour)."""
    import numpy as np
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = info["photometric"]
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # colour: pydicom already converted YBR_* to RGB
        rgb = arr.astype(np.float32)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds, index=0)
    gray = np.asarray(arr, dtype=np.float32)
    if photometric == "MONOCHROME1":  # 0 = white: invert so bright means dense everywhere
        gray = -gray
    return gray


def to_bits(gray: np.ndarray, bits: int = 8) -> np.ndarray:
    """Min-max stretch to 0..2**bits-1 (rounded half up) as uint8/uint16; a constant image becomes zeros; NaN and
    infinite pixels count as the minimum. One float32 pass, in place."""
    import numpy as np

    if bits not in BITS:
        raise BadInput(f"bits must be 8 or 16, got {bits}")
    g = np.array(gray, dtype=np.float32, copy=True)
    lo, hi = float(g.min()), float(g.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):  # rare: only then pay for the masks
        finite = np.isfinite(g)
        lo, hi = (float(g[finite].min()), float(g[finite].max())) if finite.any() else (0.0, 0.0)
        g[~finite] = lo
    dtype = np.uint8 if bits == 8 else np.uint16
    if hi <= lo:
        return np.zeros(g.shape, dtype)
    g -= lo
    g *= ((1 << bits) - 1) / (hi - lo)
    g += 0.5
    np.clip(g, 0, (1 << bits) - 1, out=g)
    return g.astype(dtype)


def read_dicom(path: str | Path, *, bits: int = 8) -> tuple[np.ndarray, dict[str, Any]]:
    """(HxW uint8 or uint16 image, header info) for one DICOM file. See the module docstring for the pipeline;
    every failure (not DICOM, truncated, no pixel data, no decoder) is a BadInput naming the file."""
    from pydicom.pixels import pixel_array

    if bits not in BITS:
        raise BadInput(f"bits must be 8 or 16, got {bits}")
    path = Path(path)
    ds, warned = _open(path)
    if _PIXEL_DATA not in ds:
        eof = any("End of file" in w or "delimiter" in w for w in warned)
        raise BadInput("no pixel data" + (" (file truncated inside it)" if eof else ""), path=path)
    info = _info(ds, path)
    _check_decoder(info, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=0)
            gray = _to_gray(arr, ds, info)
    except ValueError as e:
        msg = _first_line(e)
        if "less than expected" in msg:
            raise BadInput(f"truncated pixel data: {msg}", path=path) from None
        raise BadInput(f"cannot decode pixel data ({info['transfer_syntax_name']}): {msg}", path=path) from None
    except Exception as e:  # noqa: BLE001 - decoder plugins raise RuntimeError, struct.error, OSError...
        raise BadInput(f"cannot decode pixel data ({info['transfer_syntax_name']}, corrupt?): "
                       f"{type(e).__name__}: {_first_line(e)}", path=path) from None
    if gray.shape != (info["height"], info["width"]):
        raise BadInput(f"decoded {gray.shape[0]}x{gray.shape[1]} pixels; the header says "
                       f"{info['height']}x{info['width']}", path=path)
    return to_bits(gray, bits), info


def resize_cached(img: np.ndarray, size: int) -> np.ndarray:
    """Square size x size with INTER_AREA (INTER_LINEAR when enlarging; SIIM competitors cached 512 or 1024
    squares). The aspect ratio is
    not kept: boxes are rescaled per axis from the original height/width that the index records."""
    import cv2

    if size <= 0:
        raise BadInput(f"size must be > 0, got {size}")
    if img.shape[:2] == (size, size):
        return img
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if size <= min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)
