import copy

import numpy as np
import pytest
import torch

from service.contract.spec import CNNModel, LinearModel, MLPModel, ResMLPModel
from tests.factories import example_loss, normalised_row, one_step_reference, output_of, relative_error
from workers.compute import similarity as sim
from workers.compute.models import build_model
from workers.compute.ntk import ntk, two_layer_features
from workers.compute.similarity import postprocess, similarity

N, D = 12, 16


def data(n=N, d=D, seed=1):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) * 2 - 1


FAST = [
    MLPModel(width=64),
    LinearModel(arch="linear", depth=2, width=8),
    LinearModel(arch="linear", depth=1, width=1),
]
GENERIC = [
    MLPModel(width=16, activation="tanh"),
    MLPModel(width=16, activation="gelu"),
    MLPModel(depth=3, width=8),
    ResMLPModel(arch="resmlp", width=8),
]


@pytest.mark.parametrize("spec", FAST + GENERIC, ids=lambda s: s.model_dump_json())
@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_exact_step_matches_float64_loop(spec, loss, kind):
    model, X = build_model(spec, [D], seed=0), data()
    before = [p.detach().clone() for p in model.parameters()]
    for eta in (1e-6, 1e-3, 1e-1):
        S = similarity(model, X, kind=kind, step=eta, loss=loss)
        assert S.dtype == np.float32 and S.shape == (N, N)
        assert relative_error(S, one_step_reference(model, X, eta, loss, kind)) < 1e-4, eta
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_cnn_exact_step_matches_float64_loop():
    model, X = build_model(CNNModel(arch="cnn"), [64], seed=0), data(6, 64)
    for loss in ("mse", "bce"):
        S = similarity(model, X, kind="kernelized", step=1e-3, loss=loss)
        assert relative_error(S, one_step_reference(model, X, 1e-3, loss, "kernelized")) < 1e-4


def test_relu_crossings_matter_and_are_corrected():
    """At η = 0.1 the linear-in-pattern part alone is off by far more than our tolerance."""
    model, X = build_model(MLPModel(width=64), [D], seed=0), data()
    eta = 0.1
    R = one_step_reference(model, X, eta, "mse", "kernelized")
    z = sim._z64(model, X)
    s = (eta * 2 * (z - 1)).float()
    with torch.no_grad():
        f = two_layer_features(model, X)
        Da = f["D"] * f["a"]
        E = f["X"] @ f["X"].T + 1
        no_crossing = (E * ((Da - s[:, None] * f["H"]) @ Da.T) + f["H"] @ f["H"].T + 1).numpy()
    assert relative_error(no_crossing, R) > 1e-2
    assert relative_error(similarity(model, X, kind="kernelized", step=eta, loss="mse"), R) < 1e-4


@pytest.mark.parametrize("spec", [MLPModel(width=64), ResMLPModel(arch="resmlp", width=8)], ids=lambda s: s.arch)
@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_small_step_approaches_limit(spec, loss, kind):
    model, X = build_model(spec, [D], seed=0), data()
    limit = similarity(model, X, kind=kind, step=0, loss=loss)
    assert relative_error(similarity(model, X, kind=kind, step=1e-5, loss=loss), limit) < 1e-3
    assert relative_error(similarity(model, X, kind=kind, step=0.3, loss=loss), limit) > 1e-3  # finite η differs


def test_limit_matches_ntk_formulas():
    model, X = build_model(MLPModel(width=32), [D], seed=0), data()
    K = ntk(model.double(), X.double()).numpy()
    model.float()
    with torch.no_grad():
        f = torch.sigmoid(model(X)).double().numpy()
    w = f * (1 - f)
    Kf = w[:, None] * w[None, :] * K
    assert relative_error(similarity(model, X, kind="kernelized", step=0, loss="mse"), K) < 1e-5
    assert relative_error(similarity(model, X, kind="kernelized", step=0, loss="bce"), Kf) < 1e-5
    rel = similarity(model, X, kind="relative", step=0, loss="bce")
    assert relative_error(rel, np.abs(Kf) / np.diag(Kf)[:, None]) < 1e-5


def test_naive_float32_differencing_is_noisy_but_ours_is_not():
    """Why the exact path exists: f(θ_i) − f(θ) in float32 at η = 1e-6 loses most digits."""
    model, X = build_model(MLPModel(width=64), [D], seed=0), data()
    eta = 1e-6
    R = one_step_reference(model, X, eta, "mse", "kernelized")
    naive = one_step_reference(model, X, eta, "mse", "kernelized", dtype=torch.float32)
    assert relative_error(naive, R) > 1e-3  # > 10× our tolerance (typically 3e-3 here, worse when |z| is large)
    assert relative_error(similarity(model, X, kind="kernelized", step=eta, loss="mse"), R) < 1e-5


@pytest.mark.parametrize("spec", [MLPModel(width=32), ResMLPModel(arch="resmlp", width=8)], ids=lambda s: s.arch)
@pytest.mark.parametrize("step", [0, 1e-2])
def test_permuting_examples_permutes_S(spec, step):
    model, X = build_model(spec, [D], seed=0), data()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0)).numpy()
    S = similarity(model, X, kind="kernelized", step=step, loss="bce")
    Sp = similarity(model, X[perm], kind="kernelized", step=step, loss="bce")
    assert relative_error(Sp, S[perm][:, perm]) < 1e-5


@pytest.mark.parametrize(
    "spec",
    [LinearModel(arch="linear", depth=2, width=4), ResMLPModel(arch="resmlp", width=8)],
    ids=lambda s: s.arch,
)
def test_zero_loss_derivative_uses_limit_row(spec):
    model, X = build_model(spec, [D], seed=0), data()
    last = list(model.modules())[-1]
    with torch.no_grad():  # z ≡ 1 = y: every probe step is zero for mse
        last.weight.zero_()
        last.bias.fill_(1.0)
    S = similarity(model, X, kind="kernelized", step=0.1, loss="mse")
    assert np.isfinite(S).all()
    assert relative_error(S, ntk(model.double(), X.double()).numpy()) < 1e-6


def trajectory_by_hand(model, X, X_aux, eta, loss, kind, seed):
    m = copy.deepcopy(model).double()
    data_all = torch.cat([X, X_aux]).double()
    y = torch.cat([torch.ones(len(X)), torch.zeros(len(X_aux))]).double()
    order = torch.randperm(len(data_all), generator=torch.Generator().manual_seed(seed)).tolist()
    S = np.zeros((len(X), len(X)))
    for k in order:
        with torch.no_grad():
            f0 = output_of(m(X.double()), loss)
        m.zero_grad()
        example_loss(m(data_all[k : k + 1]), y[k : k + 1], loss).backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= eta * p.grad
            f1 = output_of(m(X.double()), loss)
        if k < len(X):
            S[k] = normalised_row(f1 - f0, k, f0[k], eta, loss, kind).numpy()
    return S


@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_trajectory_matches_hand_loop(loss, kind):
    model = build_model(MLPModel(width=16), [D], seed=0)
    X, X_aux = data(6), data(4, seed=2)
    before = [p.detach().clone() for p in model.parameters()]
    S = similarity(model, X, kind=kind, step=0.2, loss=loss, schedule="trajectory", X_aux=X_aux, seed=5)
    assert relative_error(S, trajectory_by_hand(model, X, X_aux, 0.2, loss, kind, 5)) < 1e-5
    fixed = similarity(model, X, kind=kind, step=0.2, loss=loss)
    assert relative_error(S, fixed) > 1e-3  # θ really is carried forward
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_activation_similarity_and_errors():
    model, X = build_model(MLPModel(width=32), [D], seed=0), data()
    S = similarity(model, X, kind="activation", step=0, loss="mse")
    with torch.no_grad():
        P = (model.layers[0](X) > 0).double().numpy()
    cos = P @ P.T / np.sqrt(np.outer(P.sum(1), P.sum(1)))
    assert np.allclose(S, cos, atol=1e-6) and np.allclose(np.diag(S), 1)
    with pytest.raises(ValueError):
        similarity(
            build_model(CNNModel(arch="cnn"), [64], seed=0),
            data(3, 64),
            kind="activation",
            step=0,
            loss="mse",
        )
    with pytest.raises(ValueError):
        similarity(model, X, kind="kernelized", step=0, loss="mse", schedule="trajectory")


def test_postprocess_and_progress():
    S = np.array([[4.0, 1.0], [3.0, 1.0]])
    np.testing.assert_allclose(postprocess(S, symmetrize=True, normalize=False), [[4, 2], [2, 1]])
    np.testing.assert_allclose(postprocess(S, symmetrize=True, normalize=True), [[1, 1], [1, 1]])
    np.testing.assert_allclose(postprocess(S, symmetrize=False, normalize=True), [[1, 0.5], [1.5, 1]])
    calls = []
    model = build_model(ResMLPModel(arch="resmlp", width=8), [D], seed=0)
    similarity(model, data(), kind="relative", step=1e-3, loss="mse", progress=lambda f, m: calls.append(f))
    assert calls[-1] == 1.0


@pytest.mark.parametrize(
    "spec",
    [
        MLPModel(depth=3, width=24, activation="relu"),
        MLPModel(depth=2, width=24, activation="tanh"),
        MLPModel(depth=2, width=24, activation="sigmoid"),
        MLPModel(depth=3, width=24, activation="gelu"),
        LinearModel(arch="linear", depth=3, width=12),
        ResMLPModel(arch="resmlp", width=24),
    ],
    ids=lambda s: s.model_dump_json(),
)
@pytest.mark.parametrize("eta", [1e-6, 1e-1])
def test_difference_propagation_in_float32_equals_the_float64_torch_func_path(spec, eta):
    from workers.compute.similarity import _generic_rows, _propagated_rows, _z64

    model = build_model(spec, [10], seed=2)
    X = torch.randn(15, 10, generator=torch.Generator().manual_seed(3))
    z = _z64(model, X)
    s = eta * 2 * (z - 1)
    s[4] = 0.0  # a probe whose loss derivative vanishes: its row is the limit row
    expected = _generic_rows(model, X, s, z, None)
    got = _propagated_rows(model, X, s).double()
    assert (got - expected).abs().max() / expected.abs().max() < 1e-5


def test_the_exact_step_reports_progress_in_order(monkeypatch):
    from workers.compute import progress as progress_module

    monkeypatch.setattr(progress_module.time, "monotonic", iter(range(0, 10**6, 5)).__next__)  # 5 s per call
    monkeypatch.setattr(sim, "_SEGMENT", 64)  # many crossing segments
    model = build_model(MLPModel(width=64), [10], seed=0)
    X = torch.randn(40, 10, generator=torch.Generator().manual_seed(0))
    reports = []
    similarity(model, X, kind="kernelized", step=0.5, loss="mse", progress=lambda f, m: reports.append((f, m)))
    fractions = [f for f, _ in reports]
    assert any("crossings" in m for _, m in reports), reports
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_rows_become_the_similarity_in_place_as_the_float64_formula_says(kind, loss, monkeypatch):
    import workers.compute.functional as functional

    monkeypatch.setattr(functional, "_ROW_BLOCK_ENTRIES", 40)  # several row blocks
    g = torch.Generator().manual_seed(4)
    n = 13
    Q = torch.randn(n, n, generator=g)
    z = torch.randn(n, generator=g, dtype=torch.float64)
    s = torch.randn(n, generator=g, dtype=torch.float64) * 0.3
    s[3] = 0.0  # a row at the limit
    Q64 = Q.double()
    if loss == "bce":  # Δf / (−s_i) from the sigmoid's own difference, in float64
        f = torch.sigmoid(z)
        R = (torch.sigmoid(z[None, :] - s[:, None] * Q64) - f[None, :]) / (-s[:, None]).where(s[:, None] != 0, 1.0)
        R[3] = (f * (1 - f))[None, :] * Q64[3]
        w = f * (1 - f)
    else:
        R, w = Q64, torch.ones(n, dtype=torch.float64)
    expected = (w[:, None] * R) if kind == "kernelized" else R.abs() / R.diagonal().abs()[:, None]
    pointer = Q.data_ptr()
    got = functional.rows_to_similarity(Q, z, s, kind=kind, loss=loss)
    assert got.data_ptr() == pointer  # no n × n copy
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
