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
C_out)] and the Linear factors; the Linear layers' weight gradients (the bulk of P) never appear. Each conv
layer's Δᵀ P is formed a few examples at a time, so that their patches stay in cache, and copied into its
columns of F; a patch's entries follow the input's memory layout (the kernel offset outer and the channel
inner for a channels-last input), the same for every example, which leaves every ⟨F_i, F_j⟩ unchanged. On
the CPU the convolutions' inputs are made channels-last for the pass (faster convolutions and pooling).

When all the examples' features fit the budget they are computed once, block by block, into one matrix,
except the runs of columns that are zero over the first block (the gradients of channels that none of its
examples activates): those go to a second matrix, whose columns that stay zero over all the examples are
dropped. K's lower triangle is the Linear terms, by panels of columns, plus the two Grams (BLAS syrk on the
CPU: half the products of a full F Fᵀ), then mirrored. Otherwise the features are recomputed per tile of a
block pair, and only the upper block triangle is multiplied and then mirrored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from workers.compute.progress import Progress, Throttle

_FEATURE_BYTES = 2 * 2**30  # features kept at once (all blocks, or two when they do not fit)
_WORK_BYTES = 256 * 2**20  # activations and patches of one block's forward and backward
_PATCH_BYTES = 2 * 2**20  # im2col patches of the examples whose weight gradients are formed together
_PANEL = 256  # columns of K per product of the Linear terms, and rows per product off the CPU
_ZERO_RUN = 64  # fewest adjacent conv columns, zero over the first block, that are kept apart
_SYRK_ROWS = 4096  # rows of K per syrk call (one call between progress reports)


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


def layer_signals_of(
    model: nn.Module, X: torch.Tensor, *, channels_last: bool = False
) -> tuple[list[nn.Conv2d | nn.Linear], list[torch.Tensor], list[torch.Tensor]]:
    """(layers, inputs, gradients) per Conv2d and Linear layer (`parametrised_layers`): the layer's input
    at X [n, ...] (detached; cast to the parameters' dtype and device) and ∂(Σ z)/∂(its output) (not
    the batch-summed weight gradients). `channels_last`: convolutions run on channels-last inputs (faster
    on the CPU), so their recorded inputs are channels-last in memory."""
    layers = parametrised_layers(model)
    p = next(model.parameters())
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def make_hook(k: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            inputs[k], outputs[k] = args[0].detach(), output

        return hook

    def to_channels_last(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if args[0].dim() != 4:
            return None
        return (args[0].to(memory_format=torch.channels_last), *args[1:])

    for k, layer in enumerate(layers):
        if channels_last and isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_pre_hook(to_channels_last))
        handles.append(layer.register_forward_hook(make_hook(k)))
    try:
        with torch.enable_grad():
            z = model(X.to(device=p.device, dtype=p.dtype))
            found = torch.autograd.grad(z.sum(), [outputs[k] for k in range(len(layers))])
    finally:
        for h in handles:
            h.remove()
    return layers, [inputs[k] for k in range(len(layers))], [g.detach() for g in found]


def _patch_view(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """The strided view [b, C_in, out_h, out_w, k_h, k_w] of the (zero-padded) input a [b, C_in, H, W]."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    if isinstance(layer.padding, str):
        raise ValueError("structured NTK: string padding is not supported")
    ph, pw = layer.padding
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    return a.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]


def conv_patches(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """im2col patches [b, L, C_in k_h k_w] of the input a [b, C_in, H, W] of `layer` (L output positions,
    patch entries in the order of `layer.weight[o].flatten()`), gathered from strided views (one copy)."""
    view = _patch_view(layer, a)
    b, c, oh, ow, kh, kw = view.shape
    return view.permute(0, 2, 3, 1, 4, 5).reshape(b, oh * ow, c * kh * kw)


def _weight_gradients(
    layer: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor, out: torch.Tensor, channels_inner: bool
) -> None:
    """out[i] = Δ_iᵀ P_i [C_out, C_in k_h k_w] for the input a [b, C_in, H, W] and the signals delta
    [b, C_out, L]; patch entries ordered (c, k_h, k_w), or (k_h, k_w, c) when `channels_inner`. A few
    examples at a time: their patches (one copy from the strided view) stay in cache for the product, which
    goes to a contiguous buffer (a batched product into a strided `out` runs on one thread) copied to out."""
    view = _patch_view(layer, a)
    b, c, oh, ow, kh, kw = view.shape
    order = (0, 2, 3, 4, 5, 1) if channels_inner else (0, 2, 3, 1, 4, 5)
    patches = view.permute(order)
    step = max(1, _PATCH_BYTES // (oh * ow * c * kh * kw * a.element_size()))
    buffer = torch.empty((min(step, b), *out.shape[1:]), dtype=out.dtype, device=out.device)
    for s in range(0, b, step):
        chunk = patches[s : s + step]
        m = chunk.shape[0]
        torch.bmm(delta[s : s + m], chunk.reshape(m, oh * ow, c * kh * kw), out=buffer[:m])
        out[s : s + m] = buffer[:m]


def conv_feature_width(model: nn.Module) -> int:
    """Columns of BlockFeatures.conv: Σ_conv (C_out C_in k_h k_w + C_out if biased)."""
    return sum(
        layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        for layer in parametrised_layers(model)
        if isinstance(layer, nn.Conv2d)
    )


def block_features(model: nn.Module, X: torch.Tensor, out: torch.Tensor | None = None) -> BlockFeatures:
    """NTK factors of the examples X [b, *input_shape] (cast to the parameters' dtype and device); the
    conv features are written into `out` [b, conv_feature_width(model)] when given."""
    p = next(model.parameters())
    b = X.shape[0]
    channels_last = p.device.type == "cpu"
    layers, inputs, found = layer_signals_of(model, X, channels_last=channels_last)
    features = torch.empty((b, conv_feature_width(model)), dtype=p.dtype, device=p.device) if out is None else out
    linear: list[tuple[torch.Tensor, torch.Tensor]] = []
    column = 0
    with torch.no_grad():
        for k, layer in enumerate(layers):
            grad = found[k]
            if isinstance(layer, nn.Conv2d):
                delta = grad.flatten(2)  # [b, C_out, L]
                c_out = layer.out_channels
                size = layer.weight.numel()
                target = features[:, column : column + size].view(b, c_out, size // c_out)
                _weight_gradients(layer, inputs[k], delta, target, channels_inner=channels_last)
                column += size
                if layer.bias is not None:
                    features[:, column : column + c_out] = delta.sum(2)
                    column += c_out
            else:
                if layer.bias is None:
                    raise ValueError("structured NTK: Linear layers need a bias")
                linear.append((inputs[k].flatten(1), grad.flatten(1)))
    return BlockFeatures(conv=features, linear=linear)


def block_gram(Fi: BlockFeatures, Fj: BlockFeatures, out: torch.Tensor | None = None) -> torch.Tensor:
    """K block [b_i, b_j] = F_i F_jᵀ + Σ_linear (A_i A_jᵀ + 1) ⊙ (G_i G_jᵀ), into `out` when given."""
    K = torch.mm(Fi.conv, Fj.conv.t(), out=out) if out is not None else Fi.conv @ Fj.conv.t()
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


@dataclass
class AllFeatures:
    """The NTK factors of all n examples: the conv features' columns split in `parts` [n, w_k]
    (K = Σ_k part_k part_kᵀ + the Linear terms), and the Linear factors as in BlockFeatures."""

    parts: list[torch.Tensor]
    linear: list[tuple[torch.Tensor, torch.Tensor]]


def _column_runs(zero: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[kept, apart]: runs [a, b) of the columns, `apart` the runs of at least _ZERO_RUN columns where
    `zero` [D] holds (whole channels' gradients), `kept` the runs between them."""
    flag = torch.cat([zero.new_zeros(1), zero, zero.new_zeros(1)]).to(torch.int8)
    step = flag.diff()
    starts, stops = (step == 1).nonzero().flatten().tolist(), (step == -1).nonzero().flatten().tolist()
    apart = [(a, b) for a, b in zip(starts, stops, strict=True) if b - a >= _ZERO_RUN]
    kept, at = [], 0
    for a, b in apart:
        if a > at:
            kept.append((at, a))
        at = b
    if at < zero.numel() or not kept:
        kept.append((at, zero.numel()))
    return [kept, apart]


def _all_features(model: nn.Module, X: torch.Tensor, block: int) -> AllFeatures:
    """The factors of all n examples, `block` examples at a time. The runs of conv columns that are zero
    over the first block (the gradients of channels that none of its examples activates) are kept apart,
    and those of their columns that are zero over all the examples are dropped: the Gram skips them."""
    p = next(model.parameters())
    n = X.shape[0]
    buffer = torch.empty((min(block, n), conv_feature_width(model)), dtype=p.dtype, device=p.device)
    first = block_features(model, X[:block], out=buffer)
    runs = _column_runs(first.conv.eq(0).all(0))
    widths = [sum(b - a for a, b in part_runs) for part_runs in runs]
    parts = [torch.empty((n, w), dtype=p.dtype, device=p.device) for w in widths]
    linear_parts = []
    for start in range(0, n, block):
        f = first if start == 0 else block_features(model, X[start : start + block], out=buffer[: n - start])
        rows = slice(start, start + f.conv.shape[0])
        for part, part_runs in zip(parts, runs, strict=True):
            at = 0
            for a, b in part_runs:
                part[rows, at : at + b - a] = f.conv[:, a:b]
                at += b - a
        linear_parts.append(f.linear)
    linear = [
        (torch.cat([part[k][0] for part in linear_parts]), torch.cat([part[k][1] for part in linear_parts]))
        for k in range(len(linear_parts[0]))
    ]
    parts[1] = parts[1][:, parts[1].ne(0).any(0)]
    return AllFeatures(parts=[part for part in parts if part.shape[1]], linear=linear)


def _syrk_lower(Fi: torch.Tensor, K: torch.Tensor) -> bool:
    """Adds to the lower triangle (diagonal included) of K [b, b] that of Fi Fiᵀ by BLAS syrk, half the
    products of a full multiplication (scipy's BLAS, at torch's thread count); False, K untouched, off the
    CPU or outside float32 and float64."""
    if Fi.device.type != "cpu" or Fi.dtype not in (torch.float32, torch.float64) or Fi.shape[1] == 0:
        return False
    try:
        from scipy.linalg import blas
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    syrk = blas.ssyrk if Fi.dtype == torch.float32 else blas.dsyrk
    c = K.numpy().T  # column-major: its upper triangle is K's lower one
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        result = syrk(1.0, Fi.contiguous().numpy().T, beta=1.0, c=c, trans=1, lower=0, overwrite_c=1)
    if not np.shares_memory(result, c):
        K.copy_(torch.from_numpy(result).t())
    return True


def _symmetric_gram(every: AllFeatures, K: torch.Tensor, report: Throttle) -> None:
    """K [n, n] of the factors of all n examples: the Linear terms of the lower part by panels of columns,
    plus the conv Grams' lower triangle by groups of rows (each diagonal block by syrk where available,
    else a full product; the block below it by one product), then mirrored above the diagonal. The
    Linear terms come first: torch's threads then never run beside BLAS threads still spinning after syrk."""
    n = K.shape[0]
    one = torch.ones((), dtype=K.dtype, device=K.device)
    for start in range(0, n, _PANEL):
        stop = min(n, start + _PANEL)
        lower = K[start:, start:stop]
        if not every.linear:
            lower.zero_()
        for k, (A, G) in enumerate(every.linear):
            inputs, grads = torch.addmm(one, A[start:], A[start:stop].t()), G[start:] @ G[start:stop].t()
            if k:
                lower.addcmul_(inputs, grads)
            else:
                torch.mul(inputs, grads, out=lower)
    group = _SYRK_ROWS if K.device.type == "cpu" else _PANEL
    for start in range(0, n, group):
        stop = min(n, start + group)
        diagonal, below = K[start:stop, start:stop], K[stop:, start:stop]
        for F_ in every.parts:
            rows = F_[start:stop]
            if not _syrk_lower(rows, diagonal):
                diagonal.addmm_(rows, rows.t())
            below.addmm_(F_[stop:], rows.t())
        report(1 - (1 - stop / n) ** 2, f"kernel rows {stop}/{n}")
    for start in range(0, n, _PANEL):
        stop = min(n, start + _PANEL)
        diagonal = K[start:stop, start:stop]
        diagonal.copy_(diagonal.tril() + diagonal.tril(-1).t())
        K[start:stop, stop:] = K[stop:, start:stop].t()


def structured_ntk(
    model: nn.Module,
    X: torch.Tensor,
    *,
    max_bytes: int = _FEATURE_BYTES,
    work_bytes: int = _WORK_BYTES,
    progress: Progress | None = None,
) -> torch.Tensor:
    """K [n, n] of z at X [n, *input_shape] in the parameters' dtype and device (see the module docstring).

    Peak memory: the result, plus the features (all of them and one block's when they fit max_bytes, else
    two blocks'), plus one block's forward and backward (about work_bytes); never n × P.
    """
    p = next(model.parameters())
    n = X.shape[0]
    linear = [layer for layer in parametrised_layers(model) if isinstance(layer, nn.Linear)]
    numbers = conv_feature_width(model) + sum(layer.in_features + layer.out_features for layer in linear)
    per_example = max(1, numbers * p.element_size())
    block = _block_size(model, X, work_bytes)
    K = torch.empty((n, n), dtype=p.dtype, device=p.device)
    report = Throttle(progress, every=2.0)
    with torch.no_grad():
        if n * per_example <= max_bytes:
            _symmetric_gram(_all_features(model, X, block), K, report)
            return K
        block = max(1, min(block, max_bytes // (2 * per_example)))
        tiles = list(range(0, n, block))
        total = len(tiles) * (len(tiles) + 1) // 2
        done = 0
        for bi, si in enumerate(tiles):
            Fi = block_features(model, X[si : si + block])
            rows = slice(si, si + Fi.conv.shape[0])
            for sj in tiles[bi:]:
                Fj = Fi if sj == si else block_features(model, X[sj : sj + block])
                cols = slice(sj, sj + Fj.conv.shape[0])
                block_gram(Fi, Fj, out=K[rows, cols])
                if sj != si:
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
