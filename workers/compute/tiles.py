"""Tiles of a similarity matrix and exact k-nearest-neighbour lists merged across tiles.

A tile is the block S[I, J] of the post-processed similarity matrix, rows I the stepped-on examples and
columns J the observed ones. Every similarity the engine computes with a fixed θ is pairwise: S_ij
depends on θ, x_i and x_j only, its post-processing on S_ji, S_ii and S_jj. So the engine run on the
union of the tile's rows and columns gives the tile exactly, and its transpose block (J, I) with it:
`tile_similarity` returns both, post-processed as `similarity.postprocess` would the whole matrix.

`topk` keeps the k largest values of each row of a block (ties broken by the lower column), `merge_topk`
merges such partial lists into the exact top k of the full row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workers.compute import similarity
from workers.compute.functional import dfdz
from workers.compute.kinds import STEP_KINDS
from workers.compute.ntk import activation_and_derivative
from workers.compute.progress import Progress
from workers.compute.scalar_net import capabilities_of, linear_layers


def tile_similarity(
    model: nn.Module,
    X_rows: torch.Tensor,
    X_cols: torch.Tensor | None,
    *,
    kind: str,
    step: float,
    loss: str,
    symmetrize: bool,
    normalize: bool,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(S[I, J], S[J, I]) float32 tensors on the model's device of the post-processed similarity, rows
    X_rows [r, ...] and columns X_cols [c, ...]; X_cols None: a diagonal tile (the rows are the
    columns), then (S[I, I], None).

    The small-step limit of a 1- or 2-layer net (capability closed_form_ntk) takes the cross kernel
    K[I, J] directly (`_closed_form_cross`, r·c entries instead of the union's); anything else runs
    the engine on the union of rows and columns. The post-processing is `similarity.postprocess`'s
    float32 arithmetic, so a tile equals the same block of the whole matrix."""
    device = next(model.parameters()).device
    if X_cols is None:
        raw = similarity.similarity(model, X_rows, kind=kind, step=step, loss=loss, progress=progress)
        whole = similarity.postprocess(raw, symmetrize=symmetrize, normalize=normalize)
        return torch.from_numpy(whole).to(device), None
    r = X_rows.shape[0]
    if step == 0 and kind in STEP_KINDS and capabilities_of(model).closed_form_ntk:
        upper, lower, diag = _closed_form_cross(model, X_rows, X_cols.to(X_rows), kind=kind, loss=loss)
    else:
        union = torch.cat([X_rows, X_cols.to(X_rows)])
        union_raw = similarity.similarity_tensor(model, union, kind=kind, step=step, loss=loss, progress=progress)
        upper, lower, diag = union_raw[:r, r:], union_raw[r:, :r], torch.diagonal(union_raw)
    if symmetrize:
        upper = (upper + lower.t()).mul_(0.5)
        lower = upper.t()
    if normalize:
        d = diag.double()
        inv = torch.where(d > 0, 1 / torch.sqrt(torch.where(d > 0, d, torch.ones_like(d))), torch.zeros_like(d))
        inv = inv.float()
        upper = upper * (inv[:r, None] * inv[None, r:])
        lower = lower * (inv[r:, None] * inv[None, :r])
    return upper.contiguous(), lower.contiguous()


@torch.no_grad()
def _closed_form_cross(
    model: nn.Module, X_rows: torch.Tensor, X_cols: torch.Tensor, *, kind: str, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S[I, J], S[J, I], diag of S over rows then columns) float32 tensors of the small-step limit of a 1- or
    2-layer net: K_z[I, J] = H_I H_Jᵀ + (D_I a)(D_J a)ᵀ ⊙ (X_I X_Jᵀ + 1) + 1 (one layer: X_I X_Jᵀ + 1),
    its diagonal from the same per-example quantities, then the kind's `from_limit` (as `ntk` and
    `similarity._limit` compute the whole matrix)."""
    layers = linear_layers(model)

    def features(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        p = layers[0].weight
        Xf = X.reshape(X.shape[0], -1).to(device=p.device, dtype=p.dtype)
        if len(layers) == 1:
            return Xf, None, None
        first, second = layers
        U = torch.addmm(first.bias, Xf, first.weight.t())
        H, Da = activation_and_derivative(U, capabilities_of(model).activation, inplace=True)
        return Xf, H, Da.mul_(second.weight[0])

    (Xr, Hr, Dr), (Xc, Hc, Dc) = features(X_rows), features(X_cols)
    one = torch.ones((), dtype=Xr.dtype, device=Xr.device)
    K = torch.addmm(one, Xr, Xc.t())
    d_rows, d_cols = (Xr * Xr).sum(1) + 1, (Xc * Xc).sum(1) + 1
    if Hr is not None and Hc is not None and Dr is not None and Dc is not None:
        K.mul_(torch.mm(Dr, Dc.t())).add_(torch.mm(Hr, Hc.t())).add_(1)
        d_rows = (Hr * Hr).sum(1) + (Dr * Dr).sum(1) * d_rows + 1
        d_cols = (Hc * Hc).sum(1) + (Dc * Dc).sum(1) * d_cols + 1
    if loss == "bce":
        w_rows, w_cols = dfdz(model(X_rows.to(K)), loss), dfdz(model(X_cols.to(K)), loss)
        K.mul_(w_rows[:, None]).mul_(w_cols[None, :])
        d_rows, d_cols = d_rows * w_rows * w_rows, d_cols * w_cols * w_cols
    upper, lower = K, K.t()
    if kind == "relative":
        guard_rows = torch.where(d_rows.abs() > 0, d_rows.abs(), torch.full_like(d_rows, float("inf")))
        guard_cols = torch.where(d_cols.abs() > 0, d_cols.abs(), torch.full_like(d_cols, float("inf")))
        upper, lower = K.abs() / guard_rows[:, None], K.t().abs() / guard_cols[:, None]
        d_rows, d_cols = (d_rows.abs() > 0).to(K), (d_cols.abs() > 0).to(K)

    return upper.float(), lower.float(), torch.cat([d_rows, d_cols]).float()


def _order(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per row, the positions sorted by value descending, then column ascending."""
    return np.lexsort((columns, -values), axis=-1)


def _sorted_desc(values: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns, values) [r, m] reordered per row by value descending, then column ascending."""
    by_column = torch.argsort(columns, dim=1)
    columns, values = columns.gather(1, by_column), values.gather(1, by_column)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return columns.gather(1, by_value), values.gather(1, by_value)


@torch.no_grad()
def topk(
    values: np.ndarray | torch.Tensor, k: int, *, col_offset: int = 0, exclude: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(columns int32 [r, k'], values float32 [r, k']) of the k' = min(k, c) largest entries of each row of
    values [r, c], column j of the block being column col_offset + j of the matrix; sorted by value
    descending, ties by the lower column. exclude: row i's column exclude + i is left out (the example
    itself on a diagonal tile). A tensor is ranked on its own device (a GPU tile's [r, c] block never
    crosses to the host); only the [r, k'] lists come back."""
    if isinstance(values, np.ndarray):  # a copy of the block: a memory-mapped matrix may be read-only
        values = torch.from_numpy(np.array(values, dtype=np.float32))
    block = values.float()
    r, c = block.shape
    if exclude is not None and r and c:
        rows = torch.arange(r, device=block.device)
        keep = (exclude + rows >= 0) & (exclude + rows < c)
        block = block.clone()
        block[rows[keep], exclude + rows[keep]] = -torch.inf
        c_eff = c - 1
    else:
        c_eff = c
    k = max(0, min(k, c_eff))
    if k == 0:
        return np.zeros((r, 0), np.int32), np.zeros((r, 0), np.float32)
    if k < c:
        # The k largest by value; rows whose k-th value is tied beyond the cut are ranked whole (a stable
        # sort keeps the lower column first among equal values).
        picked, part = torch.topk(block, k, dim=1, sorted=False)
        threshold = picked.min(dim=1).values
        tied_total = (block == threshold[:, None]).sum(dim=1)
        tied_picked = (picked == threshold[:, None]).sum(dim=1)
        ambiguous = torch.nonzero(tied_total > tied_picked).flatten()
        if ambiguous.numel():
            full = torch.sort(block[ambiguous], dim=1, descending=True, stable=True).indices[:, :k]
            part[ambiguous] = full
            picked[ambiguous] = block[ambiguous].gather(1, full)
    else:
        part = torch.arange(c, device=block.device).expand(r, c)
        picked = block
    columns, best = _sorted_desc(picked, part)
    columns, best = columns[:, :k] + col_offset, best[:, :k]
    return columns.to("cpu", torch.int32).numpy(), best.to("cpu", torch.float32).numpy()


def neighbors(
    S: np.ndarray, k: int, *, exclude_self: bool, rows_per_block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """`topk` of every row of a whole matrix S [n_rows, n_cols], a block of rows at a time (the
    temporaries stay a few [rows_per_block, n_cols]); exclude_self: row i leaves out column i."""
    n_rows = S.shape[0]
    k = max(0, min(k, S.shape[1] - (1 if exclude_self else 0)))
    columns = np.empty((n_rows, k), np.int32)
    values = np.empty((n_rows, k), np.float32)
    for start in range(0, n_rows, rows_per_block):
        rows = slice(start, min(n_rows, start + rows_per_block))
        columns[rows], values[rows] = topk(S[rows], k, exclude=start if exclude_self else None)
    return columns, values


def merge_topk(columns: list[np.ndarray], values: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k (columns, values) of rows whose partial lists (from disjoint column sets) are given;
    ties broken by the lower column."""
    cols = np.concatenate(columns, axis=1)
    vals = np.concatenate(values, axis=1)
    order = _order(vals, cols)[:, :k]
    return np.take_along_axis(cols, order, axis=1).astype(np.int32), np.take_along_axis(vals, order, axis=1)


__all__ = ["merge_topk", "neighbors", "tile_similarity", "topk"]
