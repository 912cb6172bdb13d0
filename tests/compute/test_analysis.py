import numpy as np
import pytest

from workers.compute.analysis import elasticity_correlation
from workers.compute.datasets import load_builtin
from workers.compute.plots import elasticity_png, heatmap_png

PNG = b"\x89PNG\r\n\x1a\n"


def test_decreasing_similarity_gives_minus_one():
    D = load_builtin("two_cosines", n=40, seed=0).geodesic(np.arange(20), np.arange(20))
    S = np.exp(-D)  # strictly decreasing in distance
    result = elasticity_correlation(S, D)
    assert result["spearman"] == pytest.approx(-1.0)
    assert result["pearson"] < -0.9
    assert result["pairs"] == 20 * 19


def test_linear_relation_and_asymmetric_pairs():
    rng = np.random.default_rng(0)
    D = rng.uniform(0, 1, (10, 10))
    S = 2 - 3 * D
    np.fill_diagonal(S, 99.0)  # the diagonal is ignored
    result = elasticity_correlation(S, D)
    assert result["pearson"] == pytest.approx(-1.0)
    assert result["pairs"] == 90


def test_nan_safe():
    D = load_builtin("torus", n=20, seed=0).geodesic()  # NaN across classes
    result = elasticity_correlation(-D, D)
    assert result["pairs"] == 2 * 10 * 9
    assert result["spearman"] == pytest.approx(-1.0)
    constant = elasticity_correlation(np.ones((5, 5)), np.arange(25.0).reshape(5, 5))
    assert constant["pearson"] is None and constant["spearman"] is None and constant["pairs"] == 20
    empty = elasticity_correlation(np.ones((1, 1)), np.zeros((1, 1)))
    assert empty == {"pearson": None, "spearman": None, "pairs": 0}


def test_plots_are_deterministic_png():
    rng = np.random.default_rng(0)
    S = rng.standard_normal((30, 30))
    labels = rng.integers(0, 3, 30)
    png = heatmap_png(S, labels)
    assert png.startswith(PNG)
    assert png == heatmap_png(S, labels)
    big = rng.uniform(size=30_000)  # more pairs than are drawn
    sims = -big + 0.1 * rng.standard_normal(30_000)
    scatter = elasticity_png(sims, big, title="test")
    assert scatter.startswith(PNG)
    assert scatter == elasticity_png(sims, big, title="test")
    D = load_builtin("torus", n=20, seed=0).geodesic()
    assert elasticity_png(-D, D, title="torus").startswith(PNG)
