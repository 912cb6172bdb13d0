"""PNG figures of a similarity matrix and of the local-elasticity scatter.

Matplotlib is imported inside the functions and drives a bare ``Figure`` on the Agg canvas, so no
global pyplot state is touched (thread-safe) and the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import textwrap
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_SCATTER_POINTS = 20_000
HEATMAP_MAX_PIXELS = 1024  # beyond, the heat map shows block means (`block_means`)
EIGH_MAX_ROWS = 2048  # larger cluster blocks are ordered by a Lanczos eigenvector (`_leading_eigenvector`)


def block_means(S: np.ndarray, order: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """S [n, n] with rows and columns permuted by ``order`` [n], reduced to at most [size, size] float64.

    For n ≤ size this is ``S[order][:, order]``; beyond, entry (a, b) is the mean of the block of
    ordered rows and columns with ``floor(a n / size) ≤ row < floor((a + 1) n / size)`` (likewise b).
    Works a band of rows at a time (no n × n temporary). Returns (matrix, size / n or 1.0: the scale from
    example positions to pixel positions).
    """
    n = S.shape[0]
    if n <= size:
        return np.asarray(S[np.ix_(order, order)], dtype=np.float64), 1.0
    edges = (np.arange(size + 1) * n) // size
    widths = np.diff(edges).astype(np.float64)
    out = np.empty((size, size), dtype=np.float64)
    for a in range(size):
        band = S[order[edges[a] : edges[a + 1]]][:, order].sum(axis=0, dtype=np.float64)
        out[a] = np.add.reduceat(band, edges[:-1]) / widths / widths[a]
    return out, size / n


def _png_bytes(fig: Figure) -> bytes:
    """Render a matplotlib Figure with the Agg canvas to PNG bytes (no timestamp metadata)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # "tight" grows the canvas to whatever the labels need, so a long title is never cut off.
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.1)
    return buffer.getvalue()


def cluster_order(S: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row order that groups the examples by cluster and, within a cluster, sorts them by the cluster block's
    leading eigenvector (of its symmetric part), so the block's structure shows as a gradient."""
    order = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if rows.size > 2:
            vector = _leading_eigenvector(S[np.ix_(rows, rows)])
            vector = vector if vector.sum() >= 0 else -vector  # the sign of an eigenvector is arbitrary
            rows = rows[np.argsort(-vector, kind="stable")]
        order.append(rows)
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)


def _leading_eigenvector(block: np.ndarray) -> np.ndarray:
    """Eigenvector [c] of the largest eigenvalue of (B + Bᵀ)/2 for a block B [c, c] (non-finite → 0).

    Up to EIGH_MAX_ROWS rows: LAPACK's eigh in float64. Beyond: ARPACK (Lanczos, fixed start vector) on
    the block in its own dtype, symmetrised in place: no float64 copy, and no O(c³) work.
    """
    if block.shape[0] <= EIGH_MAX_ROWS:
        block = np.asarray(block, dtype=np.float64)
        block = np.nan_to_num((block + block.T) / 2.0, nan=0.0, posinf=0.0, neginf=0.0)
        vector: np.ndarray = np.linalg.eigh(block)[1][:, -1]
        return vector
    from scipy.sparse.linalg import eigsh

    block = np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    c, tile = block.shape[0], 512
    for i0 in range(0, c, tile):  # (B + Bᵀ)/2 in place, a pair of tiles at a time
        for j0 in range(i0, c, tile):
            mean = block[i0 : i0 + tile, j0 : j0 + tile] + block[j0 : j0 + tile, i0 : i0 + tile].T
            mean *= 0.5
            block[i0 : i0 + tile, j0 : j0 + tile] = mean
            block[j0 : j0 + tile, i0 : i0 + tile] = mean.T
    start = np.full(block.shape[0], 1.0 / np.sqrt(block.shape[0]), dtype=block.dtype)
    vector = eigsh(block, k=1, which="LA", v0=start)[1][:, 0]
    return vector


def heatmap_png(
    S: np.ndarray,
    labels: np.ndarray,
    *,
    title: str = "Similarity matrix",
    true_labels: np.ndarray | None = None,
) -> bytes:
    """Heat map of S with rows and columns grouped by cluster.

    Rows and columns are grouped by ``labels`` and, within a cluster, ordered by :func:`cluster_order`;
    white lines mark the cluster boundaries. With ``true_labels``, a strip along the top shows each
    example's true class. The colour scale spans the 1st to 99th percentile of the finite entries, so a
    few large values (e.g. the diagonal) do not wash it out; the colour bar says when entries are clipped.
    Beyond ``HEATMAP_MAX_PIXELS`` examples the ordered matrix is drawn as means of blocks of adjacent
    rows and columns (:func:`block_means`; the percentiles are those of the drawn entries), so neither
    matplotlib nor this function holds more than one band of S beyond HEATMAP_MAX_PIXELS² entries.

    Parameters
    ----------
    S : array_like, shape (n, n)
        Similarity matrix.
    labels : array_like of int, shape (n,)
        Cluster (or class) of each example.
    title : str
        Figure title; the cluster sizes are appended.
    true_labels : array_like, shape (n,), optional
        The true class of each example, drawn as a strip of colours above the matrix.

    Returns
    -------
    bytes
        A PNG image.
    """
    from matplotlib.figure import Figure

    S = np.asarray(S)
    labels = np.asarray(labels)
    if S.ndim != 2 or S.shape != (labels.size, labels.size):
        raise ValueError(f"S must have shape ({labels.size}, {labels.size}), got {S.shape}")
    order = cluster_order(S, labels)
    ordered, scale = block_means(S, order, HEATMAP_MAX_PIXELS)  # at most HEATMAP_MAX_PIXELS² entries
    pixel_rows = (np.arange(ordered.shape[0]) * labels.size) // ordered.shape[0]  # first example of each
    _, sizes = np.unique(labels, return_counts=True)

    fig = Figure(figsize=(6.0, 5.4))
    if true_labels is not None:
        strip_ax, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 18], "hspace": 0.02})
        _, classes = np.unique(np.asarray(true_labels)[order[pixel_rows]], return_inverse=True)
        strip_ax.imshow(
            classes[None, :], aspect="auto", cmap="tab10" if classes.max() < 10 else "tab20", interpolation="nearest"
        )
        strip_ax.set_yticks([0], ["true class"], fontsize=7)
        strip_ax.tick_params(axis="x", bottom=False, labelbottom=False)
    else:
        ax = fig.add_subplot()
    finite = ordered[np.isfinite(ordered)]
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    clipped = int(np.count_nonzero((finite < vmin) | (finite > vmax)))
    image = ax.imshow(ordered, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    bar_label = "Similarity"
    if clipped:
        bar_label += f" (clipped to 1st–99th percentile: {clipped} of {finite.size} entries)"
    fig.colorbar(image, ax=[ax] if true_labels is None else [strip_ax, ax]).set_label(bar_label, fontsize=8)
    for edge in np.cumsum(sizes)[:-1] * scale - 0.5:
        ax.axhline(edge, color="white", linewidth=1.0)
        ax.axvline(edge, color="white", linewidth=1.0)
    ax.set_xlabel("Example (by cluster, then leading eigenvector)")
    ax.set_ylabel("Example (by cluster)")
    top = strip_ax if true_labels is not None else ax
    wrapped = "\n".join(textwrap.wrap(title, width=70))
    top.set_title(f"{wrapped}\nclusters of size {', '.join(str(int(s)) for s in sizes)}", fontsize=9)
    return _png_bytes(fig)


def elasticity_png(
    similarity_values: np.ndarray, distances: np.ndarray, *, title: str = "Local elasticity", r: float | None = None
) -> bytes:
    """Scatter plot of similarity against geodesic distance, with the Pearson correlation in the title.

    Parameters
    ----------
    similarity_values : array_like, shape (m,) or (n, n)
        Similarities of the pairs. Two equal square matrices contribute their off-diagonal entries.
    distances : array_like, same shape as ``similarity_values``
        Geodesic distances of the same pairs. Pairs with a non-finite value are dropped.
    title : str
        Figure title; ``(Pearson r = …)`` is appended.
    r : float or None
        That correlation when already known (NaN: undefined); None: computed here from every pair.

    Returns
    -------
    bytes
        A PNG image. At most 20,000 pairs are drawn, chosen with a fixed-seed generator; the
        correlation uses every pair.
    """
    from matplotlib.figure import Figure

    s = np.asarray(similarity_values)
    d = np.asarray(distances)
    if s.shape != d.shape:
        raise ValueError(f"similarity_values and distances differ in shape: {s.shape} vs {d.shape}")
    if s.ndim == 2 and s.shape[0] == s.shape[1]:
        off = ~np.eye(s.shape[0], dtype=bool)
        s, d = s[off], d[off]
    s, d = s.ravel(), d.ravel()
    keep = np.isfinite(s) & np.isfinite(d)
    if not keep.all():
        s, d = s[keep], d[keep]
    if r is None:
        s64, d64 = s.astype(np.float64), d.astype(np.float64)
        defined = s.size > 1 and np.ptp(s64) > 0 and np.ptp(d64) > 0
        r = float(np.corrcoef(d64, s64)[0, 1]) if defined else float("nan")
    if s.size > MAX_SCATTER_POINTS:
        pick = np.sort(np.random.default_rng(0).choice(s.size, MAX_SCATTER_POINTS, replace=False))
        s, d = s[pick], d[pick]
    s, d = s.astype(np.float64), d.astype(np.float64)

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    ax.scatter(d, s, s=4, alpha=0.25, color="tab:blue", edgecolors="none")
    ax.set_xlabel("Geodesic distance")
    ax.set_ylabel("Similarity")
    r_text = "undefined" if np.isnan(r) else f"{r:.3f}"
    ax.set_title(f"{title} (Pearson r = {r_text})", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png_bytes(fig)
