"""The job memory estimate: what each part of a spec adds, and which part drives it."""

from __future__ import annotations

from typing import Any

import pytest

from service.contract.memory import GiB, estimate_job_memory, estimate_spec_memory
from service.contract.spec import JobSpec

BASE: dict[str, Any] = dict(
    n=8000,
    n_auxiliary=0,
    dataset_rows=8000,
    features=2,
    parameters=257,
    widest_layer=64,
    closed_form=True,
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
