"""kcomp.post.rle: Kaggle RLE in row-major (Vesuvius) and column-major (Understanding Clouds) pixel order."""

from __future__ import annotations

from contextlib import ExitStack
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kcomp.errors import BadInput, BadUsage
from kcomp.post import rle
from kcomp.post.rle import decode, encode


def rle_encode_ref(img):  # row-major: the kernel every Kaggle notebook copies
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def rle_decode_ref(mask_rle, shape):
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape)


def block_paths(small: bool) -> ExitStack:
    """Force the many-block encode scan and the row-accumulating column decode that only big images take."""
    stack = ExitStack()
    if small:
        stack.enter_context(mock.patch.object(rle, "_CHUNK", 5))
        stack.enter_context(mock.patch.object(rle, "_TRANSPOSE_MAX", 0))
    return stack


@st.composite
def masks(draw, max_side: int = 64) -> np.ndarray:
    """0/1 masks up to 64x64: random density, all-zero, all-one, and stripes (long runs that wrap rows/columns)."""
    shape = draw(st.tuples(st.integers(1, max_side), st.integers(1, max_side)))
    kind = draw(st.sampled_from(["random", "zeros", "ones", "stripes"]))
    if kind == "zeros":
        return np.zeros(shape, np.uint8)
    if kind == "ones":
        return np.ones(shape, np.uint8)
    if kind == "stripes":
        lo, hi = draw(st.integers(0, shape[0] * shape[1])), draw(st.integers(0, shape[0] * shape[1]))
        flat = np.zeros(shape[0] * shape[1], np.uint8)
        flat[min(lo, hi):max(lo, hi)] = 1
        return flat.reshape(shape) if draw(st.booleans()) else flat.reshape(shape[::-1]).T.copy()
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


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize(("mask", "order", "expected"), HAND)
def test_encode_and_decode_hand_checked(mask: np.ndarray, order: str, expected: str, small: bool) -> None:
    with block_paths(small):
        assert encode(mask, order) == expected
        assert encode(np.asfortranarray(mask), order) == expected
        out = decode(expected, mask.shape, order)
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)


def test_any_nonzero_pixel_counts_as_one() -> None:
    m = np.array([[0, 2, -1], [0.5, 0, 255]], dtype=np.float32)
    assert encode(m) == "2 3 6 1"  # 0 1 1 | 1 0 1
    assert encode(m, "column") == encode(m.astype(bool), "column") == "2 2 5 2"  # 0 1 | 1 0 | 1 1
    assert encode(np.array([[0, 300]], np.int64)) == "2 1"


def test_orders_differ_and_agree_via_transpose() -> None:
    assert encode(M34, "row") != encode(M34, "column")
    assert encode(M34, "column") == encode(M34.T, "row")
    assert encode(M34, "row") == encode(M34.T, "column")
    s = encode(M34, "column")
    np.testing.assert_array_equal(decode(s, (3, 4), "column"), decode(s, (4, 3), "row").T)


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("order", rle.ORDERS)
def test_touching_runs_and_loose_whitespace_are_accepted(order: str, small: bool) -> None:
    with block_paths(small):
        out = decode(" 1 2\t3 2\n 6 1 ", (2, 3), order)  # 1-2 and 3-4 touch: sorted and disjoint, so valid
        blank = decode(" \n", (2, 3), order)
    expected = np.array([1, 1, 1, 1, 0, 1], np.uint8)
    np.testing.assert_array_equal(out, expected.reshape(2, 3) if order == "row" else expected.reshape(3, 2).T)
    assert not blank.any() and blank.shape == (2, 3)


def test_empty_images() -> None:
    assert encode(np.zeros((0, 7), np.uint8)) == ""
    assert decode("", (0, 7)).shape == (0, 7)


# --------------------------------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(m=masks(), order=st.sampled_from(rle.ORDERS), small=st.booleans(), fortran=st.booleans())
def test_round_trip(m: np.ndarray, order: str, small: bool, fortran: bool) -> None:
    with block_paths(small):
        s = encode(np.asfortranarray(m) if fortran else m, order)
        out = decode(s, m.shape, order)
    np.testing.assert_array_equal(out, m)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert (s == "") == (not m.any())


@settings(max_examples=150, deadline=None)
@given(m=masks(), small=st.booleans())
def test_matches_the_standard_kaggle_kernel(m: np.ndarray, small: bool) -> None:
    with block_paths(small):
        assert encode(m, "row") == rle_encode_ref(m)
        assert encode(m, "column") == rle_encode_ref(m.T)
        s_row, s_col = rle_encode_ref(m), rle_encode_ref(m.T)
        np.testing.assert_array_equal(decode(s_row, m.shape, "row"), rle_decode_ref(s_row, m.shape))
        np.testing.assert_array_equal(decode(s_col, m.shape, "column"), rle_decode_ref(s_col, m.shape[::-1]).T)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 10**16 - 1), min_size=1, max_size=300),
       seps=st.lists(st.sampled_from([" ", "  ", "\t", "\n", " \r\n"]), min_size=301, max_size=301),
       zeros=st.integers(0, 3))
def test_parse_reads_every_width_of_integer(values: list[int], seps: list[str], zeros: int) -> None:
    text = seps[0] + "".join("0" * zeros + str(v) + sep for v, sep in zip(values, seps[1:]))
    assert rle._parse(text, "").tolist() == values


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 10**17), min_size=1, max_size=600))
def test_join_matches_str_join(values: list[int]) -> None:
    assert rle._join(np.array(values, np.int64)) == " ".join(map(str, values))


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
