import pytest
import torch

from service.contract.spec import LinearModel, MLPModel
from workers.compute.models import build_model
from workers.compute.training import TrainingDiverged, batch_loss, train


def toy(n=80):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 2, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).float()
    return X, y


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_loss_goes_down_on_separable_set(loss):
    X, y = toy()
    model = build_model(MLPModel(width=32), [2], seed=0)
    with torch.no_grad():
        before = float(batch_loss(model(X), y, loss))
    calls = []
    out = train(model, X, y, loss=loss, epochs=60, lr=0.1, batch_size=10, seed=0, progress=lambda f, m: calls.append(f))
    assert out["final_loss"] < 0.5 * before
    assert out["final_accuracy"] >= 0.9
    assert calls and calls[-1] == 1.0


def test_training_is_deterministic():
    X, y = toy()
    results = []
    for _ in range(2):
        model = build_model(MLPModel(width=8), [2], seed=0)
        train(model, X, y, loss="mse", epochs=3, lr=0.05, batch_size=7, seed=3)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_huge_lr_diverges_with_epoch_in_message():
    X, y = toy()
    X = X * 10
    model = build_model(LinearModel(arch="linear", depth=2, width=16), [2], seed=0)
    with pytest.raises(TrainingDiverged, match=r"at epoch \d+ of 50 with lr 5; try a lower lr such as 0.5"):
        train(model, X, y, loss="mse", epochs=50, lr=5.0, batch_size=10, seed=0)
    assert issubclass(TrainingDiverged, ValueError)
