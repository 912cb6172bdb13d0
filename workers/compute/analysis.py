"""Does similarity decay with distance along the data manifold? (local elasticity, paper §5)."""

from __future__ import annotations

import math

import numpy as np


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def elasticity_correlation(S: np.ndarray, distances: np.ndarray) -> dict[str, float | int | None]:
    """Pearson and Spearman correlation between similarity and (geodesic) distance.

    Uses every off-diagonal entry (i, j), i ≠ j, of the raw matrices, so both orders of each pair
    count (the matrices need not be symmetric). Pairs where either value is NaN or infinite are
    dropped (e.g. distances undefined across classes). Local elasticity shows as a negative
    correlation.

    Parameters
    ----------
    S : array_like, shape (n, n)
        Similarity matrix.
    distances : array_like, shape (n, n)
        Distance between examples i and j.

    Returns
    -------
    dict
        ``{"pearson": float | None, "spearman": float | None, "pairs": int}``; a correlation is
        None when it is undefined (fewer than 2 pairs, or a constant side).
    """
    from scipy.stats import pearsonr, spearmanr

    S = np.asarray(S, dtype=np.float64)
    D = np.asarray(distances, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape != D.shape:
        raise ValueError(f"S and distances must be square and of equal shape, got {S.shape} and {D.shape}")
    mask = ~np.eye(S.shape[0], dtype=bool) & np.isfinite(S) & np.isfinite(D)
    s, d = S[mask], D[mask]
    result: dict[str, float | int | None] = {"pearson": None, "spearman": None, "pairs": int(s.size)}
    if s.size < 2 or np.ptp(s) == 0 or np.ptp(d) == 0:
        return result
    result["pearson"] = _finite_or_none(pearsonr(s, d).statistic)
    result["spearman"] = _finite_or_none(spearmanr(s, d).statistic)
    return result
