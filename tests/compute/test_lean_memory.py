"""The memory-lean forms of the n × n steps agree with their plain (float64, copying) definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.cluster import SpectralClustering
from sklearn.manifold import spectral_embedding as sklearn_embedding
from sklearn.metrics import adjusted_rand_score

from workers.compute import analysis, baselines, clustering
from workers.compute.metrics import similarity_ratio
from workers.compute.plots import block_means
from workers.compute.similarity import RepeatMean, postprocess, postprocess_


def asymmetric(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n)).astype(np.float32)
    return A @ A.T / n + rng.normal(scale=0.1, size=(n, n)).astype(np.float32)


@pytest.mark.parametrize(("symmetrize", "normalize"), [(True, False), (True, True), (False, True), (False, False)])
def test_postprocess_in_place_matches_the_float64_definition(symmetrize, normalize):
    S = asymmetric(1100)  # not a multiple of the 512-row tiles
    expected = S.astype(np.float64)
    if symmetrize:
        expected = (expected + expected.T) / 2
    if normalize:
        d = np.diag(expected).copy()
        inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
        expected = expected * inv[:, None] * inv[None, :]
    copy = postprocess(S, symmetrize=symmetrize, normalize=normalize)
    same = postprocess_(S, symmetrize=symmetrize, normalize=normalize)
    assert same is S and same.dtype == np.float32
    np.testing.assert_array_equal(copy, same)
    np.testing.assert_allclose(same, expected, rtol=1e-5, atol=1e-6)
    if symmetrize:
        np.testing.assert_array_equal(same, same.T)


def test_repeat_mean_is_the_mean_of_the_matrices():
    matrices = [asymmetric(300, seed) for seed in range(5)]
    expected = np.mean([m.astype(np.float64) for m in matrices], axis=0)
    mean = RepeatMean()
    first = matrices[0].copy()
    mean.add(first)
    for m in matrices[1:]:
        mean.add(m)
    result = mean.mean()
    assert result is first  # one accumulator, the first matrix itself
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_block_means_known_answer_and_identity_below_the_size():
    S = np.arange(36, dtype=np.float32).reshape(6, 6)
    order = np.array([5, 4, 3, 2, 1, 0])
    reduced, scale = block_means(S, order, 3)
    ordered = S[np.ix_(order, order)].astype(np.float64)
    expected = ordered.reshape(3, 2, 3, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(reduced, expected)
    assert scale == 0.5
    same, scale = block_means(S, order, 6)
    np.testing.assert_array_equal(same, ordered)
    assert scale == 1.0
    uneven, _ = block_means(S, np.arange(6), 4)  # blocks of 1 or 2 rows: the overall mean is kept
    widths = np.diff((np.arange(5) * 6) // 4)
    assert np.isclose((uneven * np.outer(widths, widths)).sum(), S.sum())


def test_pair_correlation_matches_scipy_and_samples_beyond_the_cap(monkeypatch):
    rng = np.random.default_rng(1)
    d = rng.random(50_000).astype(np.float32)
    s = (np.exp(-3 * d) + rng.normal(scale=0.2, size=d.size)).astype(np.float32)
    exact = analysis.pair_correlation(s, d)
    assert exact["pairs"] == d.size
    assert exact["pearson"] == pytest.approx(pearsonr(s.astype(np.float64), d.astype(np.float64)).statistic, abs=1e-9)
    assert exact["spearman"] == pytest.approx(spearmanr(s, d).statistic, abs=1e-12)
    monkeypatch.setattr(analysis, "MAX_RANKED_PAIRS", 5_000)
    sampled = analysis.pair_correlation(s, d)
    assert sampled["pearson"] == exact["pearson"]  # Pearson always uses every pair
    assert sampled["spearman"] == pytest.approx(exact["spearman"], abs=0.05)
    assert sampled["spearman"] != exact["spearman"]


def test_similarity_ratio_by_bands_matches_the_masked_means():
    S = asymmetric(700, 3) + 0.5
    labels = np.random.default_rng(0).integers(0, 3, 700)
    same = labels[:, None] == labels[None, :]
    within = same & ~np.eye(700, dtype=bool)
    S64 = S.astype(np.float64)
    assert similarity_ratio(S, labels) == pytest.approx(S64[within].mean() / S64[~same].mean(), rel=1e-12)


def blocks(sizes: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    S = (y[:, None] == y[None, :]) * 0.8 + rng.random((y.size, y.size)) * 0.6
    return ((S + S.T) / 2).astype(np.float32), y


def test_kernel_kmeans_in_float32_gives_the_float64_labels():
    S, y = blocks((40, 50, 30), seed=2)
    labels32, objective32 = clustering.kernel_kmeans(S, k=3, seed=0, n_init=3)
    labels64, objective64 = clustering.kernel_kmeans(S.astype(np.float64), k=3, seed=0, n_init=3)
    np.testing.assert_array_equal(labels32, labels64)
    assert objective32 == pytest.approx(objective64, rel=1e-5)
    assert adjusted_rand_score(y, labels32) == 1.0


def test_in_place_spectral_embedding_matches_scikit_learn():
    S, _ = blocks((150, 150, 100), seed=3)
    A = clustering.to_affinity(S)
    expected = sklearn_embedding(A.astype(np.float64), n_components=3, drop_first=False, random_state=0)
    ours = clustering.spectral_embedding(A.copy(), k=3, seed=0)
    np.testing.assert_allclose(ours, expected, atol=1e-5 * np.abs(expected).max())


def test_large_spectral_paths_give_scikit_learns_clusters(monkeypatch):
    S, y = blocks((150, 150, 100), seed=4)
    dense = clustering.cluster(S, method="spectral", k=3, seed=0)
    X = np.concatenate([np.random.default_rng(5).normal(c, 1.0, (120, 4)) for c in (0, 5, 10)])
    dense_rbf = baselines.run_baselines(X, k=3, seed=0, names=("spectral_rbf",))["spectral_rbf"]
    reference = SpectralClustering(3, affinity="rbf", gamma=baselines.rbf_gamma(X), random_state=0).fit_predict(X)
    assert adjusted_rand_score(dense_rbf, reference) == 1.0
    monkeypatch.setattr(clustering, "SPECTRAL_DENSE_MAX", 10)  # every matrix takes the in-place path
    lean = clustering.cluster(S, method="spectral", k=3, seed=0)
    assert adjusted_rand_score(lean, dense) == 1.0 and adjusted_rand_score(lean, y) == 1.0
    lean_rbf = baselines.run_baselines(X, k=3, seed=0, names=("spectral_rbf",))["spectral_rbf"]
    assert adjusted_rand_score(lean_rbf, reference) == 1.0
