"""The CNN's exact one-step similarity by difference propagation (workers/compute/convprop.py) against
float64 loops of perturbed forward passes: small and large steps (ReLUs flipping, pool argmaxes moving),
both step kinds, both losses, 8 × 8 and 28 × 28 images."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from service.contract.spec import CNNModel
from tests.factories import relative_error
from workers.compute import propagation
from workers.compute import similarity as sim
from workers.compute.convprop import ConvReluPool
from workers.compute.functional import dloss_dz
from workers.compute.models import build_model
from workers.compute.ntk import ntk
from workers.compute.similarity import _propagated_rows, similarity

SHAPES = {"8x8": ([64], 16), "28x28": ([1, 28, 28], 12)}
STEPS = (1e-3, 0.1, 1.0)


def images(shape, n, seed=3):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 0.5


def stepped_params(model64, x, s_i):
    """θ − s_i ∇θ z(x) in float64, name → tensor."""
    params = dict(model64.named_parameters())
    grads = torch.autograd.grad(model64(x[None])[0], list(params.values()))
    return {k: (p - s_i * g).detach() for (k, p), g in zip(params.items(), grads, strict=True)}


def reference_dz(model, X, s):
    """Δz [n, n] float64: z(x_j; θ − s_i ∇z(x_i)) − z(x_j; θ), one perturbed forward pass per probe."""
    model64 = build_like(model).double()
    X64 = X.double()
    with torch.no_grad():
        z = model64(X64)
    rows = []
    for i in range(X.shape[0]):
        params = stepped_params(model64, X64[i], float(s[i]))
        with torch.no_grad():
            rows.append(functional_call(model64, params, (X64,)) - z)
    return torch.stack(rows), z


def build_like(model):
    copy = build_model(model.spec, list(model.image), seed=0)
    copy.load_state_dict(model.state_dict())
    return copy


def reference_similarities(model, X, *, step, loss):
    """{kind: S [n, n]} of both step kinds from the float64 loop (f = z for mse, sigmoid(z) for bce)."""
    with torch.no_grad():
        z = build_like(model).double()(X.double())
    dz, z = reference_dz(model, X, step * dloss_dz(z, 1.0, loss))
    f = torch.sigmoid if loss == "bce" else (lambda t: t)
    df = f(z[None, :] + dz) - f(z)[None, :]
    dl_df = 2 * (z - 1) if loss == "mse" else (f(z) - 1) / (f(z) * (1 - f(z)))
    return {
        "kernelized": (df / (-step * dl_df[:, None])).numpy(),
        "relative": (df.abs() / df.diagonal().abs()[:, None]).numpy(),
    }


def cnn_case(name):
    """(a CNN, its images) of the SHAPES entry `name`."""
    shape, n = SHAPES[name]
    return build_model(CNNModel(arch="cnn"), shape, seed=2), images(shape, n)


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_the_cnn_exact_step_matches_the_float64_loop(name, loss, monkeypatch):
    model, X = cnn_case(name)
    monkeypatch.setattr(sim, "_generic_rows", None)  # the CNN must not take the generic path
    before = [p.detach().clone() for p in model.parameters()]
    for step in STEPS:
        for kind, R in reference_similarities(model, X, step=step, loss=loss).items():
            S = similarity(model, X, kind=kind, step=step, loss=loss)
            assert S.dtype == np.float32 and S.shape == R.shape
            assert relative_error(S, R) <= 1e-4, (step, kind, relative_error(S, R))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_rows_with_a_zero_step_are_kernel_rows_and_blocks_do_not_change_the_result(monkeypatch):
    shape, n = SHAPES["8x8"]
    model, X = build_model(CNNModel(arch="cnn"), shape, seed=2), images(shape, n)
    s = 0.5 * torch.linspace(-1, 1, X.shape[0], dtype=torch.float64)
    s[2] = 0.0
    whole = _propagated_rows(model, X, s).double()
    dz, _ = reference_dz(model, X, s)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    expected = dz / (-safe[:, None])
    expected[2] = ntk(build_like(model).double(), X.double())[2]
    assert float((whole - expected).abs().max() / expected.abs().max()) <= 1e-5
    monkeypatch.setattr(propagation, "_BLOCK_BYTES", 1)  # one probe per block
    torch.testing.assert_close(_propagated_rows(model, X, s).double(), whole, rtol=1e-5, atol=1e-6)


def conv1_pattern(model64, params, X64):
    """(ReLU on/off pattern of conv1, argmax of each pool window after it) at X64 with `params`."""
    u = functional_call(model64.conv1, {k[6:]: v for k, v in params.items() if k.startswith("conv1.")}, (X64,))
    _, argmax = F.max_pool2d(torch.relu(u), 2, return_indices=True)
    return u > 0, argmax


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_large_step_flips_relus_and_moves_pool_argmaxes(name):
    """At step 1.0 (where the float64 comparison above also holds) some conv1 ReLUs flip and some pool
    windows change their argmax, so the case analysis of the differences is exercised."""
    model, X = cnn_case(name)
    model64 = build_like(model).double()
    X64 = X.double().reshape(X.shape[0], *model.image)
    with torch.no_grad():
        s = 1.0 * dloss_dz(model64(X64), 1.0, "mse")
    base = conv1_pattern(model64, dict(model64.named_parameters()), X64)
    flips = moves = 0
    for i in range(X.shape[0]):
        params = stepped_params(model64, X64[i], float(s[i]))
        with torch.no_grad():
            on, argmax = conv1_pattern(model64, params, X64)
        flips += int((on != base[0]).sum())
        moves += int((argmax != base[1]).sum())
    assert flips > 0 and moves > 0


@pytest.mark.parametrize("size, kernel, padding", [(4, 5, 2), (7, 3, 1)], ids=["dense", "direct-odd"])
@pytest.mark.parametrize("moves", [False, True], ids=["fixed-input", "moved-input"])
def test_a_conv_relu_pool_stage_matches_float64_with_ties_and_dead_windows(size, kernel, padding, moves):
    g = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(3, 4, kernel, padding=padding)
    with torch.no_grad():
        layer.weight.copy_(0.3 * torch.randn(layer.weight.shape, generator=g))
        layer.bias.copy_(torch.tensor([0.5, -1.0, 0.1, -0.1]))
        layer.weight[:2] = 0  # channel 0: every window a tie; channel 1: dead windows
    n, steps = 5, torch.tensor([1e-3, 0.3, 3.0])
    a = torch.rand(n, 3, size, size, generator=g)
    a_probe = torch.rand(len(steps), 3, size, size, generator=g)
    g_probe = torch.randn(len(steps), 4, size, size, generator=g)
    da = torch.randn(len(steps), n, size, size, 3, generator=g) * steps[:, None, None, None, None] if moves else None
    with torch.no_grad():
        got = ConvReluPool(layer, a, moves=moves)(da, a_probe, g_probe, steps).double()

    def pool(weight, bias, x):
        return F.max_pool2d(torch.relu(F.conv2d(x, weight, bias, padding=padding)), 2).movedim(1, -1)

    W, b = layer.weight.detach().double().requires_grad_(), layer.bias.detach().double().requires_grad_()
    for k, step in enumerate(steps.double()):
        gW, gb = torch.autograd.grad(
            (F.conv2d(a_probe[k : k + 1].double(), W, b, padding=padding) * g_probe[k]).sum(), [W, b]
        )
        moved = a.double() + (da[k].movedim(-1, 1).double() if moves else 0)
        with torch.no_grad():
            expected = pool(W - step * gW, b - step * gb, moved) - pool(W, b, a.double())
        assert float((got[k] - expected).abs().max() / expected.abs().max()) < 1e-5


class Canceled(Exception):
    pass


def test_the_cnn_exact_step_reports_progress_per_block_and_stops_when_a_report_raises(monkeypatch):
    from workers.compute import progress as progress_module

    monkeypatch.setattr(progress_module.time, "monotonic", iter(range(0, 10**6, 5)).__next__)  # 5 s per call
    monkeypatch.setattr(propagation, "_BLOCK_BYTES", 1)  # one probe per block
    shape = SHAPES["8x8"][0]
    model, X = build_model(CNNModel(arch="cnn"), shape, seed=2), images(shape, 6)
    reports = []
    similarity(model, X, kind="kernelized", step=0.1, loss="mse", progress=lambda f, m: reports.append((f, m)))
    fractions = [f for f, m in reports if m.startswith("exact steps")]
    assert len(fractions) == 6 and fractions == sorted(fractions) and reports[-1][0] == 1.0

    def cancel(fraction, message):
        if message.startswith("exact steps"):
            raise Canceled

    with pytest.raises(Canceled):
        similarity(model, X, kind="kernelized", step=0.1, loss="mse", progress=cancel)
