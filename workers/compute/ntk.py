"""Exact empirical NTK in z-space: K[i, j] = ⟨∇θ z(x_i), ∇θ z(x_j)⟩, shape [n, n].

Three implementations (`implementation` argument):

- "closed_form": 1- and 2-layer nets (capability closed_form_ntk: mlp depth 2, linear depth 1 and 2),
  pure GEMMs.
- "layerwise": compositions of nn.Linear layers and pointwise functions (capability layerwise_ntk:
  linear, mlp, resmlp): one forward/backward with hooks, K = Σ_l (G_l G_lᵀ) ⊙ (A_l A_lᵀ + 1).
- "structured": nets of Conv2d and Linear layers (capability structured_ntk: cnn): per layer the Gram
  of its inputs (im2col patches) times the Gram of its backpropagated signals, block by block
  (structured.py), never an n × P Jacobian.
- "jacobian": any model, torch.func per-example Jacobians tiled under a memory budget.

"auto" picks the first that the model's capabilities (service.contract.architectures) allow. The
result has the dtype of the model's parameters (X is cast to it) and lives on their device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.hooks import RemovableHandle

from workers.compute.device import exact_float32
from workers.compute.progress import Progress, Throttle
from workers.compute.scalar_net import LayerFactors, capabilities_of, linear_layers
from workers.compute.structured import structured_ntk, structured_ntk_diagonal

#: fn(params, X_chunk [c, ...]) → per-example Jacobians of z, J [c, P].
JacobianFn = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]

IMPLEMENTATIONS = ("auto", "closed_form", "layerwise", "structured", "jacobian")
DEFAULT_MAX_BYTES = 2 * 2**30
_BLOCK_BYTES = 256 * 2**20  # bound on the [block, n] temporaries of the blockwise products
_MIN_BLOCK = 128  # rows per block of the symmetric products (smaller blocks multiply slowly)


def activation_and_derivative(
    u: torch.Tensor, name: str | None, *, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ(u), σ'(u)) for an activation name (None: identity), autograd-free, same shape as u.

    inplace: σ(u) may reuse u's memory (relu), when the caller no longer needs u.
    """
    if name is None:
        return u, torch.ones_like(u)
    if name == "relu":
        derivative = u.sign().clamp_min_(0)  # 1[u > 0]; far faster than a bool cast on CPU
        return (u.clamp_min_(0) if inplace else torch.relu(u)), derivative
    if name == "sigmoid":
        s = torch.sigmoid(u)
        return s, s * (1 - s)
    if name == "tanh":
        t = torch.tanh(u)
        return t, 1 - t * t
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
        pdf = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
        return u * cdf, cdf + u * pdf
    raise ValueError(f"unknown activation {name!r}")


def _row_blocks(n: int, row_bytes: int, limit: int = _BLOCK_BYTES) -> Iterator[slice]:
    """Slices of rows such that block × row_bytes stays under `limit` (at least one row each)."""
    block = max(1, min(n, limit // max(row_bytes, 1)))
    for start in range(0, n, block):
        yield slice(start, min(n, start + block))


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _flat(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters())
    return X.reshape(X.shape[0], -1).to(device=p.device, dtype=p.dtype)


def two_layer_features(model: nn.Module, X: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hidden quantities of a 2-layer net (closed_form_ntk, two Linear layers) at X [n, ...] (model dtype).

    Returns X [n, d], U = X W1ᵀ + b1 [n, m], H = σ(U), D = σ'(U) (all [n, m]), a = W2[0] [m], c [].
    """
    Xf = _flat(model, X)
    first, second = linear_layers(model)
    U = torch.addmm(first.bias, Xf, first.weight.t())
    H, D = activation_and_derivative(U, capabilities_of(model).activation)
    return {"X": Xf, "U": U, "H": H, "D": D, "a": second.weight[0], "c": second.bias[0]}


@torch.no_grad()
def ntk_closed_form(model: nn.Module, X: torch.Tensor, *, progress: Progress | None = None) -> torch.Tensor:
    """K [n, n] for one Linear layer (X Xᵀ + 1) or two (H Hᵀ + (D A² Dᵀ) ⊙ (X Xᵀ + 1) + 1)."""
    if not capabilities_of(model).closed_form_ntk:
        raise ValueError("closed_form needs a model with the capability closed_form_ntk (mlp or linear of depth ≤ 2)")
    layers = linear_layers(model)
    if len(layers) == 1:
        Xf = _flat(model, X)
        return torch.addmm(torch.ones((), dtype=Xf.dtype, device=Xf.device), Xf, Xf.t())
    first = layers[0]
    Xf = _flat(model, X)
    n, m, size = Xf.shape[0], first.weight.shape[0], Xf.element_size()
    if 2 * n * m * size <= max(n * n * size, _BLOCK_BYTES):
        return _closed_form_by_rows(model, Xf, Throttle(progress, every=2.0))
    return _closed_form_by_hidden_units(model, Xf, Throttle(progress, every=2.0))


def symmetric_row_blocks(n: int, element_size: int = 4) -> list[slice]:
    """Row blocks of the symmetric closed form: ≥ 4 blocks of ≥ 128 rows, 3 [block, n] temporaries
    within a quarter of the block budget. Block k is multiplied against columns k.start: onwards only."""
    block = max(1, min(_BLOCK_BYTES // (12 * n * element_size), max(_MIN_BLOCK, -(-n // 4))))
    return [slice(start, min(n, start + block)) for start in range(0, n, block)]


def _closed_form_by_rows(model: nn.Module, Xf: torch.Tensor, report: Throttle | None = None) -> torch.Tensor:
    """K [n, n] with H and D a [n, m] whole in memory, one block of rows at a time.

    K is symmetric: each row block is multiplied only from its own first row on (the upper block
    triangle, about half the flops), then mirrored. Peak memory: n² + 2 n m + 3 block × n.
    """
    first, second = linear_layers(model)
    activation = capabilities_of(model).activation
    n = Xf.shape[0]
    one = torch.ones((), dtype=Xf.dtype, device=Xf.device)
    H, Da = activation_and_derivative(torch.addmm(first.bias, Xf, first.weight.t()), activation, inplace=True)
    Da.mul_(second.weight[0])
    K = torch.empty((n, n), dtype=Xf.dtype, device=Xf.device)
    blocks = symmetric_row_blocks(n, Xf.element_size())
    for rows in blocks:
        cols = slice(rows.start, n)
        T = torch.mm(H[rows], H[cols].t())  # [block, n − start]
        T.addcmul_(torch.mm(Da[rows], Da[cols].t()), torch.addmm(one, Xf[rows], Xf[cols].t())).add_(1)
        K[rows, cols] = T
        del T
        if report is not None:
            report(rows.stop / n, f"kernel rows {rows.stop}/{n}")
    for rows in blocks:
        K[rows.stop :, rows] = K[rows, rows.stop :].t()
    return K


def _closed_form_by_hidden_units(model: nn.Module, Xf: torch.Tensor, report: Throttle | None = None) -> torch.Tensor:
    """K [n, n] accumulated over chunks of hidden units (for m ≫ n). Peak memory: 2 n² + O(n · chunk)."""
    first, second = linear_layers(model)
    activation = capabilities_of(model).activation
    n, m = Xf.shape[0], first.weight.shape[0]
    one = torch.ones((), dtype=Xf.dtype, device=Xf.device)
    K = torch.empty((n, n), dtype=Xf.dtype, device=Xf.device)  # Σ H Hᵀ, then the result
    B = torch.empty((n, n), dtype=Xf.dtype, device=Xf.device)  # Σ (D a)(D a)ᵀ
    chunk = max(1, min(m, _BLOCK_BYTES // (16 * n * Xf.element_size())))
    for c in range(0, m, chunk):
        cols = slice(c, min(m, c + chunk))
        H, Da = activation_and_derivative(
            torch.addmm(first.bias[cols], Xf, first.weight[cols].t()), activation, inplace=True
        )
        Da.mul_(second.weight[0, cols])
        beta = 0 if c == 0 else 1  # beta = 0 ignores the uninitialised buffers
        K.addmm_(H, H.t(), beta=beta)
        B.addmm_(Da, Da.t(), beta=beta)
        del H, Da
        if report is not None:
            report(cols.stop / m, f"kernel: hidden units {cols.stop}/{m}")
    for b in _row_blocks(n, n * Xf.element_size(), _BLOCK_BYTES // 8):
        K[b].addcmul_(B[b], torch.addmm(one, Xf[b], Xf.t())).add_(1)  # ⊙ (X Xᵀ + 1)
    return K


def layer_factors(model: nn.Module, X: torch.Tensor) -> LayerFactors:
    """[(A_l [n, in], G_l [n, out])] per Linear layer: its input and ∂(Σ z)/∂(its output).

    Needs the capability layerwise_ntk (Linear layers and pointwise maps only).
    """
    if not capabilities_of(model).layerwise_ntk:
        raise ValueError("layerwise needs a model with the capability layerwise_ntk (Linear layers + pointwise maps)")
    layers = linear_layers(model)
    inputs: dict[int, torch.Tensor] = {}
    grads: dict[int, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def make_hook(k: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def keep_gradient(g: torch.Tensor) -> None:
            grads[k] = g.detach()

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            inputs[k] = args[0].detach()
            output.register_hook(keep_gradient)  # type: ignore[no-untyped-call]  # torch leaves it unannotated

        return hook

    for k, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(make_hook(k)))
    try:
        with torch.enable_grad():
            z = model(_flat(model, X))
            z.sum().backward(inputs=[p for p in model.parameters()])
    finally:
        for h in handles:
            h.remove()
    for p in model.parameters():
        p.grad = None
    return [(inputs[k], grads[k]) for k in range(len(layers))]


def ntk_layerwise(model: nn.Module, X: torch.Tensor, *, progress: Progress | None = None) -> torch.Tensor:
    """K [n, n] = Σ_l (G_l G_lᵀ) ⊙ (A_l A_lᵀ + 1), memory O(n · width) plus the result."""
    factors = layer_factors(model, X)
    A0 = factors[0][0]
    n = A0.shape[0]
    K = torch.zeros((n, n), dtype=A0.dtype, device=A0.device)
    one = torch.ones((), dtype=A0.dtype, device=A0.device)
    report = Throttle(progress, every=2.0)
    with torch.no_grad():
        for layer, (A, G) in enumerate(factors):
            for b in _row_blocks(n, 2 * n * A.element_size()):
                T = torch.addmm(one, A[b], A.t())
                T.mul_(torch.mm(G[b], G.t()))
                K[b].add_(T)
                del T
                report(
                    (layer + b.stop / n) / len(factors), f"kernel layer {layer + 1}/{len(factors)}, rows {b.stop}/{n}"
                )
    return K


def _jacobian_fn(model: nn.Module) -> tuple[dict[str, torch.Tensor], JacobianFn]:
    """(params dict, fn(params, X_chunk) → J [c, P]) for per-example Jacobians of z."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def z_single(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        z: torch.Tensor = functional_call(model, p, (x.unsqueeze(0),))[0]
        return z

    per_example: Callable[..., dict[str, torch.Tensor]] = vmap(jacrev(z_single), in_dims=(None, 0))

    def jac(p: dict[str, torch.Tensor], Xc: torch.Tensor) -> torch.Tensor:
        J = per_example(p, Xc)
        return torch.cat([J[k].reshape(Xc.shape[0], -1) for k in p], dim=1)

    return params, jac


def ntk_jacobian(
    model: nn.Module, X: torch.Tensor, *, max_bytes: int = DEFAULT_MAX_BYTES, progress: Progress | None = None
) -> torch.Tensor:
    """K [n, n] = J Jᵀ from per-example Jacobians J [n, P], tiled so Jacobians stay under max_bytes.

    Row blocks are sized so that two blocks (plus the per-example backward, counted ×3) fit the
    budget; blocks are cached and reused while the budget allows, else recomputed per tile.
    """
    dtype = _param_dtype(model)
    device = next(model.parameters()).device
    Xd = X.to(device=device, dtype=dtype)
    n = Xd.shape[0]
    params, jac = _jacobian_fn(model)
    P = sum(v.numel() for v in params.values())
    row_bytes = 3 * P * Xd.element_size()
    block = max(1, min(n, max_bytes // (2 * row_bytes)))
    starts = list(range(0, n, block))
    cache_cap = max(0, max_bytes // (block * P * Xd.element_size()) - 2)
    cache: dict[int, torch.Tensor] = {}

    def get(k: int) -> torch.Tensor:
        if k in cache:
            return cache[k]
        J = jac(params, Xd[starts[k] : starts[k] + block])
        if len(cache) < cache_cap:
            cache[k] = J
        return J

    K = torch.empty((n, n), dtype=dtype, device=device)
    report = Throttle(progress, every=2.0)
    with torch.no_grad():
        for bi in range(len(starts)):
            Ji = get(bi)
            rows = slice(starts[bi], starts[bi] + Ji.shape[0])
            for bj in range(bi, len(starts)):
                Jj = Ji if bj == bi else get(bj)
                cols = slice(starts[bj], starts[bj] + Jj.shape[0])
                K[rows, cols] = Ji @ Jj.t()
                if bj != bi:
                    K[cols, rows] = K[rows, cols].t()
            report(rows.stop / n, f"kernel rows {rows.stop}/{n}")
    return K


def resolve_implementation(model: nn.Module, implementation: str = "auto") -> str:
    """The implementation "auto" picks for this model (or the given one, checked)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    capabilities = capabilities_of(model)
    if capabilities.closed_form_ntk:
        return "closed_form"
    if capabilities.layerwise_ntk:
        return "layerwise"
    if capabilities.structured_ntk:
        return "structured"
    return "jacobian"


def ntk(
    model: nn.Module,
    X: torch.Tensor,
    *,
    implementation: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Empirical NTK K [n, n] of z at X [n, *input_shape], in the parameters' dtype and device.

    progress(fraction, message) is called at most every 2 s by the long-running implementations.
    """
    with exact_float32():
        return _ntk(model, X, resolve_implementation(model, implementation), max_bytes, progress)


def _ntk(model: nn.Module, X: torch.Tensor, which: str, max_bytes: int, progress: Progress | None) -> torch.Tensor:
    if which == "closed_form":
        return ntk_closed_form(model, X, progress=progress)
    if which == "layerwise":
        return ntk_layerwise(model, X, progress=progress)
    if which == "structured":
        if not capabilities_of(model).structured_ntk:
            raise ValueError("structured needs a model with the capability structured_ntk (Conv2d and Linear layers)")
        return structured_ntk(model, X, max_bytes=max_bytes, progress=progress)
    return ntk_jacobian(model, X, max_bytes=max_bytes, progress=progress)


def ntk_diagonal(model: nn.Module, X: torch.Tensor, *, max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """diag(K) [n] = ‖∇θ z(x_i)‖², without forming the n × n matrix."""
    which = resolve_implementation(model)
    with torch.no_grad():
        if which == "closed_form" and len(linear_layers(model)) == 2:
            f = two_layer_features(model, X)
            e = (f["X"] * f["X"]).sum(1) + 1
            return (f["H"] ** 2).sum(1) + ((f["D"] * f["a"]) ** 2).sum(1) * e + 1
    if which in ("closed_form", "layerwise"):
        factors = layer_factors(model, X)
        with torch.no_grad():
            diagonal = torch.zeros((), dtype=factors[0][0].dtype, device=factors[0][0].device)
            for A, G in factors:
                diagonal = diagonal + (G * G).sum(1) * ((A * A).sum(1) + 1)
            return diagonal
    if which == "structured":
        return structured_ntk_diagonal(model, X)
    params, jac = _jacobian_fn(model)
    P = sum(v.numel() for v in params.values())
    Xd = X.to(dtype=_param_dtype(model), device=next(model.parameters()).device)
    block = max(1, max_bytes // (3 * P * Xd.element_size()))
    with torch.no_grad():
        return torch.cat([(jac(params, Xd[s : s + block]) ** 2).sum(1) for s in range(0, Xd.shape[0], block)])


__all__ = [
    "DEFAULT_MAX_BYTES",
    "IMPLEMENTATIONS",
    "activation_and_derivative",
    "layer_factors",
    "ntk",
    "ntk_closed_form",
    "ntk_diagonal",
    "ntk_jacobian",
    "ntk_layerwise",
    "resolve_implementation",
    "two_layer_features",
]
