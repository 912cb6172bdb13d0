"""Clustering without the whole matrix: Nyström kernel k-means and spectral clustering of the k-NN graph.

* ``nystrom_kernel_kmeans``: l landmark columns C = S[:, L] (computed by the tiles), W = S[L, L],
  features Φ = C W^(-1/2) (eigenvalues under 1e-8 × the largest dropped), then mini-batch k-means on
  Φ refined by Lloyd passes. Kernel k-means on Φ Φᵀ, the Nyström approximation of S (Wang, Gittens and Mahoney, 2019).
* ``knn_spectral``: spectral clustering of the symmetric k-nearest-neighbour connectivity graph
  (A = (G + Gᵀ) / 2 with G_ij = 1 when j is among i's neighbours), sparse: the top c eigenvectors of
  D^(-1/2) A D^(-1/2) by Lanczos (sparse products only), scaled by D^(-1/2) as scikit-learn's
  `spectral_embedding` does, then k-means. The same embedding as `SpectralClustering(affinity=
  "precomputed")`, whose default solver (ARPACK in shift-invert mode, a sparse LU of the Laplacian) took
  329 s and 3.9 GiB at n = 20,000; this takes 0.5 s and 0.2 GiB, and 24 s and 2.5 GiB at n = 10^6
  (`benchmarks/sharded.py spectral`).

Both seeded and deterministic for a fixed seed.
"""

from __future__ import annotations

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
    """(labels int64 [n], parameters) of spectral clustering on the symmetric k-NN graph of neighbour
    lists columns [n, neighbours]: k clusters, k-means seeded by `seed` with `n_init` starts.

    The eigenvalue 1 of D^(-1/2) A D^(-1/2) has one eigenvector per connected component, √d on the
    component (Lanczos alone can miss such repeats): they are taken from the components directly and
    projected out, and Lanczos finds the next k − (components) eigenvectors. With k components or more,
    the k heaviest components' vectors are the embedding."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import LinearOperator, eigsh
    from sklearn.cluster import KMeans

    n = columns.shape[0]
    graph = knn_graph(columns, n)
    degree = np.maximum(np.asarray(graph.sum(axis=1)).ravel(), np.finfo(np.float64).tiny)
    root = np.sqrt(degree)
    normalized = sparse.diags(1.0 / root) @ graph @ sparse.diags(1.0 / root)
    count, component = connected_components(graph, directed=False)
    weight = np.bincount(component, weights=degree, minlength=count)  # Σ d per component
    heaviest = np.argsort(-weight, kind="stable")[: min(k, count)]
    # eigenvalue-1 vectors / √d (the embedding's convention): 1 on the component, over √(its Σ d)
    trivial = np.stack([(component == c) / np.sqrt(weight[c]) for c in heaviest], axis=1)
    rest = min(k - trivial.shape[1], n - count - 1)  # Lanczos finds fewer than n − (components) vectors
    if rest > 0:

        def project_out(x: np.ndarray) -> np.ndarray:  # x minus its part in the components' √d vectors
            sums = np.bincount(component, weights=root * x, minlength=count)
            return np.asarray(x - root * sums[component] / weight[component])

        def deflated(x: np.ndarray) -> np.ndarray:  # D^(-1/2) A D^(-1/2) without the eigenvalue-1 vectors
            return project_out(np.asarray(normalized @ project_out(np.ravel(x))))

        operator = LinearOperator((n, n), matvec=deflated, dtype=np.float64)
        start = project_out(np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n,)))
        _, vectors = eigsh(operator, k=rest, which="LA", v0=start, tol=1e-6)
        embedding = np.concatenate([trivial, vectors / root[:, None]], axis=1)
    else:
        embedding = trivial
    labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(embedding).astype(np.int64)
    parameters = {
        "method": "knn_spectral",
        "neighbors": int(columns.shape[1]),
        "eigen_solver": "lanczos",
        "components": int(count),
        "n_init": n_init,
        "seed": seed,
    }
    return labels, parameters


__all__ = ["choose_landmarks", "knn_graph", "knn_spectral", "nystrom_features", "nystrom_kernel_kmeans"]
