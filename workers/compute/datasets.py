"""Builtin datasets: scikit-learn's digits and the paper's six synthetic two-class manifolds (§5.3).

Synthetic sets have ``2 · (n // 2)`` rows: class 1 is the first ``n // 2`` rows, class 0 the next
``n // 2``. Every intrinsic parameter is drawn uniformly from ``np.random.default_rng(seed)`` (class
1's parameters first), so the same ``(name, n, seed)`` always gives identical arrays.

Intrinsic coordinates (``Dataset.coords``) per set, and the manifold each class lies on:

=================  ================  ==========================================================
name               coords            class 1 / class 0
=================  ================  ==========================================================
torus              (θ,)              (r cosθ ± sin kθ cosθ, r sinθ ± sin kθ sinθ, ±cos kθ),
                                     r = 8, k = 4, θ ∈ [−π, π] (+ for class 1)
two_folded_boxes   (x, face, z)      y = face · (c − K|x|), K = 1.2, c = 12 ± 1 (class 1: 13),
                                     |x| ≤ c / K, face ∈ {+1, −1}, z ∈ [−1, 1]
double_helix       (θ,)              (±cos 1.5θ, ±sin 1.5θ, θ), θ ∈ [−π/2, π/2]
two_cosines        (t,)              (t, cos t ± 0.2), t ∈ [−0.6π, 0.6π]
two_spheres        (θ, φ)            radius 10 / 20, θ ∈ [0, π], φ ∈ [0, 2π]
two_cycles         (α,)              radius 10 / 50, α ∈ [0, 2π]
=================  ================  ==========================================================

**Two folded boxes.** For one class the two faces ``y = c − K|x|`` (face +1) and ``y = K|x| − c``
(face −1) meet at ``x = ±c/K`` (y = 0), where ``c/K = 10 ± δ/K`` is the paper's "x ∈ [−10, 10]
widened by ±δ/K". So the cross-section of a class is a closed rhombus and the class is the surface
of a rhombic tube along z. That surface is developable: unrolled, it is a flat cylinder of
circumference ``P = 4 (c/K) √(1 + K²)`` and height 2. The geodesic distance is therefore
``√(ℓ² + Δz²)`` with ``ℓ = min(|Δs|, P − |Δs|)`` the shorter way round the rhombus and s the arc
length along it: on one face ``ℓ = √(1 + K²) |Δx|`` (also across the fold at x = 0), and a path may
go round a vertex at ``x = ±c/K`` onto the other face.

Geodesic distances are only defined between points of one class. :func:`geodesic_distances` uses
class 1's manifold unless told otherwise; only two_folded_boxes depends on the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.contract.spec import BUILTINS
from service.contract.spec import SYNTHETIC_BUILTINS as SYNTHETIC

TORUS_R, TORUS_K = 8.0, 4
BOX_K, BOX_BIAS, BOX_DELTA = 1.2, 12.0, 1.0
SPHERE_RADII = {1: 10.0, 0: 20.0}
CYCLE_RADII = {1: 10.0, 0: 50.0}


def _box_offset(label: int) -> float:
    """c of the folded boxes: the apex height of face +1 (bias + δ for class 1, bias − δ for class 0)."""
    return BOX_BIAS + BOX_DELTA if label == 1 else BOX_BIAS - BOX_DELTA


def _sample_coords(name: str, m: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly drawn intrinsic coordinates of m points of one class, shape (m, p)."""
    if name == "torus":
        return rng.uniform(-np.pi, np.pi, size=(m, 1))
    if name == "two_folded_boxes":
        half_width = _box_offset(label) / BOX_K
        x = rng.uniform(-half_width, half_width, size=m)
        face = rng.choice(np.array([1.0, -1.0]), size=m)
        z = rng.uniform(-1.0, 1.0, size=m)
        return np.column_stack([x, face, z])
    if name == "double_helix":
        return rng.uniform(-np.pi / 2, np.pi / 2, size=(m, 1))
    if name == "two_cosines":
        return rng.uniform(-0.6 * np.pi, 0.6 * np.pi, size=(m, 1))
    if name == "two_spheres":
        return np.column_stack([rng.uniform(0.0, np.pi, size=m), rng.uniform(0.0, 2 * np.pi, size=m)])
    if name == "two_cycles":
        return rng.uniform(0.0, 2 * np.pi, size=(m, 1))
    raise ValueError(f"unknown synthetic dataset {name!r}; expected one of {SYNTHETIC}")


def embed(name: str, coords: np.ndarray, *, label: int) -> np.ndarray:
    """Map intrinsic coordinates of one class to points in the ambient space (float64).

    Parameters
    ----------
    name : str
        A synthetic dataset name.
    coords : array_like, shape (m, p)
        Intrinsic coordinates (see the module docstring).
    label : {0, 1}
        The class, which selects the manifold.

    Returns
    -------
    ndarray of float64, shape (m, d)
    """
    coords = np.asarray(coords, dtype=np.float64)
    sign = 1.0 if label == 1 else -1.0
    if name == "torus":
        t = coords[:, 0]
        wobble = sign * np.sin(TORUS_K * t)
        return np.column_stack(
            [
                TORUS_R * np.cos(t) + wobble * np.cos(t),
                TORUS_R * np.sin(t) + wobble * np.sin(t),
                sign * np.cos(TORUS_K * t),
            ]
        )
    if name == "two_folded_boxes":
        x, face, z = coords.T
        return np.column_stack([x, face * (_box_offset(label) - BOX_K * np.abs(x)), z])
    if name == "double_helix":
        t = coords[:, 0]
        return np.column_stack([sign * np.cos(1.5 * t), sign * np.sin(1.5 * t), t])
    if name == "two_cosines":
        t = coords[:, 0]
        return np.column_stack([t, np.cos(t) + sign * 0.2])
    if name == "two_spheres":
        theta, phi = coords.T
        radius = SPHERE_RADII[label]
        return radius * np.column_stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    if name == "two_cycles":
        a = coords[:, 0]
        return CYCLE_RADII[label] * np.column_stack([np.cos(a), np.sin(a)])
    raise ValueError(f"unknown synthetic dataset {name!r}; expected one of {SYNTHETIC}")


def _wrapped(diff: np.ndarray) -> np.ndarray:
    """Shortest way round a circle: min(|Δ| mod 2π, 2π − |Δ| mod 2π)."""
    d = np.mod(np.abs(diff), 2 * np.pi)
    wrapped: np.ndarray = np.minimum(d, 2 * np.pi - d)
    return wrapped


def geodesic_distances(name: str, coords_a: np.ndarray, coords_b: np.ndarray, *, label: int = 1) -> np.ndarray:
    """Geodesic distance along one class's manifold between two sets of points.

    torus and two_cycles: wrapped parameter difference ``min(|Δ|, 2π − |Δ|)`` (a distance in the
    parameter, as in the paper, not an arc length). double_helix, two_cosines: ``|Δθ|``, ``|Δt|``.
    two_spheres: the angle ``arccos(u·u′)`` between the unit vectors, computed with the haversine
    formula so that it is accurate (exactly 0 for equal points). two_folded_boxes: the unrolled-tube
    distance of the module docstring.

    Parameters
    ----------
    name : str
        A synthetic dataset name.
    coords_a : array_like, shape (len_a, p)
    coords_b : array_like, shape (len_b, p)
    label : {0, 1}
        Class whose manifold both point sets lie on; only two_folded_boxes depends on it.

    Returns
    -------
    ndarray of float64, shape (len_a, len_b)
    """
    a = np.asarray(coords_a, dtype=np.float64)
    b = np.asarray(coords_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"coords must be (len, p) arrays with equal p, got {a.shape} and {b.shape}")
    if name in ("torus", "two_cycles"):
        return _wrapped(a[:, None, 0] - b[None, :, 0])
    if name in ("double_helix", "two_cosines"):
        along: np.ndarray = np.abs(a[:, None, 0] - b[None, :, 0])
        return along
    if name == "two_spheres":
        (ta, pa), (tb, pb) = a.T, b.T
        h = (
            np.sin((ta[:, None] - tb[None, :]) / 2) ** 2
            + np.sin(ta)[:, None] * np.sin(tb)[None, :] * np.sin((pa[:, None] - pb[None, :]) / 2) ** 2
        )
        angle: np.ndarray = 2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
        return angle
    if name == "two_folded_boxes":
        half_width = _box_offset(label) / BOX_K
        slope = np.sqrt(1 + BOX_K**2)
        perimeter = 4 * half_width * slope

        def arc(c: np.ndarray) -> np.ndarray:  # arc length round the rhombus from (−c/K, 0)
            x, face = c[:, 0], c[:, 1]
            length: np.ndarray = slope * np.where(face > 0, x + half_width, 3 * half_width - x)
            return length

        ds = np.mod(np.abs(arc(a)[:, None] - arc(b)[None, :]), perimeter)
        loop = np.minimum(ds, perimeter - ds)
        unrolled: np.ndarray = np.hypot(loop, a[:, None, 2] - b[None, :, 2])
        return unrolled
    raise ValueError(f"no geodesic distance for dataset {name!r}; expected one of {SYNTHETIC}")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A builtin dataset.

    Attributes
    ----------
    X : ndarray of float32, shape (n, d)
    y : ndarray of int64, shape (n,)
    coords : ndarray of float64, shape (n, p), or None
        Intrinsic coordinates (synthetic sets only).
    name : str
    """

    X: np.ndarray
    y: np.ndarray
    coords: np.ndarray | None
    name: str

    def geodesic(self, i_idx: np.ndarray | None = None, j_idx: np.ndarray | None = None) -> np.ndarray:
        """Geodesic distances between rows ``i_idx`` and rows ``j_idx`` (default: every row).

        Parameters
        ----------
        i_idx : array_like of int, shape (len_i,), optional
        j_idx : array_like of int, shape (len_j,), optional

        Returns
        -------
        ndarray of float64, shape (len_i, len_j)
            NaN where the two rows belong to different classes (no geodesic between manifolds).
        """
        if self.coords is None:
            raise ValueError(f"dataset {self.name!r} has no intrinsic coordinates")
        every = np.arange(self.y.size)
        i_idx = every if i_idx is None else np.asarray(i_idx, dtype=np.int64)
        j_idx = every if j_idx is None else np.asarray(j_idx, dtype=np.int64)
        yi, yj = self.y[i_idx], self.y[j_idx]
        out = np.full((i_idx.size, j_idx.size), np.nan)
        for label in (0, 1):
            both = (yi == label)[:, None] & (yj == label)[None, :]
            if both.any():
                dist = geodesic_distances(self.name, self.coords[i_idx], self.coords[j_idx], label=label)
                out[both] = dist[both]
        return out


def load_builtin(name: str, *, n: int = 200, seed: int = 0) -> Dataset:
    """Load or generate a builtin dataset.

    Parameters
    ----------
    name : str
        ``"digits"`` or a synthetic name (see the module docstring).
    n : int
        Synthetic sets: total examples, giving ``n // 2`` per class (n ≥ 2). Ignored for digits.
    seed : int
        Synthetic sets: generator seed. Ignored for digits.

    Returns
    -------
    Dataset
        digits: X (1797, 64) scaled to [−1, 1] as ``pixel / 8 − 1``, y the digit 0–9, coords None.
        Synthetic: X (2·(n//2), d), y 1 then 0, coords the intrinsic parameters.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        X = (digits.data / 8.0 - 1.0).astype(np.float32)
        return Dataset(X=X, y=digits.target.astype(np.int64), coords=None, name=name)
    if name not in SYNTHETIC:
        raise ValueError(f"unknown builtin dataset {name!r}; expected one of {BUILTINS}")
    if n < 2:
        raise ValueError(f"n must be at least 2 (one example per class), got {n}")
    half = n // 2
    rng = np.random.default_rng(seed)
    coords = [_sample_coords(name, half, label, rng) for label in (1, 0)]
    X = np.concatenate([embed(name, c, label=label) for c, label in zip(coords, (1, 0), strict=True)])
    y = np.repeat(np.array([1, 0], dtype=np.int64), half)
    return Dataset(X=X.astype(np.float32), y=y, coords=np.concatenate(coords), name=name)
