"""DICOM decoding on the real files pydicom bundles: compressed twins decode to the same pixels, MONOCHROME1 is
inverted, colour and multi-frame files reduce to one grayscale frame, and broken files are one-line BadInputs.

pydicom bundles no MONOCHROME1 file, so that case is a bundled MONOCHROME2 file rewritten with inverted values."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from kcomp.data.dicom import read_dicom, read_dicom_header, resize_cached, to_bits
from kcomp.errors import BadInput


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return Path(path)


def _reason(e: pytest.ExceptionInfo, path: Path) -> str:
    text = str(e.value)
    assert text.startswith(f"{path}: "), text
    assert "\n" not in text
    return text[len(str(path)) + 2:]


# ------------------------------------------------------------------------------------------------- decoding


def test_plain_monochrome2_applies_modality_then_voi_then_min_max():
    path = bundled("CT_small.dcm")  # int16 with RescaleIntercept -1024
    img, info = read_dicom(path)
    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    ref = np.rint((ref - ref.min()) / (ref.max() - ref.min()) * 255)
    assert img.dtype == np.uint8 and img.shape == (128, 128)
    assert (img.min(), img.max()) == (0, 255)
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 1
    assert info["height"] == 128 and info["width"] == 128 and info["photometric"] == "MONOCHROME2"
    assert info["transfer_syntax_name"] == "Explicit VR Little Endian" and info["frames"] == 1
    img16, _ = read_dicom(path, bits=16)
    assert img16.dtype == np.uint16 and (img16.min(), img16.max()) == (0, 65535)
    assert np.abs(img16.astype(np.int64) // 257 - img.astype(np.int64)).max() <= 1


def test_voi_window_is_applied(tmp_path: Path):
    """A narrow window saturates everything outside it: the VOI LUT really runs."""
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    ds.WindowCenter, ds.WindowWidth = float(np.median(hu)), 50.0
    ds.save_as(tmp_path / "windowed.dcm")
    windowed, _ = read_dicom(tmp_path / "windowed.dcm")
    plain, _ = read_dicom(bundled("CT_small.dcm"))
    assert (np.mean(windowed == 0) + np.mean(windowed == 255)) > 0.6
    assert (np.mean(plain == 0) + np.mean(plain == 255)) < 0.1


def test_monochrome1_is_inverted(tmp_path: Path):
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    normal, _ = read_dicom(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    inverted, info = read_dicom(tmp_path / "mono1.dcm")
    assert info["photometric"] == "MONOCHROME1"
    assert np.abs(inverted.astype(int) - (255 - normal.astype(int))).max() <= 1
    # and data stored inverted (as a MONOCHROME1 device writes it) decodes to the original picture
    del ds.WindowCenter, ds.WindowWidth  # MR_small's window is meant for the original values
    normal, _ = read_dicom(_without_window(tmp_path))
    stored = ds.pixel_array.astype(np.int32)
    ds.PixelData = (stored.max() - stored).astype(np.int16).tobytes()
    ds.save_as(tmp_path / "mono1_stored_inverted.dcm")
    back, _ = read_dicom(tmp_path / "mono1_stored_inverted.dcm")
    assert np.abs(back.astype(int) - normal.astype(int)).max() <= 1


def _without_window(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "mono2_no_window.dcm")
    return tmp_path / "mono2_no_window.dcm"


@pytest.mark.parametrize("twin", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_padded.dcm"])
@pytest.mark.parametrize("bits", [8, 16])
def test_compressed_and_reencoded_twins_decode_identically(twin: str, bits: int):
    ref, ref_info = read_dicom(bundled("MR_small.dcm"), bits=bits)
    img, info = read_dicom(bundled(twin), bits=bits)
    assert np.array_equal(img, ref)
    assert (info["height"], info["width"]) == (ref_info["height"], ref_info["width"]) == (64, 64)


def test_compressed_flag_and_transfer_syntax_in_info():
    assert read_dicom_header(bundled("MR_small_RLE.dcm"))["compressed"]
    assert read_dicom_header(bundled("MR_small_RLE.dcm"))["transfer_syntax_name"] == "RLE Lossless"
    assert not read_dicom_header(bundled("MR_small.dcm"))["compressed"]


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "693_J2KI.dcm", "JPEGLSNearLossless_16.dcm"])
def test_other_compressed_grayscale_files_decode(name: str):
    img, info = read_dicom(bundled(name))
    assert img.shape == (info["height"], info["width"]) and img.dtype == np.uint8
    assert img.max() == 255 and img.std() > 5


def test_jpeg2000_and_jpeg_extended_of_the_same_picture_agree():
    """The same 1024x256 picture as JPEG 2000 and as lossy 12-bit JPEG extended: close after scaling."""
    a, _ = read_dicom(bundled("JPEG2000.dcm"))
    b, _ = read_dicom(bundled("JPGExtended.dcm"))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def _luma(rgb: np.ndarray) -> np.ndarray:
    return to_bits(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114, 8)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm",
                                  "SC_rgb_gdcm_KY.dcm", "ExplVR_BigEnd.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_colour_files_become_luma(name: str):
    """JPEG baseline (YBR), JPEG lossless, RLE, JPEG 2000 and uncompressed colour: RGB as pydicom gives it -> luma."""
    img, info = read_dicom(bundled(name))
    rgb = pydicom.dcmread(bundled(name)).pixel_array.astype(np.float32)
    assert img.ndim == 2 and img.shape == rgb.shape[:2] and info["samples_per_pixel"] == 3
    assert np.array_equal(img, _luma(rgb))


def test_lossless_colour_twins_agree():
    """One 100x100 picture stored as RLE, JPEG lossless and JPEG 2000: same grayscale image."""
    ref, _ = read_dicom(bundled("SC_rgb_rle.dcm"))
    for twin in ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm"):
        assert np.array_equal(read_dicom(bundled(twin))[0], ref), twin


def test_multiframe_takes_the_first_frame():
    img, info = read_dicom(bundled("SC_rgb_rle_2frame.dcm"))
    frames = pydicom.dcmread(bundled("SC_rgb_rle_2frame.dcm")).pixel_array
    assert info["frames"] == 2 and img.shape == (100, 100)
    assert np.array_equal(img, _luma(frames[0].astype(np.float32)))
    dose, info = read_dicom(bundled("rtdose.dcm"), bits=16)  # 15 frames of 32-bit values
    first = pydicom.dcmread(bundled("rtdose.dcm")).pixel_array[0].astype(np.float64)
    assert info["frames"] == 15 and dose.shape == (10, 10)
    assert np.array_equal(np.argsort(dose.ravel(), kind="stable"), np.argsort(first.ravel(), kind="stable"))


def test_palette_colour_is_mapped_then_grayscaled():
    img, info = read_dicom(bundled("examples_palette.dcm"))
    assert info["photometric"] == "PALETTE COLOR" and img.shape == (350, 800) and img.std() > 5


# --------------------------------------------------------------------------------------------- broken files


def test_bundled_truncated_file_is_caught_by_the_header_read():
    path = bundled("MR_truncated.dcm")
    with pytest.raises(BadInput) as e:
        read_dicom_header(path)
    assert _reason(e, path) == "truncated pixel data: 8130 of 8192 bytes"
    with pytest.raises(BadInput) as e:
        read_dicom(path)
    assert _reason(e, path).startswith("truncated pixel data")


@pytest.mark.parametrize(("name", "keep", "reason"), [
    ("CT_small.dcm", 0.6, "truncated pixel data: "),
    ("MR_small_RLE.dcm", 0.7, "no pixel data (file truncated inside it)"),
    ("JPEG2000.dcm", 0.6, "no pixel data"),
    ("CT_small.dcm", 0.05, "no pixel data"),
    ("CT_small.dcm", 130 / 39206, "not a DICOM file"),
])
def test_truncated_copies(tmp_path: Path, name: str, keep: float, reason: str):
    data = bundled(name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * keep)])
    for fn in (read_dicom_header, read_dicom):
        with pytest.raises(BadInput) as e:
            fn(path)
        assert _reason(e, path).startswith(reason), fn


def test_not_a_dicom_missing_file_and_no_pixel_data(tmp_path: Path):
    text = tmp_path / "notes.dcm"
    text.write_text("this is text, not a DICOM file\n" * 20)
    with pytest.raises(BadInput) as e:
        read_dicom(text)
    assert _reason(e, text).startswith("not a DICOM file")
    with pytest.raises(BadInput) as e:
        read_dicom_header(tmp_path / "gone.dcm")
    assert _reason(e, tmp_path / "gone.dcm") == "DICOM file not found"
    plan = bundled("rtplan.dcm")
    with pytest.raises(BadInput) as e:
        read_dicom(plan)
    assert _reason(e, plan) == "no pixel data"


def test_corrupt_compressed_stream_fails_at_decode_not_at_header(tmp_path: Path):
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(bundled("MR_small_RLE.dcm"))
    frame = bytearray(next(generate_frames(ds.PixelData)))
    frame[0] = 9  # the RLE header now announces 9 segments
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(tmp_path / "bad_rle.dcm")
    assert read_dicom_header(tmp_path / "bad_rle.dcm")["height"] == 64
    with pytest.raises(BadInput) as e:
        read_dicom(tmp_path / "bad_rle.dcm")
    assert _reason(e, tmp_path / "bad_rle.dcm").startswith("cannot decode pixel data (RLE Lossless, corrupt?)")


def test_transfer_syntax_without_decoder(tmp_path: Path):
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom decodes no video
    ds.PixelData = encapsulate([b"\x00" * 64])
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path)
    for fn in (read_dicom_header, read_dicom):
        with pytest.raises(BadInput) as e:
            fn(path)
        assert _reason(e, path) == ("transfer syntax MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100) has "
                                    "no pixel data decoder in pydicom")


def test_missing_decoder_plugin_names_what_to_install(monkeypatch: pytest.MonkeyPatch):
    import pydicom.pixels

    fake = SimpleNamespace(is_available=False, missing_dependencies={"pylibjpeg": ["pylibjpeg-openjpeg"]})
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: fake)
    path = bundled("JPEG2000.dcm")
    with pytest.raises(BadInput) as e:
        read_dicom(path)
    assert _reason(e, path) == ("transfer syntax JPEG 2000 Image Compression needs a decoder plugin that is not "
                                "installed (pylibjpeg: pylibjpeg-openjpeg)")


def test_bits_must_be_8_or_16():
    with pytest.raises(BadInput, match="bits must be 8 or 16"):
        read_dicom(bundled("MR_small.dcm"), bits=12)


# ------------------------------------------------------------------------------------------- helpers


def test_to_bits_stretches_and_handles_constant_and_nan():
    assert np.array_equal(to_bits(np.array([[2.0, 4.0, 6.0]]), 8), np.array([[0, 128, 255]], np.uint8))
    assert to_bits(np.array([[1.0, 3.0]]), 16).tolist() == [[0, 65535]]
    assert to_bits(np.full((3, 3), 7.0), 8).tolist() == [[0] * 3] * 3
    assert to_bits(np.array([[np.nan, 0.0, 1.0]]), 8).tolist() == [[0, 0, 255]]


def test_resize_cached_is_square_keeps_dtype_and_area_averages():
    img = np.zeros((300, 200), np.uint16)
    img[:150] = 60000
    out = resize_cached(img, 100)
    assert out.shape == (100, 100) and out.dtype == np.uint16
    assert out[:50].min() == 60000 and out[50:].max() == 0
    assert resize_cached(out, 100) is out
    up = resize_cached(np.eye(4, dtype=np.uint8) * 255, 16)
    assert up.shape == (16, 16)
    with pytest.raises(BadInput):
        resize_cached(img, 0)
