"""Structured empirical NTK of nets of Conv2d and Linear layers (capability structured_ntk).

K[i, j] = ⟨∇θ z(x_i), ∇θ z(x_j)⟩ = Σ_l K_l[i, j], one term per parametrised layer, read from one
forward and backward pass over a block of examples (hooks keep each layer's input and the gradient of
Σ z with respect to its output, which is per example since no parameter is shared across examples):

- Linear layer, input A [b, in], output gradient G [b, out]:  K_l = (A_i · A_j + 1) (G_i · G_j).
- Conv2d layer, im2col patches P_i [L, C_in k_h k_w] (L output positions) and backpropagated signals
  Δ_i [L, C_out]:  K_l = Σ_{p,q} ⟨P_i(p), P_j(q)⟩ ⟨Δ_i(p), Δ_j(q)⟩ + ⟨Σ_p Δ_i(p), Σ_q Δ_j(q)⟩.
  The first sum is ⟨Δ_iᵀ P_i, Δ_jᵀ P_j⟩ (Frobenius): contracting over positions first costs
  C_out C_in k_h k_w per pair against L² (C_in k_h k_w + C_out) for the position-pair Grams, so each
  example is reduced to F_i = [vec(Δ_iᵀ P_i), Σ_p Δ_i(p)] once (that layer's gradient, C_out C_in k² + C_out
  numbers) and the layer's term is the Gram F Fᵀ.

No n × P Jacobian is formed: a block of b examples holds the conv features F [b, Σ_conv (C_out C_in k² +
C_out)] and the Linear factors; the Linear layers' weight gradients (the bulk of P) never appear. Blocks
are computed once and kept while the budget allows (else recomputed per tile); only the upper block
triangle is multiplied and then mirrored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from workers.compute.progress import Progress, Throttle

_FEATURE_BYTES = 2 * 2**30  # features kept at once (all blocks, or two when they do not fit)
_WORK_BYTES = 256 * 2**20  # activations and patches of one block's forward and backward


@dataclass
class BlockFeatures:
    """The NTK factors of a block of b examples.

    conv: F [b, Σ_conv (C_out C_in k_h k_w + C_out)], each conv layer's per-example gradient, flattened;
    linear: [(A [b, in], G [b, out])] per Linear layer.
    """

    conv: torch.Tensor
    linear: list[tuple[torch.Tensor, torch.Tensor]]

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + sum(
            A.numel() * A.element_size() + G.numel() * G.element_size() for A, G in self.linear
        )


def parametrised_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    """The model's Conv2d and Linear layers, in registration order; ValueError for any other
    module that owns parameters, or a grouped or string-padded convolution."""
    layers: list[nn.Conv2d | nn.Linear] = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros":
                raise ValueError("structured NTK: only zero-padded, ungrouped convolutions")
            layers.append(module)
        elif isinstance(module, nn.Linear):
            layers.append(module)
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"structured NTK: unsupported parametrised module {type(module).__name__}")
    return layers


def conv_patches(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """im2col patches [b, L, C_in k_h k_w] of the input a [b, C_in, H, W] of `layer` (L output positions,
    patch entries in the order of `layer.weight[o].flatten()`), gathered from strided views (one copy)."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    if isinstance(layer.padding, str):
        raise ValueError("structured NTK: string padding is not supported")
    ph, pw = layer.padding
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    view = a.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]
    b, c, oh, ow = view.shape[:4]
    return view.permute(0, 2, 3, 1, 4, 5).reshape(b, oh * ow, c * kh * kw)


def block_features(model: nn.Module, X: torch.Tensor) -> BlockFeatures:
    """NTK factors of the examples X [b, *input_shape] (cast to the parameters' dtype and device)."""
    layers = parametrised_layers(model)
    p = next(model.parameters())
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def make_hook(k: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            inputs[k], outputs[k] = args[0].detach(), output

        return hook

    for k, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(make_hook(k)))
    try:
        with torch.enable_grad():
            z = model(X.to(device=p.device, dtype=p.dtype))
            # ∂(Σ z)/∂(each layer's output) only: the batch-summed weight gradients are never needed
            found = torch.autograd.grad(z.sum(), [outputs[k] for k in range(len(layers))])
    finally:
        for h in handles:
            h.remove()
    grads = {k: g.detach() for k, g in enumerate(found)}
    conv: list[torch.Tensor] = []
    linear: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for k, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                delta = grads[k].flatten(2)  # [b, C_out, L]
                weight_grad = torch.bmm(delta, conv_patches(layer, inputs[k]))  # [b, C_out, C_in k²]
                conv.append(weight_grad.flatten(1))
                if layer.bias is not None:
                    conv.append(delta.sum(2))
            else:
                A, G = inputs[k].flatten(1), grads[k].flatten(1)
                if layer.bias is None:
                    raise ValueError("structured NTK: Linear layers need a bias")
                linear.append((A, G))
    b = X.shape[0]
    features = torch.cat(conv, 1) if conv else torch.zeros((b, 0), dtype=p.dtype, device=p.device)
    return BlockFeatures(conv=features, linear=linear)


def block_gram(Fi: BlockFeatures, Fj: BlockFeatures) -> torch.Tensor:
    """K block [b_i, b_j] = F_i F_jᵀ + Σ_linear (A_i A_jᵀ + 1) ⊙ (G_i G_jᵀ)."""
    K = Fi.conv @ Fj.conv.t()
    one = torch.ones((), dtype=K.dtype, device=K.device)
    for (Ai, Gi), (Aj, Gj) in zip(Fi.linear, Fj.linear, strict=True):
        K.addcmul_(torch.addmm(one, Ai, Aj.t()), Gi @ Gj.t())
    return K


def _block_size(model: nn.Module, X: torch.Tensor, work_bytes: int) -> int:
    """Examples per block such that one block's forward, backward and patches stay near `work_bytes`."""
    sizes: list[int] = []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        sizes.append(output[0].numel() if output.dim() > 0 else 1)
        if isinstance(module, nn.Conv2d):
            sizes.append(conv_patches(module, args[0][:1]).numel())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(X[:1].to(device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    per_example = 4 * sum(sizes) * X.element_size()  # activations, their gradients, patches and features
    return max(1, min(X.shape[0], work_bytes // max(per_example, 1)))


def structured_ntk(
    model: nn.Module,
    X: torch.Tensor,
    *,
    max_bytes: int = _FEATURE_BYTES,
    work_bytes: int = _WORK_BYTES,
    progress: Progress | None = None,
) -> torch.Tensor:
    """K [n, n] of z at X [n, *input_shape] in the parameters' dtype and device (see the module docstring).

    Peak memory: the result, plus the blocks' features (all of them when they fit max_bytes, else two),
    plus one block's forward and backward (about work_bytes); never n × P.
    """
    p = next(model.parameters())
    n = X.shape[0]
    block = _block_size(model, X, work_bytes)
    first = block_features(model, X[:block])
    per_example = max(1, first.nbytes() // first.conv.shape[0])
    fitted = max(1, min(block, max_bytes // (2 * per_example)))
    starts = list(range(0, n, fitted))
    keep_all = len(starts) * fitted * per_example <= max_bytes
    cache: dict[int, BlockFeatures] = {0: first} if keep_all and fitted == block else {}
    block = fitted

    def get(k: int) -> BlockFeatures:
        if k in cache:
            return cache[k]
        features = block_features(model, X[starts[k] : starts[k] + block])
        if keep_all:
            cache[k] = features
        return features

    K = torch.empty((n, n), dtype=p.dtype, device=p.device)
    report = Throttle(progress, every=2.0)
    total = len(starts) * (len(starts) + 1) // 2
    done = 0
    with torch.no_grad():
        for bi in range(len(starts)):
            Fi = get(bi)
            rows = slice(starts[bi], starts[bi] + Fi.conv.shape[0])
            for bj in range(bi, len(starts)):
                Fj = Fi if bj == bi else get(bj)
                cols = slice(starts[bj], starts[bj] + Fj.conv.shape[0])
                K[rows, cols] = block_gram(Fi, Fj)
                if bj != bi:
                    K[cols, rows] = K[rows, cols].t()
                done += 1
                report(done / total, f"kernel blocks {done}/{total}")
    return K


def structured_ntk_diagonal(model: nn.Module, X: torch.Tensor, *, work_bytes: int = _WORK_BYTES) -> torch.Tensor:
    """diag(K) [n] = ‖∇θ z(x_i)‖², block by block."""
    block = _block_size(model, X, work_bytes)
    parts = []
    with torch.no_grad():
        for start in range(0, X.shape[0], block):
            f = block_features(model, X[start : start + block])
            d = (f.conv * f.conv).sum(1)
            for A, G in f.linear:
                d = d + ((A * A).sum(1) + 1) * (G * G).sum(1)
            parts.append(d)
    return torch.cat(parts)
