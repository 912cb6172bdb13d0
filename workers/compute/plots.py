"""PNG figures of a similarity matrix and of the local-elasticity scatter.

Matplotlib is imported inside the functions and drives a bare ``Figure`` on the Agg canvas, so no
global pyplot state is touched (thread-safe) and the same inputs give the same bytes.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_SCATTER_POINTS = 20_000


def _png_bytes(fig: Figure) -> bytes:
    """Render a matplotlib Figure with the Agg canvas to PNG bytes (no timestamp metadata)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def heatmap_png(S: np.ndarray, labels: np.ndarray, *, title: str = "Similarity matrix") -> bytes:
    """Heat map of S with rows and columns grouped by cluster.

    Rows and columns are ordered by a stable sort of ``labels`` (so examples keep their order within
    a cluster); white lines mark the cluster boundaries. The colour scale spans the 1st to 99th
    percentile of the finite entries, so a few large values (e.g. the diagonal) do not wash it out.

    Parameters
    ----------
    S : array_like, shape (n, n)
        Similarity matrix.
    labels : array_like of int, shape (n,)
        Cluster (or class) of each example.
    title : str
        Figure title; the cluster sizes are appended.

    Returns
    -------
    bytes
        A PNG image.
    """
    from matplotlib.figure import Figure

    S = np.asarray(S, dtype=np.float64)
    labels = np.asarray(labels)
    if S.ndim != 2 or S.shape != (labels.size, labels.size):
        raise ValueError(f"S must have shape ({labels.size}, {labels.size}), got {S.shape}")
    order = np.argsort(labels, kind="stable")
    ordered = S[np.ix_(order, order)]
    _, sizes = np.unique(labels, return_counts=True)

    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot()
    finite = ordered[np.isfinite(ordered)]
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    image = ax.imshow(ordered, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="Similarity")
    for edge in np.cumsum(sizes)[:-1] - 0.5:
        ax.axhline(edge, color="white", linewidth=1.0)
        ax.axvline(edge, color="white", linewidth=1.0)
    ax.set_xlabel("Example (sorted by cluster)")
    ax.set_ylabel("Example (sorted by cluster)")
    ax.set_title(f"{title} — clusters of size {', '.join(str(int(s)) for s in sizes)}", fontsize=10)
    fig.tight_layout()
    return _png_bytes(fig)


def elasticity_png(similarity_values: np.ndarray, distances: np.ndarray, *, title: str = "Local elasticity") -> bytes:
    """Scatter plot of similarity against geodesic distance, with the Pearson correlation in the title.

    Parameters
    ----------
    similarity_values : array_like, shape (m,) or (n, n)
        Similarities of the pairs. Two equal square matrices contribute their off-diagonal entries.
    distances : array_like, same shape as ``similarity_values``
        Geodesic distances of the same pairs. Pairs with a non-finite value are dropped.
    title : str
        Figure title; ``(Pearson r = …)`` is appended.

    Returns
    -------
    bytes
        A PNG image. At most 20,000 pairs are drawn, chosen with a fixed-seed generator; the
        correlation uses every pair.
    """
    from matplotlib.figure import Figure

    s = np.asarray(similarity_values, dtype=np.float64)
    d = np.asarray(distances, dtype=np.float64)
    if s.shape != d.shape:
        raise ValueError(f"similarity_values and distances differ in shape: {s.shape} vs {d.shape}")
    if s.ndim == 2 and s.shape[0] == s.shape[1]:
        off = ~np.eye(s.shape[0], dtype=bool)
        s, d = s[off], d[off]
    s, d = s.ravel(), d.ravel()
    keep = np.isfinite(s) & np.isfinite(d)
    s, d = s[keep], d[keep]
    r = float(np.corrcoef(d, s)[0, 1]) if s.size > 1 and np.ptp(s) > 0 and np.ptp(d) > 0 else float("nan")
    if s.size > MAX_SCATTER_POINTS:
        pick = np.sort(np.random.default_rng(0).choice(s.size, MAX_SCATTER_POINTS, replace=False))
        s, d = s[pick], d[pick]

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
