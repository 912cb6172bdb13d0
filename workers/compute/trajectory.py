"""Functional helpers shared by the exact-step paths, and the SGD-trajectory schedule (Algorithm 1).

Notation: z [n] are logits (pre-sigmoid), y ∈ {0, 1}, s_i = η · ∂L/∂z at (x_i, y_i). Rows are
first produced as Q_ij = Δz_ij / (−s_i) (so Q → K_z as η → 0) and then turned into similarities by
`rows_to_similarity`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from workers.compute.progress import Progress, Throttle


def dloss_dz(z: torch.Tensor, y: torch.Tensor | float, loss: str) -> torch.Tensor:
    """∂L/∂z elementwise: 2(z − y) for mse, sigmoid(z) − y for bce."""
    if loss == "mse":
        return 2 * (z - y)
    if loss == "bce":
        return torch.sigmoid(z) - y
    raise ValueError(f"unknown loss {loss!r}")


def dfdz(z: torch.Tensor, loss: str) -> torch.Tensor:
    """∂f/∂z elementwise: 1 for mse, f(1 − f) for bce."""
    if loss == "bce":
        f = torch.sigmoid(z)
        return f * (1 - f)
    return torch.ones_like(z)


def sigmoid_difference(z: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """sigmoid(z + dz) − sigmoid(z) without cancellation (broadcasting)."""
    return torch.tanh(dz / 2) * (1 - torch.tanh(z / 2) * torch.tanh((z + dz) / 2)) / 2


def rows_to_similarity(Q: torch.Tensor, z_base: torch.Tensor, s: torch.Tensor, *, kind: str, loss: str) -> torch.Tensor:
    """Similarity rows from Q [n, n] (Q_ij = Δz_ij / (−s_i), or K_z(i, j) where s_i = 0).

    z_base: logits before the step, [n] (same θ for every row) or [n, n] (row i's θ). s [n].
    kernelized: Δf_ij / (−η ∂L/∂f at (x_i, 1)); relative: |Δf_ij| / |Δf_ii|. Returns [n, n].
    """
    zb = z_base if z_base.dim() == 2 else z_base.unsqueeze(0)
    zi = torch.diagonal(z_base) if z_base.dim() == 2 else z_base
    Q = Q.to(zb.dtype)
    if loss == "bce":
        step = s.unsqueeze(1)
        zero = step == 0
        safe = torch.where(zero, torch.ones_like(step), step)
        R = sigmoid_difference(zb, -safe * Q) / (-safe)
        R = torch.where(zero, dfdz(zb, loss) * Q, R)  # the η → 0 limit of Δf / (−s_i)
    else:
        R = Q
    if kind == "kernelized":
        return dfdz(zi, loss).unsqueeze(1) * R
    if kind == "relative":
        diag = torch.diagonal(R).abs().unsqueeze(1)
        return torch.where(diag > 0, R.abs() / torch.where(diag > 0, diag, 1), torch.zeros_like(R))
    raise ValueError(f"unknown similarity kind {kind!r}")


def float64_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached float64 copies of the model's parameters (the model itself is not modified)."""
    return {k: v.detach().to(torch.float64).clone() for k, v in model.named_parameters()}


def predict(model: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """z [n] of `model` with `params` at X [n, ...]."""
    return functional_call(model, params, (X,))


def per_example_grads(model: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor) -> dict:
    """∇θ z(x_i) for X [c, ...]: name → [c, *shape]."""
    return vmap(grad(lambda p, x: predict(model, p, x.unsqueeze(0))[0]), in_dims=(None, 0))(params, X)


def kernel_rows(model: nn.Module, params: dict, X: torch.Tensor, grads: dict) -> torch.Tensor:
    """K_z rows [c, n] = ⟨∇θ z(x_i), ∇θ z(x_j)⟩ as Jacobian-vector products along the c gradients."""

    def row(g):
        return jvp(lambda p: predict(model, p, X), (params,), (g,))[1]

    return vmap(row)(grads)


def trajectory_similarity(
    model: nn.Module,
    X: torch.Tensor,
    *,
    kind: str,
    step: float,
    loss: str,
    X_aux: torch.Tensor | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Algorithm 1: one pass of single-example SGD over a seeded shuffle of X (y=1) and X_aux (y=0).

    θ is carried forward (float64 copy; the caller's model is untouched). When the step is at
    primary example i, row i compares the primary predictions before and after that step, normalised
    with that step's loss derivative. Returns S [n, n] float64 (rows never stepped on cannot occur:
    every primary example is visited once).
    """
    params = float64_params(model)
    device = params[next(iter(params))].device
    Xp = X.to(device=device, dtype=torch.float64)
    Xa = X_aux.to(device=device, dtype=torch.float64) if X_aux is not None and X_aux.shape[0] else Xp[:0]
    n = Xp.shape[0]
    data = torch.cat([Xp, Xa])
    labels = torch.cat([torch.ones(n), torch.zeros(Xa.shape[0])]).to(device=device, dtype=torch.float64)
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed)).tolist()
    Q = torch.empty((n, n), dtype=torch.float64, device=device)
    z_rows = torch.empty((n, n), dtype=torch.float64, device=device)
    s_rows = torch.zeros(n, dtype=torch.float64, device=device)
    with torch.no_grad():
        z = predict(model, params, Xp)
    report = Throttle(progress, every=2.0)
    for t, k in enumerate(order):
        x = data[k : k + 1]
        g = per_example_grads(model, params, x)
        with torch.no_grad():
            z_k = z[k] if k < n else predict(model, params, x)[0]
            s = step * dloss_dz(z_k, labels[k], loss)
            new_params = {name: p - s * g[name][0] for name, p in params.items()}
            z_new = predict(model, new_params, Xp)
            if k < n:
                z_rows[k] = z
                s_rows[k] = s
                if s != 0:
                    Q[k] = (z_new - z) / (-s)
                else:
                    Q[k] = kernel_rows(model, params, Xp, g)[0]
            params, z = new_params, z_new
        report((t + 1) / len(order), f"trajectory step {t + 1}/{len(order)}")
    return rows_to_similarity(Q, z_rows, s_rows, kind=kind, loss=loss)
