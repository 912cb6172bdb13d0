"""Clustering without the whole matrix: Nyström kernel k-means and spectral clustering of the k-NN graph.

* ``nystrom_kernel_kmeans``: l landmark columns C = S[:, L] (computed by the tiles), W = S[L, L],
  features Φ = C W^(-1/2) (eigenvalues under 1e-8 × the largest dropped), then mini-batch k-means on
  Φ refined by Lloyd passes. Kernel k-means on Φ Φᵀ, the Nyström approximation of S (Wang, Gittens and Mahoney, 2019).
* ``knn_spectral``: spectral clustering of the symmetric k-nearest-neighbour connectivity graph
  (A = (G + Gᵀ) / 2 with G_ij = 1 when j is among i's neighbours), sparse.

Both seeded and deterministic for a fixed seed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def choose_landmarks(n: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct examples of n (all of them when count ≥ n), sorted: int64 [min(n, count)]."""
    if count >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False)).astype(np.int64)


#: Rows of C turned into features at once (bounds the float64 temporaries of `nystrom_features`).
_FEATURE_ROWS = 65_536


def nystrom_features(
    C: np.ndarray, landmarks: np.ndarray, *, dtype: type[np.floating] = np.float64, rows: int = _FEATURE_ROWS
) -> np.ndarray:
    """Φ [n, r] in `dtype` with Φ Φᵀ = C W⁺ Cᵀ, W = C[landmarks] (symmetrised); r ≤ l kept eigenvalues.

    The projection is computed in float64 from the l × l block; C is projected a block of `rows` rows
    at a time, so the memory is C plus Φ, never a float64 copy of either."""
    W = np.asarray(C[landmarks], dtype=np.float64)
    W = (W + W.T) / 2
    eigenvalues, vectors = np.linalg.eigh(W)
    keep = eigenvalues > max(float(eigenvalues.max()), 0.0) * 1e-8
    if not keep.any():
        raise ValueError("the landmark block has no positive eigenvalue: the similarity is not a kernel here")
    projection = vectors[:, keep] / np.sqrt(eigenvalues[keep])  # [l, r]
    features = np.empty((C.shape[0], projection.shape[1]), dtype=dtype)
    for start in range(0, C.shape[0], rows):
        block = slice(start, start + rows)
        features[block] = np.asarray(C[block], dtype=np.float64) @ projection
    return features


def nystrom_kernel_kmeans(
    C: np.ndarray, landmarks: np.ndarray, *, k: int, seed: int, n_init: int = 10, batch_size: int = 4096
) -> tuple[np.ndarray, dict[str, Any]]:
    """(labels int64 [n], parameters) of mini-batch k-means on the Nyström features of C = S[:, landmarks]."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    features = nystrom_features(C, landmarks, dtype=np.float32)
    best: Any = None
    for restart in range(n_init):
        # Each restart: mini-batch k-means, then Lloyd passes from its centres (mini-batch steps alone stop
        # short of a local optimum); the lowest objective is kept.
        coarse = MiniBatchKMeans(n_clusters=k, random_state=seed + restart, n_init=1, batch_size=batch_size)
        coarse.fit(features)
        refined = KMeans(n_clusters=k, init=coarse.cluster_centers_, n_init=1, random_state=seed).fit(features)
        if best is None or refined.inertia_ < best.inertia_:
            best = refined
    labels = best.labels_.astype(np.int64)
    parameters = {
        "method": "nystrom_kernel_kmeans",
        "landmarks": int(landmarks.size),
        "rank": int(features.shape[1]),
        "batch_size": batch_size,
        "n_init": n_init,
        "refinement": "lloyd",
        "seed": seed,
    }
    return labels, parameters


def knn_graph(columns: np.ndarray, n_cols: int) -> Any:
    """The symmetric k-NN connectivity graph (scipy CSR [n, n], float64) of neighbour lists columns [n, k]."""
    from scipy import sparse

    n, k = columns.shape
    rows = np.repeat(np.arange(n), k)
    G = sparse.csr_matrix((np.ones(n * k), (rows, columns.reshape(-1).astype(np.int64))), shape=(n, n_cols))
    return ((G + G.T) * 0.5).tocsr()


def knn_spectral(columns: np.ndarray, *, k: int, seed: int, n_init: int = 10) -> tuple[np.ndarray, dict[str, Any]]:
    """(labels int64 [n], parameters) of spectral clustering on the symmetric k-NN graph of `columns`."""
    from sklearn.cluster import SpectralClustering

    n = columns.shape[0]
    graph = knn_graph(columns, n)
    model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed, n_init=n_init)
    with warnings.catch_warnings():  # a graph in several pieces: sklearn warns, the clustering still runs
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = model.fit_predict(graph).astype(np.int64)
    parameters = {"method": "knn_spectral", "neighbors": int(columns.shape[1]), "n_init": n_init, "seed": seed}
    return labels, parameters


__all__ = ["choose_landmarks", "knn_graph", "knn_spectral", "nystrom_features", "nystrom_kernel_kmeans"]
