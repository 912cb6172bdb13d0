"""Exact one-step prediction changes of convolutional stages (Conv2d → ReLU → 2×2 max-pool), by
propagating differences; the convolutional counterpart of the Linear primitives in propagation.py.

For a probe i the SGD step changes a Conv2d layer by ΔW_i = −s_i P_iᵀ G_i and Δb_i = −s_i Σ_p G_i(p),
with P_i [L, K] the im2col patches of the layer's input at x_i (K = C_in k_h k_w, L output positions)
and G_i [L, C_out] = ∂z/∂(its output). At an example x_j whose layer input moved from a_j by Δa_ij, the
output moves by exactly

    Δu_ij = conv(Δa_ij; W) + conv(a_j + Δa_ij; ΔW_i) + Δb_i,

two terms of size O(s) computed directly, never as the difference of two O(1) convolutions. The ReLU and
the 2×2 max-pool after it change the pooled value of a window by

    Δpool = max(−m, max_w (Δu_w + (u_w − m))),   m = max(0, max_w u_w) the old pooled value,

where u_w − m is 0 at the window's argmax: nothing O(1) cancels, so float32 carries the computation.

Pair differences of B probes at n examples are channels-last ([B, n, H, W, C]); `ConvReluPool` prepares
one stage at the examples (old pre-activations, u − m, −m) and maps input moves to pooled moves:

- input that does not move (the first layer): Δu = conv(a_j; ΔW_i) + Δb_i, one GEMM of the examples'
  patches (with a column of ones) with the B stacked [ΔW_i; Δb_i].
- small inputs (H W ≤ k_h k_w, e.g. 4 × 4 under a 5 × 5 kernel): conv(Δa; W) is one GEMM of all pairs with
  the layer's unrolled matrix [H W C_in, L C_out] (`unrolled`); conv(a'; ΔW_i) with a' = a + Δa is
  Σ_p ⟨P'_ij(q), P_i(p)⟩ (−s_i G_i(p)), the patch inner products read off the channel inner products
  C_ij(y, x) = ⟨a'_ij(y), a_i(x)⟩ by one GEMM with a 0/1 matrix (`diagonal_sums`): about a fifth of the
  cost of a convolution with a per-probe kernel, and no per-probe kernel is formed.
- larger inputs: probe by probe, one channels-last convolution of [Δa, a + Δa] (2 C_in channels) with
  [W, ΔW_i], over the n examples.

The outputs of the first two are laid out window-major ([B, n, 4, h w, C]: the four members of every
pool window in turn) so that the pool is a maximum over one dimension. Every term is O(s) or O(1)
with nothing subtracted, so each pair's result is exact to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from workers.compute.structured import conv_patches, layer_signals_of

T = TypeVar("T")


class LayerSignals(list[tuple[torch.Tensor, torch.Tensor]]):
    """`layer_signals`' per-layer (input, output gradient) pairs, a LayerFactors list that also keeps what
    a model derives from them once for all its blocks of probes (`memo`)."""

    def __init__(self, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(pairs)
        self._memo: dict[str, object] = {}

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """make(), computed on the first call with this key and kept as long as the signals are."""
        if key not in self._memo:
            self._memo[key] = make()
        return cast(T, self._memo[key])


def layer_signals(model: nn.Module, X: torch.Tensor) -> LayerSignals:
    """[(a_l, g_l)] per Conv2d and Linear layer, in registration order: the layer's input ([n, C, H, W]
    or [n, in]) and ∂(Σ z)/∂(its output) ([n, C_out, H', W'] or [n, out]), at X [n, ...] in the
    parameters' dtype."""
    _, inputs, gradients = layer_signals_of(model, X)
    return LayerSignals(zip(inputs, gradients, strict=True))


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """[..., C, H, W] → [..., H, W, C], contiguous."""
    return t.movedim(-3, -1).contiguous()


def window_order(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Flat positions (y W + x) of an H × W map in window-major order [4 (H // 2) (W // 2)]: member
    (dy, dx) of every 2×2 pool window, one member after the other, the windows in row-major order
    (an odd last row or column, which max_pool2d drops, is left out)."""
    y = 2 * torch.arange(height // 2, device=device)[:, None]
    x = 2 * torch.arange(width // 2, device=device)[None, :]
    return torch.stack([((y + dy) * width + x + dx).flatten() for dy in (0, 1) for dx in (0, 1)]).flatten()


def weight_step(
    layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ΔW [B, K, C_out], Δb [B, C_out]) of the probes' SGD steps: inputs a [B, C_in, H, W], output
    gradients g [B, C_out, H', W'], steps s [B]; ΔW in the order of `layer.weight[o].flatten()`."""
    G = g.flatten(2).transpose(1, 2)  # [B, L, C_out]
    dW = torch.bmm(conv_patches(layer, a).transpose(1, 2), G).mul_(-s[:, None, None])
    return dW, G.sum(1).mul_(-s[:, None])


def unrolled(layer: nn.Conv2d, height: int, width: int, columns: torch.Tensor) -> torch.Tensor:
    """The layer's weight as a matrix T [H W C_in, len(columns) C_out]: channels-last inputs [H, W, C_in]
    times T are the outputs (no bias) at the output positions `columns`, channels last."""
    c_in = layer.in_channels
    basis = torch.eye(height * width * c_in, dtype=layer.weight.dtype, device=layer.weight.device)
    images = basis.reshape(-1, height, width, c_in).permute(0, 3, 1, 2)
    out = F.conv2d(images, layer.weight, None, layer.stride, layer.padding, layer.dilation)
    return out.flatten(2)[:, :, columns].transpose(1, 2).reshape(basis.shape[0], -1)


def diagonal_sums(layer: nn.Conv2d, height: int, width: int, columns: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """D [H W · H W, len(columns) · L] (0/1): for the channel inner products C(y, x) of two inputs at
    input positions y and x, (C D)[(q, p)] = Σ_δ C(q + δ, p + δ) is the inner product of their im2col
    patches at output positions q (of `columns`) and p (all L)."""
    index = torch.arange(1, height * width + 1, dtype=torch.float64, device=like.device)
    patches = conv_patches(layer, index.reshape(1, 1, height, width))[0].round().long()  # [L, k²]: position + 1
    L, offsets = patches.shape
    q, p, offset = torch.meshgrid(
        torch.arange(columns.numel(), device=like.device),
        torch.arange(L, device=like.device),
        torch.arange(offsets, device=like.device),
        indexing="ij",
    )
    y, x = patches[columns[q], offset], patches[p, offset]
    valid = (y > 0) & (x > 0)
    rows = (y[valid] - 1) * (height * width) + (x[valid] - 1)
    D = torch.zeros((height * width) ** 2, columns.numel() * L, dtype=like.dtype, device=like.device)
    D.index_put_((rows, (q * L + p)[valid]), torch.ones_like(rows, dtype=like.dtype), accumulate=True)
    return D


class ConvReluPool:
    """A Conv2d layer, ReLU and 2×2 max-pool, prepared at the n examples: `__call__` maps the moves Δa of
    its input to those of its pooled output, for a block of probes.

    Output differences of the convolution are laid out window-major, [B, n, 4, h w, C_out] (the four
    members of each pool window in turn), so that pooling is a maximum over one dimension.
    """

    def __init__(self, layer: nn.Conv2d, a: torch.Tensor, *, moves: bool) -> None:
        """a [n, C_in, H, W]: the layer's input at the examples; moves: whether it moves with the step."""
        self.layer = layer
        n, _, self.height, self.width = a.shape
        u = F.conv2d(a, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
        h, w = u.shape[2] // 2, u.shape[3] // 2
        self.pooled = (h, w)
        self.a = channels_last(a)  # [n, H, W, C_in]
        kh, kw = layer.kernel_size
        self.dense = moves and self.height * self.width <= kh * kw
        self.direct = moves and not self.dense
        if self.direct:  # the pairs' outputs stay channels-last: [n, 2h, 2w, C_out]
            u = channels_last(u)[:, : 2 * h, : 2 * w]
            self.neg_max = u.reshape(n, h, 2, w, 2, -1).amax(dim=(2, 4)).clamp_min_(0).neg_()  # −m [n, h, w, C_out]
            self.shift = u + self.neg_max.repeat_interleave(2, 1).repeat_interleave(2, 2)
            return
        self.columns = window_order(u.shape[2], u.shape[3], a.device)
        u = u.flatten(2)[:, :, self.columns].transpose(1, 2).reshape(n, 4, h * w, -1)  # [n, 4, h w, C_out]
        self.neg_max = u.amax(1).clamp_min_(0).neg_()  # −m [n, h w, C_out]: minus the old pooled values
        shift = u + self.neg_max[:, None]  # u − m [n, 4, h w, C_out]: 0 at each window's argmax
        if self.dense:
            self.shift = shift
            self.T = unrolled(layer, self.height, self.width, self.columns)
            self.D = diagonal_sums(layer, self.height, self.width, self.columns, u)
        else:  # the input does not move: per pool-window member, [patches, 1 (the bias), u − m] of every example
            patches = conv_patches(layer, a)[:, self.columns].view(n, 4, h * w, -1)
            ones = torch.ones_like(patches[:, 0, :, :1])
            self.member_patches = [  # [n h w, K + 1 + C_out] each
                torch.cat([patches[:, m], ones, shift[:, m]], 2).view(n * h * w, -1) for m in range(4)
            ]
            self.identity = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)

    def __call__(
        self, da: torch.Tensor | None, a_probe: torch.Tensor, g_probe: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """Δ of the pooled output [B, n, h, w, C_out] for input moves da [B, n, H, W, C_in] (None: the
        input does not move), after the steps s [B] of probes with inputs a_probe [B, C_in, H, W] and
        output gradients g_probe [B, C_out, H', W']."""
        B, n = s.shape[0], self.a.shape[0]
        if da is None:
            return self._fixed_input(a_probe, g_probe, s)
        if self.direct:
            return self._direct(da, a_probe, g_probe, s)
        du = self._dense_difference(da, a_probe, g_probe, s).view(B, n, 4, -1, self.layer.out_channels)
        du += self.shift
        pooled = du.amax(2)
        torch.maximum(pooled, self.neg_max, out=pooled)
        return pooled.view(B, n, *self.pooled, -1)

    def _fixed_input(self, a_probe: torch.Tensor, g_probe: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Pooled moves [B, n, h, w, C_out] of a stage whose input does not move: per pool-window member one
        GEMM of [patches, 1, u − m] with [ΔW_i; Δb_i; I] for all B probes side by side, giving
        u − m + conv(a; ΔW_i) + Δb_i ([n h w, B C_out]), folded into a running maximum: no
        [n, 4, h w] intermediate, and no separate pass adding u − m."""
        dW, db = weight_step(self.layer, a_probe, g_probe, s)  # [B, K, C], [B, C]
        B, n, C = s.shape[0], self.a.shape[0], dW.shape[-1]
        weights = torch.cat([dW, db[:, None], self.identity.expand(B, C, C)], 1)  # [B, K + 1 + C, C]
        weights = weights.transpose(0, 1).reshape(-1, B * C)
        pooled = torch.mm(self.member_patches[0], weights)
        for patches in self.member_patches[1:]:
            torch.maximum(pooled, torch.mm(patches, weights), out=pooled)
        pooled = pooled.view(n, -1, B, C)
        torch.maximum(pooled, self.neg_max[:, :, None], out=pooled)
        return pooled.permute(2, 0, 1, 3).reshape(B, n, *self.pooled, C)

    def _dense_difference(
        self, da: torch.Tensor, a_probe: torch.Tensor, g_probe: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """conv(Δa; W) [B, n 4 h w, C_out] by the unrolled matrix, plus conv(a + Δa; ΔW_i) + Δb_i by
        diagonal sums of channel inner products, contracted with −s_i G_i."""
        B, n = da.shape[:2]
        positions = self.height * self.width
        du = torch.mm(da.reshape(B * n, -1), self.T).view(B, -1, self.layer.out_channels)
        moved = (da + self.a).view(B, n * positions, -1)  # a + Δa, [B, n H W, C_in]
        C = torch.matmul(moved, a_probe.flatten(2))  # [B, n H W (y), H W (x)]
        M = torch.mm(C.view(B * n, positions * positions), self.D).view(B, du.shape[1], -1)  # [B, n 4 h w, L]
        G = g_probe.flatten(2).transpose(1, 2).mul(-s[:, None, None])  # −s_i G_i [B, L, C_out]
        du.baddbmm_(M, G)
        du += G.sum(1)[:, None]  # Δb_i
        return du

    def _direct(self, da: torch.Tensor, a_probe: torch.Tensor, g_probe: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Probe by probe, conv(Δa; W) + conv(a + Δa; ΔW_i) + Δb_i as one channels-last convolution of
        [Δa, a + Δa] (2 C_in channels) with [W, ΔW_i], then the ReLU and pool; [B, n, h, w, C_out]."""
        layer = self.layer
        h, w = self.pooled
        stacked = torch.cat([da, da + self.a], -1)  # [B, n, H, W, 2 C_in]
        dW, db = weight_step(layer, a_probe, g_probe, s)
        out = torch.empty((*da.shape[:2], h, w, layer.out_channels), dtype=da.dtype, device=da.device)
        for b in range(s.shape[0]):
            kernel = torch.cat([layer.weight, dW[b].t().reshape(layer.weight.shape)], 1)
            u = F.conv2d(stacked[b].permute(0, 3, 1, 2), kernel, db[b], layer.stride, layer.padding, layer.dilation)
            du = u.permute(0, 2, 3, 1)[:, : 2 * h, : 2 * w]  # [n, 2h, 2w, C_out], channels-last in memory
            du += self.shift
            members = [du[:, dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]
            torch.maximum(torch.maximum(members[0], members[1]), torch.maximum(members[2], members[3]), out=out[b])
            torch.maximum(out[b], self.neg_max, out=out[b])
        return out
