"""kcomp.formats.rle: Kaggle RLE in row-major (Vesuvius) and column-major (Understanding Clouds) pixel order, decoded at
full size (the notebook kernel's values and memory layout) or sampled at another size (cv2 INTER_NEAREST_EXACT)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from unittest import mock

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kcomp.errors import BadInput, BadUsage
from kcomp.formats import rle
from kcomp.formats.rle import decode, decode_resized, encode


def mask2rle(img, order="row"):  # the kernel every Kaggle notebook copies (Clouds: column order, img.T)
    pixels = img.T.flatten() if order == "column" else img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def rle2mask(mask_rle, shape, order="row"):
    h, w = shape
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(h * w, dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape((w, h)).T if order == "column" else img.reshape(h, w)


def assert_decodes(rle_: str, expected: np.ndarray, order: str) -> None:
    """decode gives the notebook kernel's values, dtype, shape and memory layout (C in row order, the F-contiguous
    transpose of a (w, h) array in column order), and with c_contiguous=True the same values C-contiguous."""
    ref = rle2mask(rle_, expected.shape, order)
    out = decode(rle_, expected.shape, order)
    assert out.dtype == ref.dtype == np.uint8 and out.shape == ref.shape and out.strides == ref.strides
    assert out.flags.c_contiguous if order == "row" else out.flags.f_contiguous
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(ref, expected)
    c = decode(rle_, expected.shape, order, c_contiguous=True)
    assert c.dtype == np.uint8 and c.flags.c_contiguous and c.shape == expected.shape
    np.testing.assert_array_equal(c, expected)


def resized(rle_: str, shape: tuple[int, int], size: tuple[int, int], order: str) -> np.ndarray:
    """What decode_resized must equal: the full decode resized by cv2."""
    full = decode(rle_, shape, order, c_contiguous=True)
    return cv2.resize(full, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)


# The kernels' code paths that the default settings only take on some images: a block of one or three words
# (every block boundary, a partial last block), and a row decode into a zeroed array (as for images > 32 MiB).
PATHS = {"default": {}, "word blocks": {"_BLOCK": 1, "_ZEROED_FROM": 0}, "3-word blocks": {"_BLOCK": 3}}


def paths(name: str) -> ExitStack:
    stack = ExitStack()
    for attr, value in PATHS[name].items():
        stack.enter_context(mock.patch.object(rle, attr, value))
    return stack


@st.composite
def masks(draw, max_side: int = 64) -> np.ndarray:
    """0/1 masks up to 64x64: random density, all-zero, all-one, stripes (long runs that wrap rows/columns) and
    rectangles (the few large blobs of a Clouds mask)."""
    shape = draw(st.tuples(st.integers(1, max_side), st.integers(1, max_side)))
    kind = draw(st.sampled_from(["random", "zeros", "ones", "stripes", "rectangles"]))
    if kind == "zeros":
        return np.zeros(shape, np.uint8)
    if kind == "ones":
        return np.ones(shape, np.uint8)
    if kind == "stripes":
        lo, hi = draw(st.integers(0, shape[0] * shape[1])), draw(st.integers(0, shape[0] * shape[1]))
        flat = np.zeros(shape[0] * shape[1], np.uint8)
        flat[min(lo, hi):max(lo, hi)] = 1
        return flat.reshape(shape) if draw(st.booleans()) else flat.reshape(shape[::-1]).T.copy()
    if kind == "rectangles":
        m = np.zeros(shape, np.uint8)
        for _ in range(draw(st.integers(1, 4))):
            y0, y1 = sorted(draw(st.tuples(st.integers(0, shape[0]), st.integers(0, shape[0]))))
            x0, x1 = sorted(draw(st.tuples(st.integers(0, shape[1]), st.integers(0, shape[1]))))
            m[y0:y1, x0:x1] = 1
        return m
    return draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 1)))


# --------------------------------------------------------------------------------------------- hand-checked cases

# 3x4:  0 1 1 0       row-major:    0 1 1 0 | 1 1 0 0 | 0 0 0 1   -> pixels 2-3, 5-6, 12
#       1 1 0 0       column-major: 0 1 0 | 1 1 0 | 1 0 0 | 0 0 1 -> pixels 2, 4-5, 7, 12
#       0 0 0 1
M34 = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], np.uint8)
# 2x3:  0 0 1  row-major 0 0 1 1 1 0: the run 3-5 wraps into the next row;
#       1 1 0  column-major 0 1 | 0 1 | 1 0: the run 4-5 wraps into the next column
M23 = np.array([[0, 0, 1], [1, 1, 0]], np.uint8)

HAND = [
    (M34, "row", "2 2 5 2 12 1"),
    (M34, "column", "2 1 4 2 7 1 12 1"),
    (M23, "row", "3 3"),
    (M23, "column", "2 1 4 2"),
    (np.ones((2, 2), np.uint8), "row", "1 4"),
    (np.ones((2, 2), np.uint8), "column", "1 4"),
    (np.zeros((3, 5), np.uint8), "row", ""),
    (np.zeros((3, 5), np.uint8), "column", ""),
    (np.array([[1]], np.uint8), "column", "1 1"),
    (np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]), "row", "12 1"),  # a two-digit start
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("mask", "order", "expected"), HAND)
def test_encode_and_decode_hand_checked(mask: np.ndarray, order: str, expected: str, path: str) -> None:
    with paths(path):
        assert encode(mask, order) == expected
        assert encode(np.asfortranarray(mask), order) == expected
        assert_decodes(expected, mask, order)


def test_any_nonzero_pixel_counts_as_one() -> None:
    m = np.array([[0, 2, -1], [0.5, 0, 255]], dtype=np.float32)
    assert encode(m) == "2 3 6 1"  # 0 1 1 | 1 0 1
    assert encode(m, "column") == encode(m.astype(bool), "column") == "2 2 5 2"  # 0 1 | 1 0 | 1 1
    assert encode(np.array([[0, 300]], np.int64)) == "2 1"
    # Neighbours with different nonzero bytes differ as words but not as pixels, in both scan directions.
    v = np.array([[0, 1, 255, 7, 128, 0, 9, 9, 3, 200, 0, 0, 0, 0, 0, 0, 5, 6, 0]] * 3, np.uint8)
    assert encode(v) == encode(v != 0) == mask2rle((v != 0).astype(np.uint8))
    assert encode(v, "column") == mask2rle((v != 0).astype(np.uint8), "column")
    assert encode(v.astype(np.int8)) == encode(v != 0)  # negative int8 bytes are foreground too


def test_orders_differ_and_agree_via_transpose() -> None:
    assert encode(M34, "row") != encode(M34, "column")
    assert encode(M34, "column") == encode(M34.T, "row")
    assert encode(M34, "row") == encode(M34.T, "column")
    s = encode(M34, "column")
    np.testing.assert_array_equal(decode(s, (3, 4), "column"), decode(s, (4, 3), "row").T)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("order", rle.ORDERS)
def test_touching_runs_and_loose_whitespace_are_accepted(order: str, path: str) -> None:
    with paths(path):
        out = decode(" 1 2\t3 2\n 6 1 ", (2, 3), order)  # 1-2 and 3-4 touch: sorted and disjoint, so valid
        blank = decode(" \n", (2, 3), order)
        # Column order, 3x4: run 2-3 ends at the bottom of column 0, run 4-6 starts at the top of column 1 and
        # wraps into column 2, where run 7-7 touches its end.
        wrap = decode("2 2 4 3 7 1", (3, 4), order)
    expected = np.array([1, 1, 1, 1, 0, 1], np.uint8)
    np.testing.assert_array_equal(out, expected.reshape(2, 3) if order == "row" else expected.reshape(3, 2).T)
    assert not blank.any() and blank.shape == (2, 3)
    np.testing.assert_array_equal(wrap, rle2mask("2 2 4 3 7 1", (3, 4), order))


def test_empty_images() -> None:
    assert encode(np.zeros((0, 7), np.uint8)) == ""
    assert decode("", (0, 7)).shape == (0, 7)
    assert decode("", (0, 7), "column").shape == (0, 7)
    assert decode_resized("", (0, 7), (3, 2)).shape == (3, 2) and not decode_resized("", (0, 7), (3, 2)).any()
    assert decode_resized("1 2", (3, 4), (0, 5), "column").shape == (0, 5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("order", rle.ORDERS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 5), (16, 24), (33, 17)])
def test_empty_full_and_last_pixel_masks(shape: tuple[int, int], order: str, path: str) -> None:
    """The edges of the pixel range: nothing set, everything set (one run wrapping every row or column), runs
    that end on the last pixel, and a single pixel at either end."""
    h, w = shape
    n = h * w
    cases = {"": np.zeros(n, np.uint8), f"1 {n}": np.ones(n, np.uint8), f"{n} 1": np.eye(1, n, n - 1, np.uint8),
             "1 1": np.eye(1, n, 0, np.uint8)}
    if n > 3:
        cases[f"2 1 {n - 1} 2"] = np.array([0, 1] + [0] * (n - 4) + [1, 1], np.uint8)
    with paths(path):
        for text, flat in cases.items():
            expected = flat.reshape(shape) if order == "row" else flat.reshape(w, h).T
            assert encode(expected, order) == text
            assert_decodes(text, expected, order)
            for size in [(1, 1), shape, (2 * h + 1, w + 3), (max(1, h // 2), max(1, w // 3))]:
                got = decode_resized(text, shape, size, order)
                assert got.dtype == np.uint8 and got.flags.c_contiguous
                np.testing.assert_array_equal(got, resized(text, shape, size, order))


# ------------------------------------------------------------------------------------------- memory layouts


@pytest.mark.parametrize("order", rle.ORDERS)
def test_views_readonly_strided_and_word_aligned_widths(order: str) -> None:
    """The scan reads 8-pixel words of the caller's memory: views that start mid-word, read-only buffers,
    non-contiguous slices, and widths that are a multiple of 8 (the pixel above is word-aligned) all count."""
    rng = np.random.default_rng(7)
    big = (rng.random((70, 203)) < 0.3).astype(np.uint8)
    ro = big.copy()
    ro.flags.writeable = False
    cases = [big[1:, 3:200][:, :-2].copy()[5:],  # C-contiguous, data pointer not 8-byte aligned
             np.frombuffer(big.tobytes(), np.uint8, 69 * 203, 3).reshape(69, 203),  # read-only, unaligned
             ro, big[::2, ::3], big[:, 3:67], big[:64, :64], big[:1], big[:, :1], big[:5, :8]]
    for m in cases:
        assert encode(m, order) == mask2rle(np.ascontiguousarray(m), order), (m.shape, m.flags)


@pytest.mark.parametrize("order", rle.ORDERS)
def test_many_boundaries_outgrow_the_first_buffer(order: str) -> None:
    checker = np.indices((64, 96)).sum(axis=0) % 2  # a boundary at every pixel
    assert encode(checker, order) == mask2rle(checker.astype(np.uint8), order)
    np.testing.assert_array_equal(decode(encode(checker, order), checker.shape, order), checker)


@pytest.mark.parametrize("path", PATHS)
def test_clouds_size_masks_match_the_notebook_kernels(path: str) -> None:
    """350x525 masks as Clouds submissions hold them: a few large blobs, plus an empty and a full mask."""
    rng = np.random.default_rng(0)
    found = []
    for k in range(6):
        m = np.zeros((350, 525), np.uint8)
        if k == 4:
            m[:] = 1
        elif k < 4:
            for _ in range(k + 1):
                y, x = rng.integers(0, 300), rng.integers(0, 450)
                m[y:y + rng.integers(10, 200), x:x + rng.integers(10, 300)] = 1
        found.append(m)
    with paths(path):
        for m in found:
            for order in rle.ORDERS:
                s = mask2rle(m, order)
                assert encode(m, order) == s
                np.testing.assert_array_equal(decode(s, m.shape, order), m)


# --------------------------------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(m=masks(), order=st.sampled_from(rle.ORDERS), path=st.sampled_from(list(PATHS)), fortran=st.booleans(),
       dtype=st.sampled_from([np.uint8, np.bool_, np.int8, np.float32]))
def test_round_trip(m: np.ndarray, order: str, path: str, fortran: bool, dtype: type) -> None:
    x = m.astype(dtype) * (-3 if dtype in (np.int8, np.float32) else 1)  # any nonzero value is foreground
    with paths(path):
        s = encode(np.asfortranarray(x) if fortran else x, order)
        assert_decodes(s, m, order)
    assert (s == "") == (not m.any())


@settings(max_examples=150, deadline=None)
@given(m=masks(), path=st.sampled_from(list(PATHS)), scale=st.integers(1, 255))
def test_matches_the_standard_kaggle_kernel(m: np.ndarray, path: str, scale: int) -> None:
    with paths(path):
        for order in rle.ORDERS:
            s = mask2rle(m, order)
            assert encode(m * np.uint8(scale), order) == s
            assert_decodes(s, m, order)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 10**16 - 1), min_size=1, max_size=300),
       seps=st.lists(st.sampled_from([" ", "  ", "\t", "\n", " \r\n"]), min_size=301, max_size=301),
       zeros=st.integers(0, 3))
def test_parse_reads_every_width_of_integer(values: list[int], seps: list[str], zeros: int) -> None:
    text = seps[0] + "".join("0" * zeros + str(v) + sep for v, sep in zip(values, seps[1:]))
    assert rle._parse(text, "").tolist() == values


def test_parse_takes_long_zero_padded_numbers_and_python_whitespace() -> None:
    assert rle._parse("0" * 30 + "7 12", "").tolist() == [7, 12]  # 31 digits, only one significant
    assert rle._parse("3\x1c4\x1f5", "").tolist() == [3, 4, 5]  # str.split() separators the kernel leaves alone


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("order", rle.ORDERS)
def test_decode_reads_what_parse_reads(order: str, path: str) -> None:
    """decode parses row-order and F-layout fills inside the fill kernel; text that kernel leaves to _parse (other
    str.split() separators, non-ASCII spaces) and zero-padded numbers decode all the same."""
    expected = rle2mask("2 2 5 1", (2, 3), order)
    with paths(path):
        for text in ["2 2 5 1", "0" * 30 + "2 2\t5 1\n", "2\x1c2 5\x1f1", "2\u20032 5 1", " 2 2 0005 01 "]:
            assert_decodes(text, expected, order)
        assert_decodes(" \n ", np.zeros((2, 3), np.uint8), order)


@settings(max_examples=100, deadline=None)
@given(runs=st.lists(st.tuples(st.integers(0, 10**16), st.integers(1, 10**16)), min_size=1, max_size=150))
def test_format_matches_str_join(runs: list[tuple[int, int]]) -> None:
    edges, expected, end = [], [], 0
    for gap, length in runs:
        edges += [end + gap, end + gap + length]
        expected += [end + gap + 1, length]
        end += gap + length
    assert str(rle._kernels().format(np.array(edges, np.int64)), "ascii") == " ".join(map(str, expected))


# ---------------------------------------------------------------------------------------------- decode_resized


def test_decode_resized_hand_checked() -> None:
    s = encode(M34, "column")
    np.testing.assert_array_equal(decode_resized(s, (3, 4), (6, 8), "column"), np.kron(M34, np.ones((2, 2), np.uint8)))
    np.testing.assert_array_equal(decode_resized(s, (3, 4), (3, 4), "column"), M34)
    # 3x4 -> 1x2: output pixel centres at source (1.5, 1.0) and (1.5, 3.0), i.e. pixels (1, 1) and (1, 3)
    np.testing.assert_array_equal(decode_resized(encode(M34), (3, 4), (1, 2)), [[1, 0]])


def test_sampling_positions_match_cv2() -> None:
    """Output pixel j of m samples source pixel i of n where cv2 resizes an index ramp to put it (float scale
    arithmetic, so exact ties at pixel edges must come out as cv2 rounds them)."""
    k = rle._kernels()
    for n in list(range(1, 40)) + [350, 525, 1400, 2100, 6330, 8181]:
        for m in list(range(1, 40)) + [64, 350, 384, 525, 1400, 2100]:
            ramp = np.arange(n, dtype=np.int32).reshape(1, n)
            want = cv2.resize(ramp, (m, 1), interpolation=cv2.INTER_NEAREST_EXACT).ravel()
            assert np.repeat(np.arange(n), np.diff(k.nearest(n, m))).tolist() == want.tolist(), (n, m)


@settings(max_examples=250, deadline=None)
@given(m=masks(), order=st.sampled_from(rle.ORDERS), size=st.tuples(st.integers(1, 100), st.integers(1, 100)))
def test_decode_resized_matches_decode_then_cv2_resize(m: np.ndarray, order: str, size: tuple[int, int]) -> None:
    s = encode(m, order)
    got = decode_resized(s, m.shape, size, order)
    assert got.dtype == np.uint8 and got.flags.c_contiguous and got.shape == size
    np.testing.assert_array_equal(got, resized(s, m.shape, size, order))


@pytest.mark.parametrize("order", rle.ORDERS)
def test_decode_resized_clouds_sizes(order: str) -> None:
    """A 1400x2100-like label (scaled to 280x420 to stay fast) at model input and submission sizes."""
    rng = np.random.default_rng(3)
    m = (cv2.resize(rng.random((7, 11)).astype(np.float32), (420, 280)) > 0.55).astype(np.uint8)
    m[-1, -1] = 1
    s = encode(m, order)
    for size in [(384, 384), (70, 105), (280, 420), (281, 419), (97, 31), (560, 840)]:
        np.testing.assert_array_equal(decode_resized(s, m.shape, size, order), resized(s, m.shape, size, order))


@pytest.mark.parametrize("order", rle.ORDERS)
def test_decode_resized_checks_runs_it_does_not_sample(order: str) -> None:
    """A 1x1 output samples one pixel, yet every run is validated, with decode's message."""
    for text in ["1 3 2 2", "1 2 99 5", "0 3", "1 2 5"]:
        with pytest.raises(BadInput) as full:
            decode(text, (10, 10), order, where="train.csv row 3")
        with pytest.raises(BadInput) as sampled:
            decode_resized(text, (10, 10), (1, 1), order, where="train.csv row 3")
        assert str(sampled.value) == str(full.value)
    with pytest.raises(BadInput, match=r"output size must be non-negative, got \(-1, 4\)"):
        decode_resized("1 1", (3, 4), (-1, 4))
    with pytest.raises(BadInput, match="output size must be"):
        decode_resized("1 1", (3, 4), (5,))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "culprit"), [
    ("1 2 3", "odd number of values (3)"),
    ("1 x", "length 'x' (pair 1) is not an integer"),
    ("1.5 2", "start '1.5' (pair 1) is not an integer"),
    ("1e3 2", "'1e3'"),
    ("+1 2", "'+1'"),
    ("1 \u0663", "'\u0663'"),  # an Arabic-Indic digit: int() would take it, Kaggle would not
    ("1 2 3 4 5 nan", "length 'nan' (pair 3)"),
    ("0 2", "start 0 (pair 1) is < 1"),
    ("-3 2", "start '-3' (pair 1) is < 1"),
    ("1 2 5 0", "length 0 (pair 2) is < 1"),
    ("1 2 5 -1", "length '-1' (pair 2) is < 1"),
    ("11 3", "run 11 3 (pair 1) runs past the end of the 3x4 image (12 pixels)"),
    ("13 1", "run 13 1 (pair 1)"),
    ("5 2 1 1", "run 1 1 (pair 2) overlaps or comes before run 5 2 (pair 1)"),
    ("1 3 3 2", "run 3 2 (pair 2) overlaps"),
    ("2 5 4 1", "run 4 1 (pair 2) overlaps"),  # inside a run that wraps into the next column
    ("1 2 4 1 0 1", "start 0 (pair 3) is < 1"),  # a later start < 1 is named even after an out-of-order run
    ("1 " + "9" * 17, "larger than any image"),
])
@pytest.mark.parametrize("order", rle.ORDERS)
def test_malformed_rle_names_the_culprit(text: str, culprit: str, order: str) -> None:
    with pytest.raises(BadInput, match="^train.csv row 3: RLE") as e:
        decode(text, (3, 4), order, where="train.csv row 3")
    assert culprit in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_arguments() -> None:
    with pytest.raises(BadUsage, match="'diagonal'"):
        encode(M34, "diagonal")
    with pytest.raises(BadUsage, match="'F'"):
        decode("1 1", (3, 4), "F")
    with pytest.raises(BadInput, match=r"2-D.*\(2, 3, 4\)"):
        encode(np.zeros((2, 3, 4)))
    with pytest.raises(BadInput, match="float nan"):
        decode(float("nan"), (3, 4))  # type: ignore[arg-type]  # an empty cell read by pandas without na=False
    with pytest.raises(BadInput, match=r"\(3,\)"):
        decode("1 1", (3,))  # type: ignore[arg-type]
    with pytest.raises(BadInput, match=r"\(-1, 4\)"):
        decode("1 1", (-1, 4))


def test_importing_the_module_does_not_import_numba() -> None:
    """Competition presets import it on the CLI start-up path; numba loads on the first encode/decode."""
    code = "import sys, kcomp.formats.rle; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
