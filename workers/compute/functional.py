"""Functional toolbox shared by the exact-step paths: loss derivatives, float64 parameter copies,
`functional_call` predictions, per-example gradients, Jacobian-vector kernel rows, and the turn of
prediction changes into similarity rows.

Notation: z [n] are logits (pre-sigmoid), y ∈ {0, 1}, s_i = η · ∂L/∂z at (x_i, y_i). Rows are
first produced as Q_ij = Δz_ij / (−s_i) (so Q → K_z as η → 0) and then turned into similarities by
`rows_to_similarity`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from workers.compute.kinds import step_kind

#: Parameter name → tensor, as `torch.func.functional_call` takes them.
Params = dict[str, torch.Tensor]


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


#: Entries of the float64 temporaries of one block of rows in `rows_to_similarity` (bce).
_ROW_BLOCK_ENTRIES = 2**22


def rows_to_similarity(Q: torch.Tensor, z_base: torch.Tensor, s: torch.Tensor, *, kind: str, loss: str) -> torch.Tensor:
    """Similarity rows from Q [n, n] (Q_ij = Δz_ij / (−s_i), or K_z(i, j) where s_i = 0), in place.

    z_base: logits before the step, [n] (same θ for every row) or [n, n] (row i's θ). s [n].
    kernelized: Δf_ij / (−η ∂L/∂f at (x_i, 1)); relative: |Δf_ij| / |Δf_ii| (workers/compute/kinds.py).
    Returns Q, overwritten: no n × n temporary (bce reads the sigmoid's differences in float64 a block
    of rows at a time).
    """
    finish = step_kind(kind).from_rows
    zb = z_base if z_base.dim() == 2 else z_base.unsqueeze(0)
    zi = torch.diagonal(z_base) if z_base.dim() == 2 else z_base
    if loss == "bce":
        n = Q.shape[0]
        block = max(1, _ROW_BLOCK_ENTRIES // max(1, Q.shape[1]))
        for start in range(0, n, block):
            rows = slice(start, min(n, start + block))
            z_rows = zb[rows] if zb.shape[0] > 1 else zb
            step = s[rows].to(zb.dtype).unsqueeze(1)
            zero = step == 0
            safe = torch.where(zero, torch.ones_like(step), step)
            q = Q[rows].to(zb.dtype)
            R = sigmoid_difference(z_rows, -safe * q) / (-safe)
            Q[rows] = torch.where(zero, dfdz(z_rows, loss) * q, R)  # the η → 0 limit of Δf / (−s_i)
    return finish(Q, dfdz(zi, loss))


def float64_params(model: nn.Module) -> Params:
    """Detached float64 copies of the model's parameters (the model itself is not modified)."""
    return {k: v.detach().to(torch.float64).clone() for k, v in model.named_parameters()}


def predict(model: nn.Module, params: Params, X: torch.Tensor) -> torch.Tensor:
    """z [n] of `model` with `params` at X [n, ...]."""
    z: torch.Tensor = functional_call(model, params, (X,))
    return z


def per_example_grads(model: nn.Module, params: Params, X: torch.Tensor) -> Params:
    """∇θ z(x_i) for X [c, ...]: name → [c, *shape]."""

    def z_single(p: Params, x: torch.Tensor) -> torch.Tensor:
        return predict(model, p, x.unsqueeze(0))[0]

    grads: Callable[[Params, torch.Tensor], Params] = vmap(grad(z_single), in_dims=(None, 0))
    return grads(params, X)


def kernel_rows(model: nn.Module, params: Params, X: torch.Tensor, grads: Params) -> torch.Tensor:
    """K_z rows [c, n] = ⟨∇θ z(x_i), ∇θ z(x_j)⟩ = J g_i for the c gradients g_i (grads: name → [c, *shape]).

    J [n, P] is the Jacobian of z at X. J g is the gradient in u of ⟨Jᵀ u, g⟩, which is linear in u:
    two reverse-mode passes, no forward-mode AD.
    """

    def z_at_X(p: Params) -> torch.Tensor:
        return predict(model, p, X)

    def row(g: Params) -> torch.Tensor:
        def pulled_back_dot_g(u: torch.Tensor) -> torch.Tensor:
            pull_back = vjp(z_at_X, params)[1]
            cotangents: Params = pull_back(u)[0]
            total = torch.zeros((), dtype=u.dtype, device=u.device)
            for name, tangent in g.items():
                total = total + (cotangents[name] * tangent).sum()
            return total

        K_row: torch.Tensor = grad(pulled_back_dot_g)(torch.zeros(X.shape[0], dtype=X.dtype, device=X.device))
        return K_row

    rows: torch.Tensor = vmap(row)(grads)
    return rows
