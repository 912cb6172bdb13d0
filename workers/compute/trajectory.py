"""The SGD-trajectory schedule (Algorithm 1): one pass of single-example SGD, a similarity row per
primary example from the step taken at it."""

from __future__ import annotations

import torch
from torch import nn

from workers.compute.functional import (
    dloss_dz,
    float64_params,
    kernel_rows,
    per_example_grads,
    predict,
    rows_to_similarity,
)
from workers.compute.progress import Progress, Throttle


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
