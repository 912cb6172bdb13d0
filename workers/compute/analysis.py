"""Does similarity decay with distance along the data manifold? (local elasticity, paper §5)."""

from __future__ import annotations

import math

import numpy as np

#: Spearman's correlation ranks at most this many pairs (a fixed-seed sample beyond it).
MAX_RANKED_PAIRS = 2**20
_CHUNK = 2**20  # entries summed at once in float64


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


def pair_correlation(s: np.ndarray, d: np.ndarray) -> dict[str, float | int | None]:
    """Pearson and Spearman correlation of paired finite samples s [p] and d [p] (any float dtype).

    Pearson uses every pair, summed in float64 a chunk at a time (two passes: means, then centred
    moments), so no float64 copy of the vectors is made. Spearman ranks every pair when there are at
    most `MAX_RANKED_PAIRS`, else a sample of that many pairs drawn with replacement by a fixed-seed
    generator (its standard error is then about 1 / sqrt(MAX_RANKED_PAIRS) ≈ 1e-3).

    Returns
    -------
    dict
        ``{"pearson": float | None, "spearman": float | None, "pairs": int}``, as
        :func:`elasticity_correlation`.
    """
    from scipy.stats import spearmanr

    if s.ndim != 1 or s.shape != d.shape:
        raise ValueError(f"s and d must be 1-D of equal length, got {s.shape} and {d.shape}")
    p = int(s.size)
    result: dict[str, float | int | None] = {"pearson": None, "spearman": None, "pairs": p}
    if p < 2:
        return result
    chunks = [slice(c, min(p, c + _CHUNK)) for c in range(0, p, _CHUNK)]
    mean_s = sum(float(s[c].sum(dtype=np.float64)) for c in chunks) / p
    mean_d = sum(float(d[c].sum(dtype=np.float64)) for c in chunks) / p
    sxx = syy = sxy = 0.0
    for c in chunks:
        x = s[c].astype(np.float64) - mean_s
        y = d[c].astype(np.float64) - mean_d
        sxx, syy, sxy = sxx + float(x @ x), syy + float(y @ y), sxy + float(x @ y)
    if sxx == 0 or syy == 0:
        return result
    result["pearson"] = _finite_or_none(max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy))))
    if p > MAX_RANKED_PAIRS:
        pick = np.sort(np.random.default_rng(0).integers(0, p, MAX_RANKED_PAIRS))
        s, d = s[pick], d[pick]
    if np.ptp(s) > 0 and np.ptp(d) > 0:
        result["spearman"] = _finite_or_none(spearmanr(s.astype(np.float64), d.astype(np.float64)).statistic)
    return result
