"""How the engine computes each similarity kind (the spec's side of a kind: service.contract.spec.SIMILARITY_KINDS).

A step kind reads the prediction changes of SGD steps. `from_rows` turns rows R [n, n],
R_ij = Δf_ij / (−s_i) with s_i = η · ∂L/∂z at the stepped example x_i, and w [n] = ∂f/∂z at x_i into
S [n, n] in place; `from_limit` turns their η → 0 limit K_f [n, n] (K_f = w_i w_j K_z) into S, in place.

A direct kind computes S [n, n] from the model and the examples X [n, *input_shape].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from workers.compute.scalar_net import relu_pattern_layer


@dataclass(frozen=True)
class StepKind:
    """A similarity read from one-SGD-step prediction changes (see the module docstring)."""

    from_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    from_limit: Callable[[torch.Tensor], torch.Tensor]


def _kernelized_rows(R: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """S_ij = Δf_ij / (−η ∂L/∂f at (x_i, 1)) = w_i R_ij, in place on R."""
    return R.mul_(w.to(R.dtype).unsqueeze(1))


def _kernelized_limit(K_f: torch.Tensor) -> torch.Tensor:
    """The limit of the kernelized similarity is K_f itself."""
    return K_f


def _relative_rows(R: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """S_ij = |Δf_ij| / |Δf_ii| = |R_ij| / |R_ii| (w_i cancels), in place on R (rows with R_ii = 0 are 0)."""
    return _relative_limit(R)


def _relative_limit(K_f: torch.Tensor) -> torch.Tensor:
    """|K_f(i, j)| / |K_f(i, i)| in place (rows with K_f(i, i) = 0 are 0)."""
    d = K_f.diagonal().abs().clone()
    return K_f.abs_().div_(torch.where(d > 0, d, torch.full_like(d, float("inf")))[:, None])


def activation_similarity(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [n, n] of the ReLU on/off patterns 1[U > 0] of the model's relu_pattern_layer.

    The model needs one: an mlp with relu activation, or a resmlp (service.contract.architectures).
    """
    first = relu_pattern_layer(model)
    if first is None:
        raise ValueError("kind 'activation' needs an mlp with relu activation or a resmlp")
    with torch.no_grad():
        Xf = X.reshape(X.shape[0], -1).to(first.weight)
        P = (torch.addmm(first.bias, Xf, first.weight.t()) > 0).to(Xf.dtype)
        norm = P.sum(1).sqrt()
        inv = torch.where(norm > 0, 1 / torch.where(norm > 0, norm, 1), 0)
        return (P @ P.t()) * inv[:, None] * inv[None, :]


STEP_KINDS: dict[str, StepKind] = {
    "kernelized": StepKind(from_rows=_kernelized_rows, from_limit=_kernelized_limit),
    "relative": StepKind(from_rows=_relative_rows, from_limit=_relative_limit),
}

DIRECT_KINDS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "activation": activation_similarity,
}


def step_kind(kind: str) -> StepKind:
    """The step kind named `kind` (ValueError for any other name)."""
    if kind not in STEP_KINDS:
        raise ValueError(f"unknown similarity kind {kind!r}")
    return STEP_KINDS[kind]
