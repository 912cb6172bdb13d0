"""Scores of a clustering against the true classes, and of a similarity matrix against the classes."""

from __future__ import annotations

import math

import numpy as np

_BAND_ROWS = 256  # rows of S read at once by `similarity_ratio`


def _labels_1d(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {labels.shape}")
    return labels


def matched_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes.

    The matching maximises the number of correctly placed examples (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment`` on the cluster × class contingency table). The numbers
    of clusters and classes may differ: examples in a cluster left unmatched count as wrong. For two
    clusters and two classes this is the authors' ``0.5 + |correct/n − 0.5|``.

    Parameters
    ----------
    labels_true : array_like, shape (n,)
        Class of each example (any hashable, sortable values).
    labels_pred : array_like, shape (n,)
        Cluster of each example.

    Returns
    -------
    float
        In [0, 1].
    """
    from scipy.optimize import linear_sum_assignment

    labels_true = _labels_1d(labels_true, "labels_true")
    labels_pred = _labels_1d(labels_pred, "labels_pred")
    if labels_true.shape != labels_pred.shape:
        raise ValueError(f"label arrays differ in length: {labels_true.shape} vs {labels_pred.shape}")
    if labels_true.size == 0:
        raise ValueError("no labels given")
    _, cls = np.unique(labels_true, return_inverse=True)
    _, clu = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((clu.max() + 1, cls.max() + 1), dtype=np.int64)
    np.add.at(table, (clu.reshape(-1), cls.reshape(-1)), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / labels_true.size)


def clustering_metrics(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """Accuracy (best cluster-to-class matching), adjusted Rand index and normalised mutual information.

    Parameters
    ----------
    labels_true : array_like, shape (n,)
        Class of each example.
    labels_pred : array_like, shape (n,)
        Cluster of each example.

    Returns
    -------
    dict
        ``{"accuracy": float, "ari": float, "nmi": float}``; see :func:`matched_accuracy`. ARI and
        NMI are scikit-learn's ``adjusted_rand_score`` and ``normalized_mutual_info_score``.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    accuracy = matched_accuracy(labels_true, labels_pred)
    return {
        "accuracy": accuracy,
        "ari": float(adjusted_rand_score(labels_true, labels_pred)),
        "nmi": float(normalized_mutual_info_score(labels_true, labels_pred)),
    }


def similarity_ratio(S: np.ndarray, labels: np.ndarray) -> float:
    """Mean similarity within classes over mean similarity between classes.

    ``mean{S_ij : y_i = y_j, i ≠ j} / mean{S_ij : y_i ≠ y_j}`` over ordered pairs of the raw
    (possibly asymmetric) matrix. Above 1 means examples are more similar to their own class.

    Parameters
    ----------
    S : array_like, shape (n, n)
        Similarity matrix.
    labels : array_like, shape (n,)
        Class of each example.

    Returns
    -------
    float
        NaN when there is no same-class pair or no different-class pair, or when the between-class
        mean is 0.
    """
    S = np.asarray(S)
    labels = _labels_1d(labels, "labels")
    if S.ndim != 2 or S.shape != (labels.size, labels.size):
        raise ValueError(f"S must have shape ({labels.size}, {labels.size}), got {S.shape}")
    _, classes = np.unique(labels, return_inverse=True)
    classes = classes.reshape(-1)
    sizes = np.bincount(classes).astype(np.float64)
    n = float(labels.size)
    within_count = float(sizes @ sizes) - n
    between_count = n * n - float(sizes @ sizes)
    if within_count == 0 or between_count == 0:
        return float("nan")
    H = np.zeros((labels.size, sizes.size))
    H[np.arange(labels.size), classes] = 1.0
    same_class = 0.0  # Σ S_ij over y_i = y_j, diagonal included
    total = 0.0
    for r0 in range(0, labels.size, _BAND_ROWS):  # a band of rows in float64 at a time: no n × n copy
        band = np.asarray(S[r0 : r0 + _BAND_ROWS], dtype=np.float64)
        same_class += float(np.einsum("ic,ic->", band @ H, H[r0 : r0 + _BAND_ROWS]))
        total += float(band.sum())
    trace = float(np.trace(S, dtype=np.float64))
    denominator = (total - same_class) / between_count
    if denominator == 0:
        return float("nan")
    return float(((same_class - trace) / within_count) / denominator)


def similarity_ratio_or_reason(S: np.ndarray, labels: np.ndarray) -> tuple[float | None, str | None]:
    """:func:`similarity_ratio` fit for a JSON document: (ratio, None) when it is defined, else (None, why not).

    Parameters
    ----------
    S : array_like, shape (n, n)
        Similarity matrix.
    labels : array_like, shape (n,)
        Class of each example.

    Returns
    -------
    tuple
        ``(float, None)``, or ``(None, str)`` when the ratio is undefined: a single class, no two examples
        of the same class, or a mean similarity of 0 between classes (e.g. an all-zero matrix).
    """
    ratio = similarity_ratio(S, labels)
    if math.isfinite(ratio):
        return ratio, None
    sizes = np.unique(_labels_1d(labels, "labels"), return_counts=True)[1]
    if sizes.size < 2:
        why = "there is a single class, so no pair of different classes"
    elif sizes.max() < 2:
        why = "every class has a single example, so there is no pair of the same class"
    else:
        why = "the mean similarity between classes is 0"
    return None, f"within_between_ratio is null: {why}"
