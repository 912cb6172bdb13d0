"""Repeats stream into running sums: the averaged matrix equals the mean of the single runs' matrices."""

from __future__ import annotations

import numpy as np
import pytest

from service.contract.spec import JobSpec
from service.contract.storage import DataDir
from workers.pipeline import run_pipeline


def similarity_of(tmp_path, spec: dict, name: str) -> tuple[dict, np.ndarray]:
    data_dir = DataDir(tmp_path / "data")
    result = run_pipeline(
        JobSpec.model_validate(spec), job_dir=data_dir.job_dir(name), data_dir=data_dir, device_setting="cpu"
    )
    return result, np.load(data_dir.job_dir(name) / "similarity.npy")


@pytest.mark.parametrize(
    ("dataset", "normalize"),
    [
        ({"builtin": "digits"}, True),
        ({"builtin": "two_cycles", "n": 120, "seed": 1}, True),
        ({"builtin": "two_cycles", "n": 120}, False),
    ],
)
def test_repeats_average_the_post_processed_matrices_of_the_single_runs(tmp_path, dataset, normalize):
    spec = {
        "dataset": dataset,
        "primary": {"indices": list(range(0, 120, 2))},
        "model": {"arch": "mlp", "width": 32},
        "weights": {"source": "init"},
        "similarity": {"kind": "kernelized", "step": 0, "normalize": normalize, "repeats": 3},
        "clustering": {"k": 2, "n_init": 2},
        "baselines": [],
        "seed": 5,
    }
    result, S = similarity_of(tmp_path, spec, "repeats")
    singles = [
        similarity_of(tmp_path, {**spec, "seed": 5 + r, "similarity": {**spec["similarity"], "repeats": 1}}, f"r{r}")[1]
        for r in range(3)
    ]
    np.testing.assert_allclose(S, np.mean(singles, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(S, S.T)
    if normalize:
        np.testing.assert_allclose(np.diag(S), 1.0, rtol=1e-6)
    if dataset["builtin"] == "two_cycles":
        assert result["analysis"]["pairs"] > 0 and -1 <= result["analysis"]["pearson"] <= 1
