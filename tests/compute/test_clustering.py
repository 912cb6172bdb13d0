import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from workers.compute.baselines import run_baselines
from workers.compute.clustering import cluster, kernel_kmeans, to_affinity

METHODS = ("kmeans", "spectral", "kernel_kmeans")


def block_matrix(sizes, *, noise=0.1, seed=0):
    """Similarity 1 within a block, 0 across, plus symmetric Gaussian noise; blocks shuffled."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    y = y[rng.permutation(y.size)]
    S = (y[:, None] == y[None, :]).astype(float)
    E = noise * rng.standard_normal(S.shape)
    return S + (E + E.T) / 2, y


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sizes", [(20, 30), (15, 20, 25), (10, 12, 14, 16)])
def test_block_diagonal_recovered(method, sizes):
    S, y = block_matrix(sizes, seed=len(sizes))
    labels = cluster(S, method=method, k=len(sizes), seed=0)
    assert labels.shape == y.shape and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(len(sizes)))
    assert adjusted_rand_score(y, labels) == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_permutation_invariance(method):
    S, y = block_matrix((15, 20, 25), seed=3)
    perm = np.random.default_rng(7).permutation(y.size)
    labels = cluster(S, method=method, k=3, seed=0)
    labels_perm = cluster(S[np.ix_(perm, perm)], method=method, k=3, seed=0)
    assert adjusted_rand_score(labels[perm], labels_perm) == 1.0


def test_kernel_kmeans_restarts_never_worse_and_deterministic():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((80, 5))
    K = Z @ Z.T  # structureless linear kernel: restarts land in different local optima
    for seed in range(5):
        _, single = kernel_kmeans(K, k=4, seed=seed, n_init=1)
        labels, best = kernel_kmeans(K, k=4, seed=seed, n_init=10)
        assert best <= single + 1e-12
        labels_again, best_again = kernel_kmeans(K, k=4, seed=seed, n_init=10)
        np.testing.assert_array_equal(labels, labels_again)
        assert best == best_again


def test_kernel_kmeans_objective_matches_feature_space():
    rng = np.random.default_rng(2)
    Z = np.concatenate([rng.normal(0, 0.3, (20, 2)), rng.normal(5, 0.3, (25, 2))])
    labels, objective = kernel_kmeans(Z @ Z.T, k=2, seed=0, n_init=3, max_iter=100)
    expected = sum(((Z[labels == c] - Z[labels == c].mean(0)) ** 2).sum() for c in range(2))
    assert objective == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert adjusted_rand_score(np.repeat([0, 1], [20, 25]), labels) == 1.0


def test_kernel_kmeans_k_equals_n_has_no_empty_cluster():
    K = np.eye(6) + 0.01
    labels, objective = kernel_kmeans(K, k=6, seed=0, n_init=2)
    assert sorted(labels.tolist()) == list(range(6))
    assert objective == pytest.approx(0.0, abs=1e-12)


def test_to_affinity_and_negative_kernel_spectral():
    S, y = block_matrix((20, 25), seed=4)
    S = 2 * S - 1.5  # negative entries everywhere off the blocks
    A = to_affinity(S)
    assert A.min() == 0.0 and A.max() == 1.0
    np.testing.assert_allclose(A, A.T)
    labels = cluster(S, method="spectral", k=2, seed=0)
    assert adjusted_rand_score(y, labels) == 1.0
    nonneg = np.abs(S)
    np.testing.assert_allclose(to_affinity(nonneg), (nonneg + nonneg.T) / 2)


def test_validation_errors():
    with pytest.raises(ValueError, match="square"):
        cluster(np.ones((3, 4)), method="kmeans", k=2, seed=0)
    bad = np.eye(3)
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cluster(bad, method="kernel_kmeans", k=2, seed=0)
    with pytest.raises(ValueError, match="only n = 3"):
        cluster(np.eye(3), method="spectral", k=4, seed=0)
    with pytest.raises(ValueError, match="unknown clustering method"):
        cluster(np.eye(3), method="dbscan", k=2, seed=0)


def test_cluster_deterministic_for_seed():
    S, _ = block_matrix((10, 10, 10), noise=0.6, seed=5)
    for method in METHODS:
        np.testing.assert_array_equal(cluster(S, method=method, k=3, seed=11), cluster(S, method=method, k=3, seed=11))


def test_baselines_recover_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 10, [8.0] * 10, [0.0] * 5 + [8.0] * 5])
    y = np.repeat([0, 1, 2], 40)
    X = centres[y] + rng.standard_normal((120, 10))
    out = run_baselines(X.reshape(120, 2, 5), k=3, seed=0)
    assert list(out) == ["kmeans_raw", "pca_kmeans", "spectral_rbf"]
    for name, labels in out.items():
        assert labels.shape == (120,), name
        assert adjusted_rand_score(y, labels) > 0.95, name
    again = run_baselines(X, k=3, seed=0, names=("spectral_rbf",))
    np.testing.assert_array_equal(again["spectral_rbf"], out["spectral_rbf"])
    with pytest.raises(ValueError, match="unknown baselines"):
        run_baselines(X, k=3, seed=0, names=("autoencoder",))


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("method", METHODS)
def test_a_matrix_far_from_unit_scale_clusters_as_at_unit_scale(method, scale):
    S, y = block_matrix((10, 12), seed=1)
    S = S.astype(np.float32)
    scaled = S * np.float32(scale)
    assert np.isfinite(scaled).all()
    labels = cluster(scaled, method=method, k=2, seed=0)
    assert adjusted_rand_score(y, labels) == 1.0
    np.testing.assert_array_equal(labels, cluster(S, method=method, k=2, seed=0))
