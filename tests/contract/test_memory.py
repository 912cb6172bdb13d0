"""The job memory estimate: what each part of a spec adds, and which part drives it."""

from __future__ import annotations

from typing import Any

import pytest

from service.contract.architectures import architecture_of
from service.contract.memory import (
    GiB,
    MiB,
    engine_path,
    engine_work_bytes,
    estimate_job_memory,
    estimate_spec_memory,
    structured_feature_bytes,
    widest_units,
)
from service.contract.spec import JobSpec, parameter_shapes

BASE: dict[str, Any] = dict(
    n=8000,
    n_auxiliary=0,
    dataset_rows=8000,
    features=2,
    parameters=257,
    widest_layer=64,
    path="closed_form",
    kind="kernelized",
    step=0.0,
    repeats=1,
    normalize=False,
    symmetrize=True,
    synthetic=True,
    method="kernel_kmeans",
    baselines=("kmeans_raw", "pca_kmeans", "spectral_rbf"),
)
M = 4 * 8000 * 8000


def total(**changes: Any) -> int:
    return estimate_job_memory(**{**BASE, **changes}).total


def test_the_similarity_stage_holds_three_matrices_for_the_limit():
    estimate = estimate_job_memory(**BASE)
    assert estimate.stage == "similarity"
    assert estimate.parts["n × n matrices"] == 3 * M
    assert estimate.total >= 3 * M + 1 * GiB  # and the process


def test_each_repeat_option_adds_what_it_holds():
    assert total(repeats=20) - total() == M  # one running sum, whatever the count
    assert total(repeats=2, normalize=True) - total() == 2 * M  # raw and normalised sums (synthetic)
    assert total(repeats=2, normalize=True, synthetic=False) - total() == M
    assert total(step=0.01) - total() == M  # the exact step's rows, overwritten in place by the kind
    assert total(step=0.01, trajectory=True) - total() == 3 * M  # the trajectory's float64 rows and logits


def test_width_drives_the_hidden_activations_and_names_the_driver():
    wide = estimate_job_memory(**{**BASE, "widest_layer": 65_536, "parameters": 4 * 65_536})
    assert wide.driver() == "hidden activations"
    assert wide.parts["hidden activations"] == 32 * 8000 * 65_536
    assert "hidden activations" in wide.explain() and wide.explain().startswith("similarity stage: ")


def test_small_dense_spectral_counts_nine_matrices():
    small = dict(BASE, n=1000, dataset_rows=1000)
    assert estimate_job_memory(**{**small, "method": "spectral"}).total >= 10 * 4 * 1000**2


def test_spec_estimate_uses_the_registry_shapes():
    spec = JobSpec.model_validate(
        {
            "dataset": {"builtin": "two_cycles", "n": 32768},
            "model": {"arch": "mlp", "width": 65536},
            "similarity": {"repeats": 20},
            "clustering": {"k": 100, "method": "spectral"},
        }
    )
    estimate = estimate_spec_memory(spec, n=32768, n_auxiliary=0, dataset_rows=32768, input_shape=[2])
    assert estimate.total > 64 * GiB
    assert estimate.parts["hidden activations"] == 32 * 32768 * 65536


@pytest.mark.parametrize("n", [200, 2000])
def test_the_demo_sized_jobs_fit_in_two_gib(n):
    spec = JobSpec.model_validate({"dataset": {"builtin": "digits"}})
    estimate = estimate_spec_memory(spec, n=n, n_auxiliary=0, dataset_rows=1797, input_shape=[64])
    assert estimate.total < 2 * GiB


def path_of(model: dict[str, Any], **similarity: Any) -> str:
    spec = JobSpec.model_validate({"dataset": {"builtin": "digits"}, "model": model, "similarity": similarity})
    capabilities = architecture_of(spec.model).capabilities(spec.model)
    sim = spec.similarity
    return engine_path(capabilities, kind=sim.kind, step=sim.step, trajectory=sim.schedule == "trajectory")


@pytest.mark.parametrize(
    ("model", "similarity", "path"),
    [
        ({"arch": "mlp", "depth": 2}, {"step": 0.001}, "closed_form"),  # relu: the exact step in GEMMs
        ({"arch": "mlp", "depth": 2, "activation": "tanh"}, {"step": 0.001}, "propagation"),
        ({"arch": "mlp", "depth": 2, "activation": "gelu"}, {"step": 0.001}, "propagation_float64"),
        ({"arch": "mlp", "depth": 2, "activation": "gelu"}, {"step": 0}, "closed_form"),
        ({"arch": "mlp", "depth": 3}, {"step": 0}, "layerwise"),
        ({"arch": "resmlp"}, {"step": 0.001}, "propagation"),
        ({"arch": "cnn"}, {"step": 0}, "structured"),
        ({"arch": "cnn"}, {"step": 0.001}, "propagation"),
        ({"arch": "cnn"}, {"step": 0.001, "schedule": "trajectory"}, "trajectory"),
        ({"arch": "resmlp"}, {"kind": "activation"}, "closed_form"),
    ],
)
def test_the_engine_path_follows_the_capabilities_kind_and_step(model, similarity, path):
    assert path_of(model, **similarity) == path


def test_the_propagation_buffers_hold_a_block_or_one_probe_and_double_for_gelu():
    assert engine_work_bytes("propagation", n=1000, widest_layer=1024) == 1 * GiB  # 6 · 4 · 1000 · 1024 < 1 GiB
    assert engine_work_bytes("propagation_float64", n=1000, widest_layer=1024) == 2 * GiB
    assert engine_work_bytes("propagation", n=20_000, widest_layer=4096) == 24 * 20_000 * 4096  # one probe
    assert engine_work_bytes("closed_form", n=20_000, widest_layer=4096) == 512 * MiB


def test_the_structured_ntk_keeps_its_features_up_to_two_gib():
    shapes = parameter_shapes(JobSpec.model_validate({"dataset": "d", "model": {"arch": "cnn"}}).model, [1, 28, 28])
    # conv1 20·1·25 + 20, conv2 50·20·25 + 50, fc1 800 + 500, fc2 500 + 1 numbers per example
    assert structured_feature_bytes(shapes) == 4 * (520 + 25_050 + 1300 + 501) == 109_484
    assert engine_work_bytes("structured", n=2000, widest_layer=1, feature_bytes=109_484) == 218_968_000 + 512 * MiB
    assert engine_work_bytes("structured", n=100_000, widest_layer=1, feature_bytes=109_484) == 2 * GiB + 512 * MiB


@pytest.mark.parametrize(
    ("model", "shape", "units"),
    [
        ({"arch": "cnn"}, [1, 28, 28], 20 * 24 * 24),  # conv1's maps, wider than fc1's 500
        ({"arch": "cnn"}, [64], 20 * 8 * 8),  # 8 × 8 digits, padding 2
        ({"arch": "mlp", "width": 1024, "depth": 3}, [784], 1024),
        ({"arch": "resmlp", "width": 2048}, [2], 2048),
    ],
)
def test_the_widest_layer_counts_a_convolutions_channels_and_positions(model, shape, units):
    assert widest_units(JobSpec.model_validate({"dataset": "d", "model": model}).model, shape) == units


def test_a_gelu_step_and_a_cnn_step_count_their_own_buffers_and_activations():
    gelu = JobSpec.model_validate(
        {
            "dataset": {"builtin": "two_cycles", "n": 1000},
            "model": {"arch": "mlp", "width": 1024, "activation": "gelu"},
            "similarity": {"step": 0.001},
        }
    )
    parts = estimate_spec_memory(gelu, n=1000, n_auxiliary=0, dataset_rows=1000, input_shape=[2]).parts
    assert parts["engine work buffers"] == 2 * GiB
    cnn = JobSpec.model_validate({"dataset": "d", "model": {"arch": "cnn"}, "similarity": {"step": 0.001}})
    parts = estimate_spec_memory(cnn, n=1000, n_auxiliary=0, dataset_rows=1000, input_shape=[1, 28, 28]).parts
    assert parts["hidden activations"] == 32 * 1000 * 11_520
    assert parts["engine work buffers"] == 1 * GiB
