"""Pre-training of θ with plain mini-batch SGD (primary y=1, auxiliary y=0)."""

from __future__ import annotations

import math

import torch
from torch import nn

from workers.compute.progress import Progress, Throttle


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


def batch_loss(z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss over a batch: z [b] logits/predictions, y [b] targets → scalar."""
    if loss == "mse":
        return torch.mean((z - y) ** 2)
    if loss == "bce":
        return nn.functional.binary_cross_entropy_with_logits(z, y)
    raise ValueError(f"unknown loss {loss!r}")


def prediction(z: torch.Tensor, loss: str) -> torch.Tensor:
    """f from z: z itself for mse, sigmoid(z) for bce (any shape)."""
    return torch.sigmoid(z) if loss == "bce" else z


def train(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Train `model` in place: SGD, shuffled mini-batches of X [n, ...], targets y [n] in {0, 1}.

    Returns {"final_loss", "final_accuracy"} over the full set after training (f > 0.5 predicts 1).
    Raises TrainingDiverged if the loss becomes NaN or infinite.
    BCE uses the logits form (numerically the same as BCE on sigmoid(z), without overflow).
    """
    n = X.shape[0]
    y = y.to(device=X.device, dtype=X.dtype)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    report = Throttle(progress)
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(X.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            value = batch_loss(model(X[idx]), y[idx], loss)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(value)
            optimizer.step()
        # one host sync per epoch: the last batch's loss (divergence propagates to it)
        current = float(value.detach())
        if not math.isfinite(current):
            word = "nan" if math.isnan(current) else "inf"
            raise TrainingDiverged(
                f"training loss became {word} at epoch {epoch} of {epochs} with lr {lr:g}; "
                f"try a lower lr such as {lr / 10:g}"
            )
        report(epoch / epochs, f"epoch {epoch}/{epochs}, batch loss {current:.4g}")
    model.eval()
    with torch.no_grad():
        z = torch.cat([model(X[s : s + 4096]) for s in range(0, n, 4096)])
        final_loss = float(batch_loss(z, y, loss))
        accuracy = float(((prediction(z, loss) > 0.5).to(y.dtype) == y).to(torch.float64).mean())
    if not math.isfinite(final_loss):
        raise TrainingDiverged(
            f"training loss became {final_loss} at epoch {epochs} of {epochs} with lr {lr:g}; "
            f"try a lower lr such as {lr / 10:g}"
        )
    if progress is not None:
        progress(1.0, f"trained {epochs} epochs: loss {final_loss:.4g}, accuracy {accuracy:.3f}")
    return {"final_loss": final_loss, "final_accuracy": accuracy}
