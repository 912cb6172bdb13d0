"""The engine on CUDA, TF32 off, against the float64 CPU reference: every architecture, NTK
implementation, kind, loss and step (0: the limit; > 0: the exact step and the trajectory)."""

import copy
import os

import numpy as np
import pytest
import torch

from service.contract.spec import CNNModel, LinearModel, MLPModel, ResMLPModel
from tests.factories import one_step_reference, relative_error
from workers.compute.models import build_model
from workers.compute.ntk import ntk
from workers.compute.scalar_net import capabilities_of
from workers.compute.similarity import similarity

#: The device under test: cuda (LELASTIC_GPU_TEST_DEVICE=cpu runs the same checks on the CPU, a dry run).
DEVICE = os.environ.get("LELASTIC_GPU_TEST_DEVICE", "cuda")

SPECS = [
    MLPModel(width=64),
    MLPModel(width=32, activation="tanh"),
    MLPModel(width=32, activation="gelu"),
    MLPModel(depth=3, width=32),
    LinearModel(arch="linear", depth=1, width=1),
    LinearModel(arch="linear", depth=3, width=8),
    ResMLPModel(arch="resmlp", width=32),
    CNNModel(arch="cnn"),
]
N = 12


def shape_of(spec):
    return [64] if spec.arch == "cnn" else [16]


def data(spec, n=N, seed=1):
    return torch.rand(n, *shape_of(spec), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def spec_id(spec):
    return spec.model_dump_json()


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_every_ntk_implementation_on_cuda_equals_the_float64_cpu_jacobian(spec):
    model, X = build_model(spec, shape_of(spec), seed=0), data(spec)
    expected = ntk(copy.deepcopy(model).double(), X.double(), implementation="jacobian")
    capabilities = capabilities_of(model)
    claimed = {
        "closed_form": capabilities.closed_form_ntk,
        "layerwise": capabilities.layerwise_ntk,
        "structured": capabilities.structured_ntk,
        "jacobian": True,
    }
    model.to(DEVICE)
    for implementation in [name for name, yes in claimed.items() if yes]:
        K = ntk(model, X.to(DEVICE), implementation=implementation)
        assert K.device.type == torch.device(DEVICE).type and K.dtype == torch.float32
        assert float((K.cpu().double() - expected).abs().max() / expected.abs().max()) < 1e-5, implementation


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_the_exact_step_on_cuda_equals_the_float64_cpu_loop(spec, loss, kind):
    model, X = build_model(spec, shape_of(spec), seed=0), data(spec)
    for eta in (1e-3, 1e-1):
        R = one_step_reference(model, X, eta, loss, kind)
        S = similarity(model.to(DEVICE), X.to(DEVICE), kind=kind, step=eta, loss=loss)
        model.cpu()
        assert relative_error(S, R) < 1e-4, eta


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_the_limit_on_cuda_equals_the_float64_cpu_limit(spec, loss, kind):
    model, X = build_model(spec, shape_of(spec), seed=0), data(spec)
    expected = similarity(copy.deepcopy(model).double(), X.double(), kind=kind, step=0, loss=loss)
    S = similarity(model.to(DEVICE), X.to(DEVICE), kind=kind, step=0, loss=loss)
    assert relative_error(S, expected) < 1e-5


@pytest.mark.parametrize("spec", [MLPModel(width=64), ResMLPModel(arch="resmlp", width=16), CNNModel(arch="cnn")])
def test_the_trajectory_and_the_activation_kind_on_cuda_equal_the_cpu(spec):
    model, X = build_model(spec, shape_of(spec), seed=0), data(spec)
    Xa = data(spec, n=5, seed=2)
    cpu = similarity(model, X, kind="kernelized", step=1e-2, loss="mse", schedule="trajectory", X_aux=Xa, seed=3)
    relu_patterns = spec.arch != "cnn"
    if relu_patterns:
        patterns = similarity(model, X, kind="activation", step=0, loss="mse")
    model.to(DEVICE)
    Xd, Xad = X.to(DEVICE), Xa.to(DEVICE)
    gpu = similarity(model, Xd, kind="kernelized", step=1e-2, loss="mse", schedule="trajectory", X_aux=Xad, seed=3)
    assert relative_error(gpu, cpu) < 1e-6
    if relu_patterns:
        np.testing.assert_allclose(similarity(model, Xd, kind="activation", step=0, loss="mse"), patterns, atol=1e-6)


@pytest.mark.parametrize("step", [0.0, 0.05])
def test_a_tile_ranked_on_cuda_equals_the_cpu_tile(step):
    from workers.compute.tiles import tile_similarity, topk

    model = build_model(MLPModel(width=64), [16], seed=0)
    X = data(MLPModel(width=64), n=40)
    options = {"kind": "kernelized", "step": step, "loss": "mse", "symmetrize": True, "normalize": False}
    cpu_upper, _ = tile_similarity(model, X[:16], X[16:], **options)
    device_model = copy.deepcopy(model).to(DEVICE)
    upper, lower = tile_similarity(device_model, X[:16].to(DEVICE), X[16:].to(DEVICE), **options)
    assert upper.device.type == torch.device(DEVICE).type and lower is not None
    assert relative_error(upper.cpu().numpy(), cpu_upper.numpy()) <= 1e-5
    columns, values = topk(upper, 5, col_offset=16)
    cpu_columns, cpu_values = topk(cpu_upper, 5, col_offset=16)
    assert np.array_equal(columns, cpu_columns)
    assert np.abs(values - cpu_values).max() <= 1e-5 * np.abs(cpu_values).max()


@pytest.mark.skipif(DEVICE != "cuda", reason="a CUDA device index (the dry run on the CPU has none)")
def test_a_device_index_the_worker_does_not_have_fails_the_job_naming_it():
    from workers.errors import JobFailure
    from workers.pipeline import pick_device

    assert pick_device("cuda:0").type == "cuda"
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(JobFailure, match=f"device .{missing}. was asked for, but this worker has cuda:0 to cuda:"):
        pick_device(missing)
