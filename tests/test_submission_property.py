"""align_to_sample: any one way a submission can be malformed is refused; a shuffled good one comes back in order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcomp.artifacts.submission import align_to_sample
from kcomp.errors import BadInput

# ids a CSV must keep as written: leading zeros, pandas' NA spellings, SIIM-style suffixes
ID_TEXT = st.one_of(
    st.text(st.sampled_from("abcdefXYZ0123456789_-."), min_size=1, max_size=12),
    st.sampled_from(["0001", "1", "01", "NA", "nan", "None", "null", "00086460a852_study", "000a312787f2_image"]),
)
DEFECTS = ("missing id", "duplicate id", "unknown id", "renamed column", "missing column", "extra column")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Module-scoped: hypothesis runs many examples per test call, so a function-scoped tmp_path would be shared."""
    return tmp_path_factory.mktemp("submission_property")


@st.composite
def samples(draw) -> tuple[str, pd.DataFrame]:
    id_col = draw(st.sampled_from(["id", "Id", "image_id", "Image_Label"]))
    ids = draw(st.lists(ID_TEXT, min_size=1, max_size=25, unique=True))
    extra = draw(st.lists(st.sampled_from(["PredictionString", "label", "EncodedPixels", "Predicted"]),
                          min_size=1, max_size=2, unique=True))
    sample = pd.DataFrame({id_col: ids, **{c: ["placeholder"] * len(ids) for c in extra}})
    return id_col, sample


def predictions(draw, sample: pd.DataFrame, id_col: str) -> pd.DataFrame:
    """The sample's rows with made-up predictions, shuffled."""
    sub = sample.copy()
    for c in sample.columns.drop(id_col):
        sub[c] = [f"{c} {i} {draw(st.integers(0, 9))}" for i in range(len(sub))]
    order = draw(st.permutations(range(len(sub))))
    return sub.iloc[list(order)].reset_index(drop=True)


def write_sample(workdir: Path, sample: pd.DataFrame) -> Path:
    path = workdir / "sample_submission.csv"
    sample.to_csv(path, index=False)
    return path


@settings(max_examples=150, deadline=None)
@given(data=st.data(), drawn=samples())
def test_well_formed_shuffled_submission_comes_back_in_sample_order(
        workdir: Path, data: st.DataObject, drawn: tuple[str, pd.DataFrame]) -> None:
    id_col, sample = drawn
    sub = predictions(data.draw, sample, id_col)
    out = align_to_sample(sub, write_sample(workdir, sample), id_col)
    assert list(out.columns) == list(sample.columns)
    assert list(out[id_col]) == list(sample[id_col])
    assert list(out.index) == list(range(len(sample)))
    expected = sub.set_index(id_col)
    for _, row in out.iterrows():  # every prediction stayed with its id
        assert row.drop(id_col).to_dict() == expected.loc[row[id_col]].to_dict()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), drawn=samples(), defect=st.sampled_from(DEFECTS))
def test_any_one_defect_is_refused(workdir: Path, data: st.DataObject, drawn: tuple[str, pd.DataFrame],
                                   defect: str) -> None:
    id_col, sample = drawn
    sub = predictions(data.draw, sample, id_col)
    row = data.draw(st.integers(0, len(sub) - 1), label="row")
    if defect == "missing id":
        sub = sub.drop(index=row)
    elif defect == "duplicate id":
        sub = pd.concat([sub, sub.iloc[[row]]], ignore_index=True)
    elif defect == "unknown id":
        new = data.draw(ID_TEXT.filter(lambda i: i not in set(sample[id_col])), label="unknown id")
        extra = sub.iloc[[row]].copy()
        extra[id_col] = new
        sub = pd.concat([sub, extra], ignore_index=True)
    else:
        col = data.draw(st.sampled_from(list(sub.columns)), label="column")
        if defect == "renamed column":
            sub = sub.rename(columns={col: col + "_x"})
        elif defect == "missing column":
            sub = sub.drop(columns=[col])
        else:
            sub = sub.assign(**{col + "_extra": "0"})
    path = write_sample(workdir, sample)
    with pytest.raises(BadInput) as e:
        align_to_sample(sub, path, id_col)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
