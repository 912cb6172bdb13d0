"""Local-elasticity similarity S [n, n]: row i = the example stepped on, column j = the one observed.

Definitions (θ_i = θ − η ∇θ L(f(x_i; θ), 1), Δf_ij = f(x_j; θ_i) − f(x_j; θ)):

- kernelized: S_ij = Δf_ij / (−η ∂L/∂f at (x_i, 1)); limit η → 0: K_f = s_i s_j K_z, s = ∂f/∂z.
- relative:   S_ij = |Δf_ij| / |Δf_ii|; limit |K_f(i, j)| / K_f(i, i).
- activation: cosine similarity of the first-layer ReLU on/off patterns.

step == 0 uses the exact limit (the NTK). step > 0 with schedule "fixed" is the exact one-step
definition from a fixed θ, via a GEMM-only formula for 2-layer ReLU/linear nets (`_two_layer_rows`,
capability closed_form_step), difference propagation for other stacks of linear layers and for the
CNN (`propagation.py`, `convprop.py`, capability difference_propagation) and float64 torch.func for
any other model (`_generic_rows`); "trajectory" is Algorithm 1 (trajectory.py). Each kind's own
part is in kinds.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from service.contract.spec import SIMILARITY_KINDS
from workers.compute import propagation
from workers.compute.device import exact_float32
from workers.compute.functional import (
    Params,
    dfdz,
    dloss_dz,
    float64_params,
    kernel_rows,
    per_example_grads,
    predict,
    rows_to_similarity,
)
from workers.compute.kinds import DIRECT_KINDS, activation_similarity, step_kind
from workers.compute.ntk import ntk, two_layer_features
from workers.compute.progress import Progress, Throttle
from workers.compute.scalar_net import capabilities_of, linear_layers
from workers.compute.trajectory import trajectory_similarity

KINDS = tuple(SIMILARITY_KINDS)
_BLOCK_BYTES = 128 * 2**20  # [block, n] / [block, m] temporaries of the two-layer path
_SEGMENT = 2**20  # ReLU-crossing candidates evaluated at once
_GENERIC_BYTES = 2**30  # per-chunk budget of the generic path
_SYMMETRIZE_BLOCK = 512  # tiles of the in-place symmetrisation


def postprocess(S: np.ndarray, *, symmetrize: bool, normalize: bool) -> np.ndarray:
    """A float32 copy of S [n, n], post-processed by `postprocess_`."""
    return postprocess_(np.array(S, dtype=np.float32), symmetrize=symmetrize, normalize=normalize)


def postprocess_(S: np.ndarray, *, symmetrize: bool, normalize: bool) -> np.ndarray:
    """In place on S [n, n] float32: (S + Sᵀ)/2 if symmetrize, then S_ij / sqrt(S_ii S_jj) if normalize
    (rows/cols with S_ii ≤ 0 → 0). No temporary of n × n; returns S."""
    if symmetrize:
        symmetrize_(S)
    if normalize:
        d = np.diag(S).astype(np.float64)
        inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0).astype(S.dtype)
        for r0 in range(0, S.shape[0], _SYMMETRIZE_BLOCK):  # inv_i inv_j in one product: a symmetric S stays so
            rows = slice(r0, r0 + _SYMMETRIZE_BLOCK)
            S[rows] *= inv[rows, None] * inv[None, :]
    return S


def symmetrize_(S: np.ndarray, block: int = _SYMMETRIZE_BLOCK) -> np.ndarray:
    """S ← (S + Sᵀ)/2 in place, one pair of [block, block] tiles at a time; returns S [n, n]."""
    n = S.shape[0]
    for i0 in range(0, n, block):
        rows = slice(i0, min(n, i0 + block))
        for j0 in range(i0, n, block):
            cols = slice(j0, min(n, j0 + block))
            mean = S[rows, cols] + S[cols, rows].T
            mean *= 0.5
            S[rows, cols] = mean
            S[cols, rows] = mean.T
    return S


class RepeatMean:
    """Running mean of equally shaped float32 matrices [n, n] in one accumulator (the first one added
    is taken over and modified in place; the others are only read)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, S: np.ndarray) -> None:
        if self.total is None:
            self.total = S if S.dtype == np.float32 else S.astype(np.float32)
        else:
            self.total += S
        self.count += 1

    def mean(self) -> np.ndarray:
        """The mean, in place of the accumulator (add nothing after this)."""
        if self.total is None:
            raise ValueError("no matrix was added")
        if self.count > 1:
            self.total /= np.float32(self.count)
        return self.total


def _z64(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    params = float64_params(model)
    with torch.no_grad():
        return predict(model, params, X.to(next(iter(params.values())).device, torch.float64))


@torch.no_grad()
def _two_layer_rows(
    model: nn.Module, X: torch.Tensor, s: torch.Tensor, progress: Progress | None = None
) -> torch.Tensor:
    """Q [n, n] = Δz / (−s_i), exactly, for a 1- or 2-layer net with relu or no activation (closed_form_step).

    With e_ij = x_i·x_j + 1, D = σ'(U), a = W2[0], h_i = σ(u_i):
      Q = e ⊙ ((D a − s H)(D a)ᵀ) + H Hᵀ + 1 + C,
      C_ij = Σ_r (a_r − s_i h_ir) X_ijr / (−s_i), the ReLU-crossing correction (u_jr and
      u_jr + δ_ijr of different sign, δ_ijr = −s_i e_ij a_r σ'_ir), over the candidates with
      |u_jr| / |a_r| < |s_i e_ij|, found by one sort and batched binary searches.
    Computed in the model's dtype (all terms are O(1): nothing cancels).
    """
    layers = linear_layers(model)
    if len(layers) == 1:
        Xf = X.reshape(X.shape[0], -1).to(layers[0].weight)
        return torch.addmm(torch.ones((), dtype=Xf.dtype, device=Xf.device), Xf, Xf.t())
    f = two_layer_features(model, X)
    Xf, U, H, D, a = f["X"], f["U"], f["H"], f["D"], f["a"]
    n, m = U.shape
    s = s.to(U)
    R = D * a
    relu = capabilities_of(model).activation == "relu"
    if relu:
        candidates = _crossing_candidates(Xf, U, a, s)
    Q = torch.empty((n, n), dtype=U.dtype, device=U.device)
    one = torch.ones((), dtype=U.dtype, device=U.device)
    report = Throttle(progress, every=2.0)
    block = max(1, min(n, _BLOCK_BYTES // (4 * max(n, m) * U.element_size())))
    for b0 in range(0, n, block):
        b = slice(b0, min(n, b0 + block))
        E = torch.addmm(one, Xf[b], Xf.t())
        L = R[b] - s[b, None] * H[b]
        T = torch.mm(L, R.t()).mul_(E)
        torch.addmm(T, H[b], H.t(), out=Q[b]).add_(1)
        del T, L
        if relu:
            _add_crossings(Q, E, b, s=s, U=U, a=a, candidates=candidates, report=report)
        del E
        report(b.stop / n, f"exact steps: rows {b.stop}/{n}")
    return Q


def _crossing_candidates(
    Xf: torch.Tensor, U: torch.Tensor, a: torch.Tensor, s: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The (j, r) that some probe could flip, grouped by (j, σ_jr) and sorted by ρ_jr = |u_jr| / |a_r|.

    A crossing of (i, j, r) needs ρ_jr < |s_i e_ij| ≤ τ = max_i |s_i| (|x_i| max_j |x_j| + 1), so only
    the few (j, r) with ρ_jr ≤ τ are kept. It also needs δ_ijr = −s_i e_ij a_r σ'_ir against the sign of
    u_jr: sign(s_i e_ij) = σ_jr, with σ_jr = sign(a_r) where u_jr > 0 and −sign(a_r) elsewhere. Their
    keys g·C + ρ_jr with the group g = 2j + [σ_jr > 0] (C > τ, float64) are sorted once; the candidates
    of a pair (i, j) are then the entries of group 2j + [s_i e_ij > 0] below |s_i e_ij|.
    """
    n = U.shape[0]
    norms = Xf.norm(dim=1)
    tau = float((s.abs() * (norms * norms.max() + 1)).max())
    rho = torch.where(a != 0, U.abs() / a.abs(), torch.full_like(U, float("inf")))
    j, r = torch.nonzero(rho <= tau, as_tuple=True)
    positive = (U[j, r] > 0) == (a[r] > 0)  # σ_jr > 0
    scale = 2 * tau + 1
    key, order = torch.sort((2 * j + positive).double() * scale + rho[j, r].double())
    group_start = torch.searchsorted(key, torch.arange(2 * n, device=U.device, dtype=torch.float64) * scale)
    return {"key": key, "r": r[order], "group_start": group_start, "scale": torch.tensor(scale, dtype=torch.float64)}


def _add_crossings(
    Q: torch.Tensor,
    E: torch.Tensor,
    b: slice,
    *,
    s: torch.Tensor,
    U: torch.Tensor,
    a: torch.Tensor,
    candidates: dict[str, torch.Tensor],
    report: Throttle,
) -> None:
    """Add C_ij = Σ_r (a_r − s_i h_ir) X_ijr / (−s_i) to the rows `b` of Q, over the ReLUs that the
    step at x_i flips at x_j: u_jr and u_jr + δ_ijr of different signs, δ_ijr = −s_i e_ij a_r σ'_ir.

    Candidates of a pair (i, j) come from `_crossing_candidates` by one batched binary search; each is
    then tested exactly (ReLU: σ'_ir = [u_ir > 0], h_ir = max(u_ir, 0)). E [len(b), n] holds e_ij of
    the rows b. The candidates are expanded a segment of whole pairs at a time, by flat gathers.
    """
    n, m = U.shape
    key, cand_r, group_start = candidates["key"], candidates["r"], candidates["group_start"]
    if key.numel() == 0:
        return
    scale = float(candidates["scale"])
    step = s[b, None] * E  # [B, n]: s_i e_ij
    group = 2 * torch.arange(n, device=U.device) + (step > 0)  # [B, n]: the group of each pair
    threshold = step.abs().double() + group.double() * scale  # [B, n]: g·C + |s_i e_ij|
    first = group_start[group].reshape(-1)
    counts = torch.searchsorted(key, threshold, right=True).reshape(-1) - first
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1])
    # Segments of whole pairs with about _SEGMENT candidates each: pair p owns candidates
    # [ends[p] − counts[p], ends[p]), the (j, r) entries first[p] onwards of its group.
    cuts = torch.searchsorted(ends, torch.arange(0, total, _SEGMENT, device=U.device), right=True).tolist()
    cuts.append(counts.numel())
    U_flat, E_flat = U.reshape(-1), E.reshape(-1)
    for p0, p1 in zip(cuts[:-1], cuts[1:], strict=True):
        if p1 <= p0:
            continue
        seg_counts = counts[p0:p1]
        pair = torch.repeat_interleave(torch.arange(p0, p1, device=U.device), seg_counts)
        if pair.numel() == 0:
            continue
        offset = torch.arange(pair.numel(), device=U.device) - (starts.index_select(0, pair) - starts[p0])
        r = cand_r.index_select(0, first.index_select(0, pair) + offset)
        # Only units on at the probe move (ReLU: σ'_ir = [u_ir > 0]): keep those candidates, about half.
        u_i = U_flat.index_select(0, (pair // n + b.start) * m + r)
        on = torch.nonzero(u_i > 0).squeeze(1)
        pair, r, h_ir = pair.index_select(0, on), r.index_select(0, on), u_i.index_select(0, on)
        i_local, j = pair // n, pair % n
        i = i_local + b.start
        si, ar = s.index_select(0, i), a.index_select(0, r)
        u = U_flat.index_select(0, j * m + r)
        new = u - si * E_flat.index_select(0, pair) * ar
        down, up = (u > 0) & (new <= 0), (u <= 0) & (new > 0)
        value = torch.where(down, new, torch.where(up, -new, torch.zeros_like(new))) / si
        Q.view(-1).index_add_(0, i * n + j, (ar - si * h_ir) * value)
        done = b.start + (b.stop - b.start) * int(ends[p1 - 1]) / total
        report(done / n, f"exact steps: rows {int(done)}/{n}, ReLU crossings")


@torch.no_grad()
def _limit(
    model: nn.Module, X: torch.Tensor, *, kind: str, loss: str, progress: Progress | None = None
) -> torch.Tensor:
    """The η → 0 limit [n, n] from K_z, in place.

    K_f = w_i w_j K_z (w = ∂f/∂z), then the kind's `from_limit` (relative: |K_f| / K_f(i, i)).
    """
    finish = step_kind(kind).from_limit
    K = ntk(model, X, progress=progress)
    if loss == "bce":
        w = dfdz(model(X.to(K.dtype)), loss)
        K.mul_(w[:, None]).mul_(w[None, :])
    return finish(K)


def _propagated_rows(
    model: nn.Module, X: torch.Tensor, s: torch.Tensor, progress: Progress | None = None
) -> torch.Tensor:
    """Q [n, n] = Δz / (−s_i) by difference propagation (`propagation.py`); rows with s_i = 0 are K_z rows."""
    dz = propagation.step_differences(model, X, s, progress=progress)
    step = s.to(dz)
    zero = step == 0
    Q = dz.div_(-torch.where(zero, torch.ones_like(step), step)[:, None])
    if bool(zero.any()):
        Q[zero] = ntk(model, X)[zero].to(Q)
    return Q


def _generic_rows(
    model: nn.Module, X: torch.Tensor, s: torch.Tensor, z: torch.Tensor, progress: Progress | None
) -> torch.Tensor:
    """Q [n, n] float64 = (z(x_j; θ − s_i ∇z_i) − z(x_j; θ)) / (−s_i) via torch.func, chunked over i.

    Rows with s_i = 0 use the limit K_z row (Jacobian-vector products).
    """
    params = float64_params(model)
    X64 = X.to(z.device, torch.float64)
    n = X64.shape[0]
    n_params = sum(p.numel() for p in params.values())
    sizes: list[int] = []

    def record_size(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        sizes.append(output.numel())

    hooks = [m.register_forward_hook(record_size) for m in model.modules()]
    try:
        with torch.no_grad():
            predict(model, params, X64[:1])
    finally:
        for h in hooks:
            h.remove()
    per_probe = 8 * (3 * n_params + 3 * n * sum(sizes))
    chunk = max(1, min(n, _GENERIC_BYTES // per_probe))

    def z_at_X(p: Params) -> torch.Tensor:
        return predict(model, p, X64)

    forward_all: Callable[[Params], torch.Tensor] = torch.func.vmap(z_at_X)
    Q = torch.empty((n, n), dtype=torch.float64, device=z.device)
    report = Throttle(progress, every=2.0)
    for c0 in range(0, n, chunk):
        rows = slice(c0, min(n, c0 + chunk))
        g = per_example_grads(model, params, X64[rows])
        with torch.no_grad():
            si = s[rows]
            stepped = {k: p - si.reshape(-1, *[1] * p.dim()) * g[k] for k, p in params.items()}
            safe = torch.where(si == 0, torch.ones_like(si), si)
            Q[rows] = (forward_all(stepped) - z) / (-safe[:, None])
            zero = torch.nonzero(si == 0).reshape(-1)
            if zero.numel():
                Q[c0 + zero] = kernel_rows(model, params, X64, {k: v[zero] for k, v in g.items()})
        report(rows.stop / n, f"exact steps {rows.stop}/{n}")
    return Q


def similarity(model: nn.Module, X: torch.Tensor, **options: Any) -> np.ndarray:
    """Raw similarity S [n, n] float32 over the primary examples X [n, *input_shape] (all y = 1), on the
    host: `similarity_tensor` (same options) moved to the CPU."""
    return similarity_tensor(model, X, **options).to("cpu").numpy()


def similarity_tensor(
    model: nn.Module,
    X: torch.Tensor,
    *,
    kind: str,
    step: float,
    loss: str,
    schedule: str = "fixed",
    X_aux: torch.Tensor | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Raw similarity S [n, n] float32 over the primary examples X [n, *input_shape] (all y = 1), left on
    the model's device (a GPU tile never crosses to the host).

    X_aux [m, ...] (y = 0) and seed are used by schedule "trajectory" only. The model is not modified.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if schedule not in ("fixed", "trajectory"):
        raise ValueError(f"unknown schedule {schedule!r}")
    with exact_float32():
        S = _similarity(
            model, X, kind=kind, step=step, loss=loss, schedule=schedule, X_aux=X_aux, seed=seed, progress=progress
        )
    if progress is not None:
        progress(1.0, "similarity done")
    return S.detach().to(torch.float32)


def _similarity(
    model: nn.Module,
    X: torch.Tensor,
    *,
    kind: str,
    step: float,
    loss: str,
    schedule: str,
    X_aux: torch.Tensor | None,
    seed: int,
    progress: Progress | None,
) -> torch.Tensor:
    """S [n, n] on the model's device (see `similarity`)."""
    device = next(model.parameters()).device
    X = X.to(device)
    if kind in DIRECT_KINDS:
        S = DIRECT_KINDS[kind](model, X)
    elif schedule == "trajectory":
        if step <= 0:
            raise ValueError("schedule 'trajectory' needs step > 0")
        S = trajectory_similarity(model, X, kind=kind, step=step, loss=loss, X_aux=X_aux, seed=seed, progress=progress)
    elif step == 0:
        S = _limit(model, X, kind=kind, loss=loss, progress=progress)
    else:
        capabilities = capabilities_of(model)
        fast, propagated = capabilities.closed_form_step, capabilities.difference_propagation
        # These paths subtract no two predictions, so the model's dtype is exact enough for z.
        with torch.no_grad():
            z = model(X).to(torch.float64) if fast or propagated else _z64(model, X)
        s = step * dloss_dz(z, 1.0, loss)
        if fast:
            Q = _two_layer_rows(model, X, s, progress)
        elif propagated:
            Q = _propagated_rows(model, X, s, progress)
        else:
            Q = _generic_rows(model, X, s, z, progress)
        S = rows_to_similarity(Q, z, s, kind=kind, loss=loss)
    return S


__all__ = [
    "KINDS",
    "RepeatMean",
    "activation_similarity",
    "dfdz",
    "postprocess",
    "postprocess_",
    "similarity",
    "similarity_tensor",
]
