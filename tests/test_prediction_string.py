"""kcomp.formats.prediction_string: SIIM PredictionString groups and the train_image_level.csv `boxes` literal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcomp.errors import BadInput
from kcomp.formats.prediction_string import (
    Pred,
    format_prediction_string,
    format_prediction_strings,
    parse_prediction_string,
    parse_siim_boxes,
)

LABELS = ("opacity", "none", "negative", "typical", "indeterminate", "atypical")
REAL_CELL = ("[{'x': 789.28836, 'y': 582.43035, 'width': 1026.65662, 'height': 1917.30292}, "
             "{'x': 2245.91208, 'y': 591.20528, 'width': 1094.66162, 'height': 1761.54944}]")
REAL_LABEL = "opacity 1 789.28836 582.43035 1815.94498 2499.73327 opacity 1 2245.91208 591.20528 3340.5737 2352.75472"


# ---------------------------------------------------------------------------------------------- PredictionString


def test_format_hand_checked() -> None:
    preds = [Pred("opacity", 0.5, 10, 20, 30, 40), Pred("none", 1, 0, 0, 1, 1)]
    assert format_prediction_string(preds) == "opacity 0.5 10 20 30 40 none 1 0 0 1 1"
    assert format_prediction_string([Pred("typical", 0.123456789, 1.5, -0.0000001, 2.25, 1e-9)]) == \
        "typical 0.123457 1.5 0 2.25 0"
    assert format_prediction_string([Pred("atypical", 0.98765, 100.0, 2.0, 300.4, 4.0)], decimals=2) == \
        "atypical 0.99 100 2 300.4 4"
    assert format_prediction_string([Pred("negative", 1e-7, 0, 0, 1, 1)], decimals=0) == "negative 0 0 0 1 1"
    assert format_prediction_string([]) == ""


def test_parse_hand_checked() -> None:
    assert parse_prediction_string("opacity 0.5 10 20 30 40 none 1 0 0 1 1") == [
        Pred("opacity", 0.5, 10.0, 20.0, 30.0, 40.0), Pred("none", 1.0, 0.0, 0.0, 1.0, 1.0)]
    assert parse_prediction_string("  negative 0.25 0 0 1 1\n typical 1e-3 0 0 1 1 ") == [
        Pred("negative", 0.25, 0, 0, 1, 1), Pred("typical", 0.001, 0, 0, 1, 1)]
    assert parse_prediction_string("") == []
    # the `label` column of train_image_level.csv has the same shape
    first, second = parse_prediction_string(REAL_LABEL)
    assert first == Pred("opacity", 1.0, 789.28836, 582.43035, 1815.94498, 2499.73327)
    assert second.x2 == 3340.5737


@st.composite
def preds(draw) -> Pred:
    coord = st.floats(-1e7, 1e7, allow_nan=False, allow_infinity=False)
    return Pred(draw(st.sampled_from(LABELS)), draw(st.floats(0, 1)), draw(coord), draw(coord), draw(coord),
                draw(coord))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), decimals=st.integers(0, 8))
def test_format_then_parse_round_trips(data: st.DataObject, decimals: int) -> None:
    ps = data.draw(st.lists(preds(), max_size=8))
    text = format_prediction_string(ps, decimals=decimals)
    assert not any("e" in tok for k, tok in enumerate(text.split()) if k % 6)  # fixed-point, never 1e-07
    back = parse_prediction_string(text, where="row 1")
    assert back == [Pred(p.label, *(round(v, decimals) for v in (p.conf, p.x1, p.y1, p.x2, p.y2))) for p in ps]
    assert format_prediction_string(back, decimals=decimals) == text


@settings(max_examples=100, deadline=None)
@given(data=st.data(), decimals=st.integers(0, 8))
def test_format_many_from_arrays_equals_one_by_one(data: st.DataObject, decimals: int) -> None:
    """The array formatter (SIIM's image rows, no object per box) writes the very text of the scalar one."""
    import numpy as np

    rows = data.draw(st.lists(st.lists(preds(), max_size=5), max_size=5))
    flat = [p for r in rows for p in r]
    offsets = np.cumsum([0] + [len(r) for r in rows])
    values = np.array([[p.conf, p.x1, p.y1, p.x2, p.y2] for p in flat]).reshape(-1, 5)
    got = format_prediction_strings([p.label for p in flat], values, offsets, decimals=decimals)
    assert got == [format_prediction_string(r, decimals=decimals) for r in rows]


@pytest.mark.parametrize(("text", "culprit"), [
    ("opacity 0.5 10 20 30", "has 5 tokens, not groups of 6: the last group 'opacity 0.5 10 20 30' has 5"),
    ("none 1 0 0 1 1 opacity", "has 7 tokens"),
    ("opacity high 10 20 30 40", "token 2 'high' (conf of 'opacity') is not a finite number"),
    ("opacity nan 10 20 30 40", "token 2 'nan' (conf of 'opacity')"),
    ("opacity NaN 10 20 30 40", "'NaN'"),
    ("opacity inf 10 20 30 40", "'inf'"),
    ("opacity 1e999 10 20 30 40", "'1e999'"),
    ("opacity 0.5 10 20 30 4O", "token 6 '4O' (y2 of 'opacity')"),
    ("opacity 0.5 1_0 20 30 40", "'1_0'"),
    ("0.5 opacity 10 20 30 40", "token 1 '0.5': expected a label"),
    ("none 1 0 0 1 1 1 0 0 1 1 none", "token 7 '1': expected a label"),
])
def test_malformed_prediction_strings_name_where_and_token(text: str, culprit: str) -> None:
    with pytest.raises(BadInput, match="^submission.csv row 4: PredictionString") as e:
        parse_prediction_string(text, where="submission.csv row 4")
    assert culprit in str(e.value)


def test_format_rejects_what_could_not_be_read_back() -> None:
    with pytest.raises(BadInput, match=r"conf is nan"):
        format_prediction_string([Pred("opacity", math.nan, 0, 0, 1, 1)])
    with pytest.raises(BadInput, match=r"x2 is inf"):
        format_prediction_string([Pred("opacity", 0.5, 0, 0, math.inf, 1)])
    for label in ("", "two words", "0.5", "nan"):
        with pytest.raises(BadInput, match="label"):
            format_prediction_string([Pred(label, 0.5, 0, 0, 1, 1)])
    with pytest.raises(BadInput, match="float"):
        parse_prediction_string(math.nan)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match=r"x1 is nan"):
        format_prediction_strings(["opacity"], [[0.5, math.nan, 0, 1, 1]], [0, 1])
    with pytest.raises(BadInput, match="label"):
        format_prediction_strings(["two words"], [[0.5, 0, 0, 1, 1]], [0, 1])


# --------------------------------------------------------------------------------------------------------- boxes


def test_parse_siim_boxes_real_cells() -> None:
    assert parse_siim_boxes(REAL_CELL) == [
        {"x": 789.28836, "y": 582.43035, "width": 1026.65662, "height": 1917.30292},
        {"x": 2245.91208, "y": 591.20528, "width": 1094.66162, "height": 1761.54944},
    ]
    assert parse_siim_boxes("[{'x': 0, 'y': 1, 'width': 2, 'height': 3}]") == [
        {"x": 0.0, "y": 1.0, "width": 2.0, "height": 3.0}]
    for empty in ("", "  ", "nan", "NaN", math.nan, None, "[]"):
        assert parse_siim_boxes(empty) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "x": st.floats(0, 5000), "y": st.floats(0, 5000),
    "width": st.floats(0.001, 5000), "height": st.floats(0.001, 5000)}), max_size=6))
def test_parse_siim_boxes_reads_what_python_wrote(boxes: list[dict[str, float]]) -> None:
    assert parse_siim_boxes(str(boxes)) == boxes  # the CSV holds str() of a list of dicts


@pytest.mark.parametrize(("cell", "culprit"), [
    ("__import__('os').system('echo hi')", "not a list of"),
    ("[{'x': (1).__class__}]", "not a list of"),
    ("[{'x': float('nan'), 'y': 0, 'width': 1, 'height': 1}]", "not a list of"),
    ("[{'x': 1, 'y': 2, 'width': 3, 'height': 4}] + []", "not a list of"),
    ("[{'x': 1, 'y': 2, 'width': 3, 'height': 4}", "not a list of"),
    ("{'x': 1, 'y': 2, 'width': 3, 'height': 4}", "must be a list of boxes, got a dict"),
    ("'[]'", "got a str"),
    ("[[1, 2, 3, 4]]", "item 1 must be a dict with keys x, y, width, height, got list"),
    ("[{'x': 1, 'y': 2, 'width': 3}]", "got ['width', 'x', 'y']"),
    ("[{'x': 1, 'y': 2, 'width': 3, 'height': 4, 'z': 0}]", "item 1 must be a dict"),
    ("[{'x': 1, 'y': 2, 'width': 3, 'height': 4}, {'x': '1', 'y': 2, 'width': 3, 'height': 4}]",
     "item 2: x = '1' is not a finite number"),
    ("[{'x': True, 'y': 2, 'width': 3, 'height': 4}]", "x = True"),
    ("[{'x': [1], 'y': 2, 'width': 3, 'height': 4}]", "x = [1]"),
    ("[{'x': 1e999, 'y': 2, 'width': 3, 'height': 4}]", "x = inf"),
    ("[{'x': 10**400, 'y': 2, 'width': 3, 'height': 4}]", "not a list of"),
    ("[{'x': 1" + "0" * 400 + ", 'y': 2, 'width': 3, 'height': 4}]", "is not a finite number"),
    ("[{'x': 1j, 'y': 2, 'width': 3, 'height': 4}]", "x = 1j"),
    ("[{'x': 1, 'y': 2, 'width': 0, 'height': 4}]", "width = 0 must be > 0"),
    ("[{'x': 1, 'y': 2, 'width': 3, 'height': -4.5}]", "height = -4.5 must be > 0"),
    ("[" * 10000 + "]" * 10000, "not a list of"),
])
def test_parse_siim_boxes_rejects_junk_naming_where(cell: str, culprit: str) -> None:
    with pytest.raises(BadInput, match="^train_image_level.csv row 9: boxes") as e:
        parse_siim_boxes(cell, where="train_image_level.csv row 9")
    assert culprit in str(e.value)
    assert "\n" not in str(e.value)


def test_parse_siim_boxes_never_executes(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    for payload in (f"__import__('pathlib').Path({str(target)!r}).touch()",
                    f"[{{'x': __import__('pathlib').Path({str(target)!r}).touch()}}]",
                    f"[{{'x': (lambda: open({str(target)!r}, 'w'))()}}]"):
        with pytest.raises(BadInput):
            parse_siim_boxes(payload, where="row 1")
    assert not target.exists()
    with pytest.raises(BadInput, match="int"):
        parse_siim_boxes(5)
