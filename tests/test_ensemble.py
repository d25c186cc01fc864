from __future__ import annotations

import numpy as np
import pytest

from kcomp.errors import BadInput, BadUsage
from kcomp.post.ensemble import METHODS, combine


def _probs(seed: int, n: int = 50, c: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(c), n)


def test_mean_of_identical_is_identity() -> None:
    p = _probs(0)
    out = combine([p, p, p])
    assert out.dtype == np.float32 and out.shape == p.shape
    np.testing.assert_allclose(out, p, rtol=1e-6)


def test_weighted_mean() -> None:
    a, b = _probs(0), _probs(1)
    np.testing.assert_allclose(combine([a, b], weights=[3, 1]), 0.75 * a + 0.25 * b, rtol=1e-6)


@pytest.mark.parametrize("method", ["mean", "geometric", "rank"])
def test_weight_one_zero_returns_first(method: str) -> None:
    a, b = _probs(0), _probs(1)
    expected = combine([a], method=method)
    np.testing.assert_allclose(combine([a, b], method=method, weights=[1, 0]), expected, rtol=1e-6)
    if method != "rank":
        np.testing.assert_allclose(expected, a, rtol=1e-6)


def test_geometric_of_same_is_same() -> None:
    p = _probs(2)
    np.testing.assert_allclose(combine([p, p], method="geometric"), p, rtol=1e-5)


def test_geometric_formula_and_normalisation() -> None:
    a, b = _probs(0), _probs(1)
    g = np.sqrt(a * b)
    out = combine([a, b], method="geometric")
    np.testing.assert_allclose(out, g / g.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(combine([a, b], method="geometric", normalize=False), g, rtol=1e-5)


def test_power_is_unrooted_mean_of_powers() -> None:
    a, b = _probs(0), _probs(1)
    raw = (a**2 + b**2) / 2
    np.testing.assert_allclose(combine([a, b], method="power", normalize=False), raw, rtol=1e-5)
    np.testing.assert_allclose(combine([a, b], method="power"), raw / raw.sum(1, keepdims=True), rtol=1e-5)


def test_power_one_equals_mean() -> None:
    a, b = _probs(0), _probs(1)
    np.testing.assert_allclose(
        combine([a, b], method="power", power=1.0, weights=[2, 1]), combine([a, b], weights=[2, 1]), rtol=1e-6
    )


def test_rank_in_unit_interval_and_monotone_per_column() -> None:
    a = _probs(3, n=40)
    out = combine([a], method="rank")
    assert out.min() == 0.0 and out.max() == 1.0
    for j in range(a.shape[1]):
        order = np.argsort(a[:, j])
        assert (np.diff(out[order, j]) > 0).all()  # continuous data: no ties, strictly increasing
    both = combine([a, _probs(4, n=40)], method="rank")
    assert both.min() >= 0.0 and both.max() <= 1.0
    assert not np.allclose(both.sum(1), 1.0)  # ranks are never renormalised into distributions


def test_rank_average_ties() -> None:
    out = combine([np.array([0.1, 0.5, 0.5, 0.9])], method="rank")
    np.testing.assert_allclose(out, [0.0, 0.5, 0.5, 1.0])


def test_multilabel_rows_are_not_renormalised() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.uniform(size=(30, 4)), rng.uniform(size=(30, 4))
    np.testing.assert_allclose(combine([a, b]), (a + b) / 2, rtol=1e-6)


def test_elementwise_on_maps_and_vectors() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.uniform(size=(3, 8, 8)), rng.uniform(size=(3, 8, 8))
    np.testing.assert_allclose(combine([a, b], method="geometric"), np.sqrt(a * b), rtol=1e-5)
    r = combine([a, b], method="rank")
    expected = (np.argsort(np.argsort(a, 0), 0) + np.argsort(np.argsort(b, 0), 0)) / 2 / 2  # per-pixel ranks
    np.testing.assert_allclose(r, expected, rtol=1e-6)
    v = rng.uniform(size=10)
    np.testing.assert_allclose(combine([v, v], method="power", power=3), v**3, rtol=1e-5)


def test_shape_mismatch_names_index_and_shapes() -> None:
    a = _probs(0)
    with pytest.raises(BadInput, match=r"array 2 has shape \(50, 4\) but array 0 has shape \(50, 5\)"):
        combine([a, a, a[:, :4]])


def test_nan_and_inf_rejected() -> None:
    a = _probs(0)
    b = a.copy()
    b[3, 2] = np.nan
    with pytest.raises(BadInput, match="array 1 contains NaN or inf"):
        combine([a, b])
    b[3, 2] = np.inf
    with pytest.raises(BadInput, match="array 1 contains NaN or inf"):
        combine([a, b], method="rank")


@pytest.mark.parametrize(
    ("weights", "match"),
    [([1.0], "1 weights for 2 arrays"), ([1.0, -0.5], "non-negative"), ([0, 0], "all zero"), ([1, np.nan], "finite")],
)
def test_bad_weights(weights: list[float], match: str) -> None:
    with pytest.raises(BadUsage, match=match):
        combine([_probs(0), _probs(1)], weights=weights)


def test_bad_usage() -> None:
    with pytest.raises(BadUsage, match="choose one of: " + ", ".join(METHODS)):
        combine([_probs(0)], method="median")
    with pytest.raises(BadUsage, match="no arrays"):
        combine([])
    with pytest.raises(BadUsage, match=r"--power 0: must be in \(0, 64\]"):
        combine([_probs(0)], method="power", power=0)
    with pytest.raises(BadInput, match="negative values"):
        combine([-_probs(0)], method="power")


# ---- dense maps (seg, ink): blended id by id into a new npz


def _map_file(path, maps: dict[str, np.ndarray], order: list[str]) -> None:
    import pandas as pd

    from kcomp.artifacts.predictions import write_predictions

    df = pd.DataFrame({"id": order, "fold": -1, "map_key": [f"k{i}" for i in order],
                       "map": [maps[i] for i in order]})
    write_predictions(df, path, task="seg", kind="test", classes=["a", "b"])


def test_dense_maps_blend_per_id_in_first_files_order(tmp_path) -> None:
    from kcomp.artifacts.predictions import read_predictions
    from tests.conftest import run_cli

    rng = np.random.default_rng(0)
    ids = ["x", "y", "z"]
    a = {i: rng.integers(0, 256, (2, 5, 7), dtype=np.uint8) for i in ids}
    b = {i: rng.integers(0, 256, (2, 5, 7), dtype=np.uint8) for i in ids}
    _map_file(tmp_path / "a.parquet", a, ids)
    _map_file(tmp_path / "b.parquet", b, ids[::-1])  # other row order and keys: matched by id
    r = run_cli("ensemble", tmp_path / "a.parquet", tmp_path / "b.parquet", "--weights", "1,3",
                "-o", tmp_path / "e.parquet")
    assert r.code == 0, r.stderr
    out = read_predictions(tmp_path / "e.parquet")
    assert out.df["id"].tolist() == ids
    with out.maps() as maps:
        for i, key in zip(out.df["id"], out.df["map_key"], strict=True):
            expect = 0.25 * a[i].astype(float) + 0.75 * b[i]
            assert maps[key].dtype == np.uint8
            assert np.abs(maps[key] - expect).max() <= 0.5 + 1e-4  # rounded to the nearest uint8 (float32 blend)


def test_dense_maps_refuse_rank(tmp_path) -> None:
    from tests.conftest import run_cli

    maps = {"x": np.zeros((1, 2, 2), np.uint8)}
    _map_file(tmp_path / "a.parquet", maps, ["x"])
    r = run_cli("ensemble", tmp_path / "a.parquet", tmp_path / "a.parquet", "--method", "rank",
                "-o", tmp_path / "e.parquet")
    assert r.code == 2 and "rank has no meaning per pixel" in r.last_error_line


def test_mean_maps_streams_models_and_equals_the_float32_mean() -> None:
    from kcomp.post.ensemble import mean_maps, mean_probs

    rng = np.random.default_rng(5)
    models = [[rng.integers(0, 256, (2, 4, 6), dtype=np.uint8) for _ in range(3)] for _ in range(5)]
    held = []

    def one_at_a_time():
        for m in models:
            held.append(len(held))
            yield m

    out = mean_maps(one_at_a_time())
    for row in range(3):
        expect = np.rint(np.mean([m[row] for m in models], axis=0, dtype=np.float32)).astype(np.uint8)
        np.testing.assert_array_equal(out[row], expect)
    assert mean_maps(iter([models[0]]))[0] is models[0][0]  # one model: its maps as they are
    probs = [rng.random((4, 3)).astype(np.float32) for _ in range(3)]
    np.testing.assert_allclose(mean_probs(iter(probs)), np.mean(probs, axis=0), rtol=1e-6)
