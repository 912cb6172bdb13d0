"""Cluster examples from a pairwise similarity matrix.

Three methods, all seeded and deterministic for a fixed seed:

* ``"kmeans"``: K-means on the rows of S, each example described by its similarity vector (the
  authors' choice for the relative similarity).
* ``"spectral"``: spectral clustering on a non-negative symmetric affinity made from S
  (:func:`to_affinity`).
* ``"kernel_kmeans"``: kernel K-means (Dhillon et al. 2004) with S as the Gram matrix (the authors'
  choice for the kernelized similarity).
"""

from __future__ import annotations

import numpy as np

METHODS = ("kmeans", "spectral", "kernel_kmeans")


def _validate(S: np.ndarray, k: int) -> np.ndarray:
    """Return S as a float64 array after checking it is square, finite and has at least k rows."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity matrix must be square (n, n), got shape {S.shape}")
    if S.shape[0] == 0:
        raise ValueError("similarity matrix is empty")
    if not np.all(np.isfinite(S)):
        raise ValueError("similarity matrix has non-finite entries (NaN or inf)")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > S.shape[0]:
        raise ValueError(f"k = {k} clusters requested but there are only n = {S.shape[0]} examples")
    return S


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster ids 0, 1, ... in order of first appearance (a canonical, stable labelling).

    Parameters
    ----------
    labels : ndarray of int, shape (n,)

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def to_affinity(S: np.ndarray) -> np.ndarray:
    """Non-negative symmetric affinity for spectral clustering.

    The transform is ``A = (S + Sᵀ) / 2``; then, only if some entry of A is negative (kernels such
    as the kernelized similarity often have negative entries), A is shifted and scaled to [0, 1]
    with ``A ← (A − min A) / (max A − min A)``. A constant negative matrix maps to all ones. A matrix
    with no negative entry is only symmetrised. The transform is monotone, so the order of the
    similarities is kept, but it is not scale-free: the smallest similarity becomes affinity 0.

    Parameters
    ----------
    S : array_like, shape (n, n)
        Similarity matrix.

    Returns
    -------
    ndarray of float64, shape (n, n)
        Symmetric affinity with every entry ≥ 0.
    """
    A = np.asarray(S, dtype=np.float64)
    A = (A + A.T) / 2.0
    lo = A.min()
    if lo < 0:
        span = A.max() - lo
        A = (A - lo) / span if span > 0 else np.ones_like(A)
    return A


def _kernel_distances(K: np.ndarray, diag: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Squared feature-space distance from every point to every cluster mean.

    ``d(i, c) = K_ii − 2 mean_{j∈c} K_ij + mean_{j,l∈c} K_jl``, computed with a one-hot membership
    matrix H (n, k). Empty clusters get distance +inf.

    Parameters
    ----------
    K : ndarray, shape (n, n)
    diag : ndarray, shape (n,)
        ``diag(K)``.
    labels : ndarray of int, shape (n,)
    k : int

    Returns
    -------
    ndarray of float64, shape (n, k)
    """
    H = np.zeros((labels.size, k))
    H[np.arange(labels.size), labels] = 1.0
    counts = H.sum(axis=0)
    KH = K @ H  # (n, k): sum_{j in c} K_ij
    within = np.einsum("jc,jc->c", H, KH)  # sum_{j,l in c} K_jl
    with np.errstate(divide="ignore", invalid="ignore"):
        dist: np.ndarray = diag[:, None] - 2.0 * KH / counts + within / counts**2
    dist[:, counts == 0] = np.inf
    return dist


def _fill_empty(labels: np.ndarray, dist: np.ndarray, k: int) -> np.ndarray:
    """Give each empty cluster the point farthest from its own cluster mean.

    Only points whose cluster has more than one member are moved, so no new empty cluster appears
    (always possible since k ≤ n). Loops over clusters, not examples.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
    dist : ndarray, shape (n, k)
        Distances to the cluster means of the clustering the labels came from.
    k : int

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    labels = labels.copy()
    counts = np.bincount(labels, minlength=k)
    own = dist[np.arange(labels.size), labels]
    own = np.where(np.isfinite(own), own, np.finfo(np.float64).max)
    for c in np.flatnonzero(counts == 0):
        movable = counts[labels] > 1
        i = int(np.argmax(np.where(movable, own, -np.inf)))
        counts[labels[i]] -= 1
        labels[i] = c
        counts[c] += 1
        own[i] = -np.inf  # never move the same point twice
    return labels


def kernel_kmeans(
    K: np.ndarray, *, k: int, seed: int, n_init: int = 10, max_iter: int = 100
) -> tuple[np.ndarray, float]:
    """Kernel K-means with a precomputed Gram matrix (Dhillon, Guan & Kulis 2004).

    Each restart starts from uniformly random labels drawn from ``np.random.default_rng(seed)``
    (one generator shared by the restarts, so restart 1 is the same for every ``n_init``) and
    alternates assignment to the nearest feature-space cluster mean until the labels stop changing
    or ``max_iter`` iterations pass. Empty clusters receive the point farthest from its mean. The
    restart with the lowest objective is kept (the first one on ties).

    Parameters
    ----------
    K : array_like, shape (n, n)
        Gram matrix; it is symmetrised as ``(K + Kᵀ) / 2``. It need not be positive semi-definite,
        but then convergence is not guaranteed (``max_iter`` bounds the work).
    k : int
        Number of clusters, 1 ≤ k ≤ n.
    seed : int
        Seed of the label initialisation.
    n_init : int
        Number of random restarts (≥ 1).
    max_iter : int
        Maximum assignment iterations per restart (≥ 1).

    Returns
    -------
    labels : ndarray of int64, shape (n,)
        Cluster ids in 0..k−1, numbered in order of first appearance.
    objective : float
        ``Σ_i ‖φ(x_i) − μ_{c(i)}‖²`` of the returned labels.
    """
    K = _validate(K, k)
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be ≥ 1, got {n_init} and {max_iter}")
    K = (K + K.T) / 2.0
    n: int = K.shape[0]
    diag = np.diag(K).copy()
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    best_labels: np.ndarray | None = None
    best_obj = np.inf
    for _ in range(n_init):
        labels: np.ndarray = rng.integers(0, k, size=n)
        labels = _fill_empty(labels, _kernel_distances(K, diag, labels, k), k)
        for _ in range(max_iter):
            dist = _kernel_distances(K, diag, labels, k)
            new = _fill_empty(np.argmin(dist, axis=1), dist, k)
            if np.array_equal(new, labels):
                break
            labels = new
        obj = float(_kernel_distances(K, diag, labels, k)[rows, labels].sum())
        if best_labels is None or obj < best_obj:
            best_labels, best_obj = labels, obj
    if best_labels is None:
        raise AssertionError("n_init ≥ 1 restarts always keep labels")
    return _relabel(best_labels), best_obj


def cluster(S: np.ndarray, *, method: str, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    """Split n examples into k clusters from their similarity matrix.

    Parameters
    ----------
    S : array_like, shape (n, n)
        Pairwise similarities (finite).
    method : {"kmeans", "spectral", "kernel_kmeans"}
        ``"kmeans"``: scikit-learn K-means on the rows of S. ``"spectral"``: spectral clustering
        with ``affinity="precomputed"`` and ``assign_labels="cluster_qr"`` on ``to_affinity(S)``
        (symmetrised; shifted and scaled to [0, 1] if S has negative entries). ``"kernel_kmeans"``:
        :func:`kernel_kmeans` with S as the Gram matrix.
    k : int
        Number of clusters, 1 ≤ k ≤ n.
    seed : int
        Random seed of the method.
    n_init : int
        Restarts for the K-means variants (the best objective is kept); unused by ``"spectral"``,
        whose ``cluster_qr`` labelling is deterministic.

    Returns
    -------
    ndarray of int64, shape (n,)
        Cluster ids in 0..k−1, numbered in order of first appearance.

    Raises
    ------
    ValueError
        If S is not square or not finite, k is not in 1..n, or the method is unknown.
    """
    S = _validate(S, k)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(S)
    elif method == "spectral":
        from sklearn.cluster import SpectralClustering

        model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed, assign_labels="cluster_qr")
        labels = model.fit_predict(to_affinity(S))
    elif method == "kernel_kmeans":
        labels, _ = kernel_kmeans(S, k=k, seed=seed, n_init=n_init)
    else:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS}")
    return _relabel(np.asarray(labels))
