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

import math

import numpy as np

METHODS = ("kmeans", "spectral", "kernel_kmeans")
_BAND_ROWS = 256  # rows of S read at once by the checks and the symmetrisation
#: Up to this many examples spectral clustering is scikit-learn's (dense, float64, shift-invert ARPACK:
#: about 9 float32 n × n matrices); beyond, `spectral_embedding` works on the affinity in place.
SPECTRAL_DENSE_MAX = 2048
#: A matrix whose largest magnitude is outside [2^-UNIT_SCALE_BITS, 2^UNIT_SCALE_BITS] is clustered after
#: scaling by a power of two (`near_unit_scale`).
UNIT_SCALE_BITS = 20


def _validate(S: np.ndarray, k: int) -> np.ndarray:
    """Return S after checking it is square, finite and has at least k rows: a float32 S as it is (no
    copy), any other as float64."""
    S = np.asarray(S)
    if S.dtype != np.float32:
        S = S.astype(np.float64, copy=False)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity matrix must be square (n, n), got shape {S.shape}")
    if S.shape[0] == 0:
        raise ValueError("similarity matrix is empty")
    if not all(np.isfinite(S[rows]).all() for rows in _bands(S.shape[0])):
        raise ValueError("similarity matrix has non-finite entries (NaN or inf)")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > S.shape[0]:
        raise ValueError(f"k = {k} clusters requested but there are only n = {S.shape[0]} examples")
    return S


def near_unit_scale(S: np.ndarray) -> np.ndarray:
    """S [n, n] itself when its largest magnitude m is 0 or within [2^-UNIT_SCALE_BITS, 2^UNIT_SCALE_BITS],
    else a new array [n, n] of S's dtype times the power of two that brings m into [1, 2).

    No method's labels depend on a global positive scale, and a power of two scales exactly; but K-means
    squares its float32 entries, which overflow beyond about 1e19 and underflow below about 1e-19.
    """
    top = float(max(S.max(), -S.min()))
    if top == 0 or 2.0**-UNIT_SCALE_BITS <= top <= 2.0**UNIT_SCALE_BITS:
        return S
    scaled: np.ndarray = np.ldexp(S, 1 - math.frexp(top)[1]).astype(S.dtype, copy=False)
    return scaled


def _bands(n: int, rows: int = _BAND_ROWS) -> list[slice]:
    """Slices of `rows` consecutive rows covering 0..n."""
    return [slice(r, min(n, r + rows)) for r in range(0, n, rows)]


def symmetrized(S: np.ndarray) -> np.ndarray:
    """(S + Sᵀ) / 2 in S's dtype: S itself when it is symmetric already, else a new array [n, n].

    Band by band (no temporary of n × n beyond the result)."""
    n = S.shape[0]
    if all(np.array_equal(S[rows], S[:, rows].T) for rows in _bands(n)):
        return S
    out = np.empty_like(S)
    for rows in _bands(n):
        band = S[rows] + S[:, rows].T
        band *= 0.5
        out[rows] = band
    return out


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
    ndarray, shape (n, n)
        Symmetric affinity with every entry ≥ 0: float32 for a float32 S, else float64. Always a new
        array (S is not modified); its only n × n allocation.
    """
    S = np.asarray(S)
    A = symmetrized(S.astype(np.float32 if S.dtype == np.float32 else np.float64, copy=False))
    if A is S:
        A = A.copy()
    lo = A.min()
    if lo < 0:
        span = A.max() - lo
        if span > 0:
            A -= lo
            A /= span
        else:
            A.fill(1.0)
    return A


def _kernel_distances(K: np.ndarray, diag: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Squared feature-space distance from every point to every cluster mean.

    ``d(i, c) = K_ii − 2 mean_{j∈c} K_ij + mean_{j,l∈c} K_jl``, computed with a one-hot membership
    matrix H (n, k). Empty clusters get distance +inf.

    Parameters
    ----------
    K : ndarray, shape (n, n)
        float32 or float64; the product ``K H`` is taken in K's dtype (no copy of K), the rest in float64.
    diag : ndarray, shape (n,)
        ``diag(K)``.
    labels : ndarray of int, shape (n,)
    k : int

    Returns
    -------
    ndarray of float64, shape (n, k)
    """
    H = np.zeros((labels.size, k), dtype=K.dtype)
    H[np.arange(labels.size), labels] = 1.0
    KH = (K @ H).astype(np.float64)  # (n, k): sum_{j in c} K_ij
    H = H.astype(np.float64)
    counts = H.sum(axis=0)
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
        Gram matrix; it is symmetrised as ``(K + Kᵀ) / 2`` (a copy only when it is not symmetric; a
        float32 K stays float32, see `_kernel_distances`). It need not be positive semi-definite,
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
    K = symmetrized(K)
    n: int = K.shape[0]
    diag = np.diag(K).astype(np.float64)
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


def spectral_embedding(A: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """The normalised spectral embedding [n, k] float64 of an affinity A [n, n], overwriting A.

    As scikit-learn's ``spectral_embedding`` (normalised Laplacian, first eigenvector kept): self-loops
    are dropped, A becomes D^-1/2 A D^-1/2 in place (D: the degrees), its k largest eigenvectors v are
    found by ARPACK (Lanczos, start vector uniform in [−1, 1] from ``RandomState(seed)``) in A's dtype,
    and the embedding is D^-1/2 v, each column's sign fixed so that its largest entry is positive.
    Besides A, only [n, k]-sized arrays are allocated.
    """
    from scipy.sparse.linalg import eigsh

    n = A.shape[0]
    np.fill_diagonal(A, 0)
    degree = A.sum(axis=1, dtype=np.float64)
    inv = np.where(degree > 0, 1 / np.sqrt(np.where(degree > 0, degree, 1)), 0.0)
    A *= inv.astype(A.dtype)[:, None]
    A *= inv.astype(A.dtype)[None, :]
    start = np.asarray(np.random.RandomState(seed).uniform(-1, 1, n), dtype=A.dtype)
    _, vectors = eigsh(A, k=k, which="LA", v0=start)
    embedding: np.ndarray = vectors[:, ::-1].astype(np.float64) * inv[:, None]
    peak = embedding[np.argmax(np.abs(embedding), axis=0), np.arange(k)]
    embedding *= np.where(peak < 0, -1.0, 1.0)
    return embedding


def _cluster_qr(embedding: np.ndarray) -> np.ndarray:
    """Labels [n] from a spectral embedding [n, k] by column-pivoted QR (Damle, Minden & Ying 2019),
    as scikit-learn's ``assign_labels="cluster_qr"``."""
    from scipy.linalg import qr, svd

    k = embedding.shape[1]
    _, _, pivots = qr(embedding.T, pivoting=True)
    ut, _, v = svd(embedding[pivots[:k], :].T)
    labels: np.ndarray = np.abs(embedding @ (ut @ v.conj())).argmax(axis=1)
    return labels


def spectral_labels(A: np.ndarray, *, k: int, seed: int, assign: str) -> np.ndarray:
    """Spectral clustering [n] of an affinity A [n, n] (non-negative, symmetric; it may be overwritten).

    assign: ``"cluster_qr"`` or ``"kmeans"`` (K-means on the embedding, 10 restarts, as scikit-learn).
    Up to SPECTRAL_DENSE_MAX examples, scikit-learn's ``SpectralClustering``; beyond, the same steps by
    `spectral_embedding` on A in place, so the peak is A and a few [n, k] arrays.
    """
    if A.shape[0] <= SPECTRAL_DENSE_MAX or k >= A.shape[0]:
        from sklearn.cluster import SpectralClustering

        model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed, assign_labels=assign)
        return np.asarray(model.fit_predict(A))
    embedding = spectral_embedding(A, k=k, seed=seed)
    if assign == "cluster_qr":
        return _cluster_qr(embedding)
    from sklearn.cluster import KMeans

    return np.asarray(KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding))


def cluster(S: np.ndarray, *, method: str, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    """Split n examples into k clusters from their similarity matrix.

    Parameters
    ----------
    S : array_like, shape (n, n)
        Pairwise similarities (finite); far from unit scale, first scaled by a power of two
        (`near_unit_scale`), which changes no method's labels but keeps K-means' squares finite.
    method : {"kmeans", "spectral", "kernel_kmeans"}
        ``"kmeans"``: scikit-learn K-means on the rows of S. ``"spectral"``: spectral clustering
        (`spectral_labels`, ``assign_labels="cluster_qr"``) on ``to_affinity(S)``
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
    S = near_unit_scale(_validate(S, k))
    if method == "kmeans":
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(S)
    elif method == "spectral":
        labels = spectral_labels(to_affinity(S), k=k, seed=seed, assign="cluster_qr")
    elif method == "kernel_kmeans":
        labels, _ = kernel_kmeans(S, k=k, seed=seed, n_init=n_init)
    else:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS}")
    return _relabel(np.asarray(labels))
