"""Baseline clusterings on the raw inputs, to compare with the similarity-based clustering."""

from __future__ import annotations

import numpy as np

BASELINES = ("kmeans_raw", "pca_kmeans", "spectral_rbf")


def rbf_gamma(X: np.ndarray) -> float:
    """Default RBF width ``gamma = 1 / (d · Var(X))`` (the "scale" rule), 1.0 for constant X.

    Parameters
    ----------
    X : ndarray, shape (n, d)

    Returns
    -------
    float
    """
    var = float(X.var())
    return 1.0 / (X.shape[1] * var) if var > 0 else 1.0


def spectral_rbf(X: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """Spectral clustering [n] of X [n, d] with the RBF affinity exp(−gamma ‖x_i − x_j‖²), gamma = `rbf_gamma`,
    labels by K-means on the embedding (scikit-learn's ``SpectralClustering(affinity="rbf")``).

    Up to `clustering.SPECTRAL_DENSE_MAX` examples, scikit-learn's; beyond, the affinity is one float32
    n × n matrix, embedded in place (`clustering.spectral_labels`).
    """
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics.pairwise import rbf_kernel

    from workers.compute.clustering import SPECTRAL_DENSE_MAX, spectral_labels

    gamma = rbf_gamma(X)
    if X.shape[0] <= SPECTRAL_DENSE_MAX:
        model = SpectralClustering(n_clusters=k, affinity="rbf", gamma=gamma, random_state=seed)
        return np.asarray(model.fit_predict(X))
    return spectral_labels(rbf_kernel(X.astype(np.float32), gamma=gamma), k=k, seed=seed, assign="kmeans")


def run_baselines(
    X: np.ndarray, *, k: int, seed: int, names: tuple[str, ...] | list[str] = BASELINES
) -> dict[str, np.ndarray]:
    """Cluster the raw inputs with each named baseline.

    * ``"kmeans_raw"``: ``KMeans(k, n_init=10, random_state=seed)`` on X.
    * ``"pca_kmeans"``: ``PCA(min(100, d, n − 1), random_state=seed)`` then the same K-means.
    * ``"spectral_rbf"``: ``SpectralClustering(k, affinity="rbf", gamma=1 / (d · Var(X)),
      random_state=seed)``; ``Var(X)`` is the variance of all entries of X, so gamma adapts to the
      scale and dimension of the data (see :func:`rbf_gamma`).

    Parameters
    ----------
    X : array_like, shape (n, ...)
        Inputs; every trailing axis is flattened, giving (n, d).
    k : int
        Number of clusters, 1 ≤ k ≤ n.
    seed : int
        Seed of every randomised step.
    names : sequence of str
        Baselines to run, a subset of ``BASELINES``.

    Returns
    -------
    dict
        ``{name: ndarray of int64, shape (n,)}`` in the order of ``names``.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float64)
    if X.ndim < 2:
        raise ValueError(f"X must have shape (n, d, ...), got {X.shape}")
    X = X.reshape(X.shape[0], -1)
    n, d = X.shape
    if not np.all(np.isfinite(X)):
        raise ValueError("X has non-finite entries (NaN or inf)")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..n = {n}, got {k}")
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected names from {BASELINES}")

    def kmeans(Z: np.ndarray) -> np.ndarray:
        labels: np.ndarray = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(Z)
        return labels

    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "kmeans_raw":
            labels = kmeans(X)
        elif name == "pca_kmeans":
            n_components = max(1, min(100, d, n - 1))
            labels = kmeans(PCA(n_components=n_components, random_state=seed).fit_transform(X))
        else:
            labels = spectral_rbf(X, k=k, seed=seed)
        out[name] = np.asarray(labels, dtype=np.int64)
    return out
