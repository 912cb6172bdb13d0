"""Exact one-step prediction changes of stacks of linear layers, by propagating differences.

For a probe i the SGD step changes every Linear layer by a rank-one update: W_l − s_i G_il A_ilᵀ and
b_l − s_i G_il, with A_il the layer's input and G_il = ∂z/∂(its output) at x_i. At an example x_j the
layer's input moves from a_jl to a_jl + Δa_ijl, so its output moves by exactly

    Δu_ijl = W_l Δa_ijl − s_i G_il (A_il · (a_jl + Δa_ijl) + 1),

and an activation's output by σ(u + Δu) − σ(u), evaluated without cancellation (max(Δu + min(u, 0),
−max(u, 0)) for ReLU, tanh(Δ)(1 − tanh(u) tanh(u + Δ)) for tanh and the sigmoid, in float64 for
GELU). Every quantity is a difference of size O(s), never the difference of two O(1) predictions, so
float32 carries the whole computation: the perturbed networks cost one batched float32 GEMM per
hidden-to-hidden layer.

Shapes: probes are processed in blocks I of B rows; differences are [B, n, width].

This module holds the driver and the two primitives (`linear_difference`, `activation_difference`);
each model with the capability difference_propagation composes them along its own layers in
`ScalarNet.probe_differences` (workers/compute/models.py). Convolutional stages (the CNN) have their
primitives in convprop.py; such models read their layers' inputs and output gradients from
`convprop.layer_signals` instead of `ntk.layer_factors`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workers.compute.convprop import layer_signals
from workers.compute.ntk import layer_factors
from workers.compute.progress import Progress, Throttle
from workers.compute.scalar_net import ScalarNet

_BLOCK_BYTES = 2**30  # bound on the [B, n, width] temporaries of one block of probes


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def activation_difference(u: torch.Tensor, du: torch.Tensor, name: str | None) -> torch.Tensor:
    """σ(u + du) − σ(u) without cancellation; u [n, w] broadcasts against du [B, n, w]."""
    if name is None:
        return du
    if name == "relu":  # u > 0: max(du, −u); u ≤ 0: max(u + du, 0)
        return torch.maximum(du + u.clamp_max(0), -u.clamp_min(0))
    new = u + du
    if name == "tanh":
        return torch.tanh(du) * (1 - torch.tanh(u) * torch.tanh(new))
    if name == "sigmoid":  # σ(x) = (1 + tanh(x / 2)) / 2
        return 0.5 * torch.tanh(du / 2) * (1 - torch.tanh(u / 2) * torch.tanh(new / 2))
    if name == "gelu":  # no cancellation-free identity: the difference in float64
        u64 = u.double()
        new64 = u64 + du.double()
        return (_gelu(new64) - _gelu(u64)).to(du.dtype)
    raise ValueError(f"unknown activation {name!r}")


def linear_difference(
    layer: nn.Linear, a: torch.Tensor, da: torch.Tensor | None, A: torch.Tensor, G: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """Δu [B, n, out] of `layer` for probes with inputs A [B, in], output gradients G [B, out] and
    steps s [B], at examples with inputs a [n, in] that moved by da [B, n, in] (None: they did not)."""
    inner = (A @ a.t()).add_(1)  # [B, n]: A_i · a_j + 1
    if da is None:
        return -(s[:, None, None] * G[:, None, :]) * inner[:, :, None]
    inner += torch.einsum("bi,bni->bn", A, da)
    return (da @ layer.weight.t()).sub_((s[:, None, None] * G[:, None, :]) * inner[:, :, None])


@torch.no_grad()
def step_differences(
    model: nn.Module, X: torch.Tensor, s: torch.Tensor, *, progress: Progress | None = None
) -> torch.Tensor:
    """Δz [n, n]: z(x_j; θ − s_i ∇θ z(x_i)) − z(x_j; θ), exactly, for a model with the capability
    difference_propagation.

    X [n, *shape]; s [n] the step of each probe (η · ∂L/∂z at x_i). Row i is probe i.
    """
    if not isinstance(model, ScalarNet) or not model.capabilities.difference_propagation:
        raise ValueError("difference propagation needs a model with the capability difference_propagation")
    dtype = next(model.parameters()).dtype
    X = X.reshape(X.shape[0], -1).to(dtype)
    s = s.to(dtype)
    # [(A_l, G_l)] per layer: its input and ∂z/∂(its output), per example (images for a convolution)
    factors = layer_factors(model, X) if model.capabilities.layerwise_ntk else layer_signals(model, X)
    n = X.shape[0]
    width = max(max(A[0].numel(), G[0].numel()) for A, G in factors)  # the widest layer input or output
    block = max(1, min(n, _BLOCK_BYTES // (6 * n * width * X.element_size())))
    out = torch.empty((n, n), dtype=dtype, device=X.device)
    report = Throttle(progress, every=2.0)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        probe = [(A[rows], G[rows]) for A, G in factors]
        out[rows] = model.probe_differences(factors, probe, s[rows])
        report(rows.stop / n, f"exact steps {rows.stop}/{n}")
    return out
