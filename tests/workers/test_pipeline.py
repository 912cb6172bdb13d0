"""The job pipeline end to end in-process: spec → artifacts and result (no queue, real engine)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.contract.spec import JobSpec
from service.contract.storage import DataDir
from workers.errors import JobFailure
from workers.pipeline import run_pipeline

TINY = {
    "dataset": {"builtin": "digits"},
    "primary": {"indices": list(range(0, 60))},
    "auxiliary": {"indices": list(range(60, 90))},
    "model": {"arch": "mlp", "width": 64, "depth": 2, "activation": "relu"},
    "weights": {"source": "trained", "epochs": 3, "lr": 0.003, "batch_size": 10},
    "similarity": {"kind": "kernelized", "step": 0},
    "clustering": {"k": 2, "method": "kernel_kmeans", "n_init": 3},
    "seed": 3,
}


def run(tmp_path, spec: dict, name: str = "job"):
    data_dir = DataDir(tmp_path / "data")
    events = []
    result = run_pipeline(
        JobSpec.model_validate(spec),
        job_dir=data_dir.job_dir(name),
        data_dir=data_dir,
        device_setting="cpu",
        report=lambda fraction, stage, message: events.append((fraction, stage)),
    )
    return result, data_dir.job_dir(name), events


def test_pipeline_writes_every_artifact_and_a_consistent_result(tmp_path):
    result, job_dir, events = run(tmp_path, TINY)
    assert result["n"] == 60 and len(result["clusters"]) == 60
    assert set(result["artifacts"]) == {
        "similarity.npy",
        "primary_index.npy",
        "examples.npy",
        "labels.npy",
        "clusters.npy",
        "weights.safetensors",
        "heatmap.png",
        "neighbors_index.npy",
        "neighbors_value.npy",
        "result.json",
    }
    S = np.load(job_dir / "similarity.npy")
    assert S.dtype == np.float32 and S.shape == (60, 60)
    np.testing.assert_array_equal(S, S.T)  # symmetrize is the default
    assert np.linalg.eigvalsh(S.astype(np.float64)).min() > -1e-3 * np.abs(S).max()  # an NTK is PSD
    np.testing.assert_array_equal(np.load(job_dir / "primary_index.npy"), np.arange(60))
    np.testing.assert_array_equal(np.load(job_dir / "clusters.npy"), result["clusters"])
    examples, labels = np.load(job_dir / "examples.npy"), np.load(job_dir / "labels.npy")
    assert examples.dtype == np.float32 and examples.shape[0] == 60 and labels.shape == (60,)
    assert set(result["metrics"]) >= {"accuracy", "ari", "nmi", "within_between_ratio"}
    assert set(result["baselines"]) == {"kmeans_raw", "pca_kmeans", "spectral_rbf"}
    assert result["training"]["final_loss"] >= 0
    assert json.loads((job_dir / "result.json").read_text())["clusters"] == result["clusters"]
    fractions = [fraction for fraction, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"load", "train", "similarity", "cluster", "write"} <= {stage for _, stage in events}


def test_saved_weights_are_the_measured_theta(tmp_path):
    from safetensors.numpy import load_file

    from service.contract.spec import MLPModel, parameter_shapes

    result, job_dir, _ = run(tmp_path, TINY)
    tensors = load_file(str(job_dir / "weights.safetensors"))
    expected = parameter_shapes(MLPModel(width=64), [64])
    assert {name: list(t.shape) for name, t in tensors.items()} == expected
    # The kernel recomputed from the saved θ (closed form of a 2-layer ReLU net) equals the artifact.
    X = np.load(job_dir / "primary_index.npy")
    from workers.compute.datasets import load_builtin

    x = load_builtin("digits").X[X].astype(np.float64)
    W, b = tensors["layers.0.weight"].astype(np.float64), tensors["layers.0.bias"].astype(np.float64)
    a = tensors["layers.1.weight"][0].astype(np.float64)
    U = x @ W.T + b
    H, D = np.maximum(U, 0), (U > 0).astype(np.float64)
    K = H @ H.T + ((D * a**2) @ D.T) * (x @ x.T + 1) + 1
    S = np.load(job_dir / "similarity.npy")
    assert np.abs(S - K).max() / np.abs(K).max() < 1e-4


def test_same_spec_and_seed_give_bitwise_identical_artifacts(tmp_path):
    _, first, _ = run(tmp_path, TINY, "a")
    _, second, _ = run(tmp_path, TINY, "b")
    for name in ("similarity.npy", "clusters.npy", "weights.safetensors", "heatmap.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_synthetic_builtin_gets_an_elasticity_analysis(tmp_path):
    spec = {
        "dataset": {"builtin": "torus", "n": 80, "seed": 1},
        "primary": {"labels": [1]},
        "auxiliary": {"labels": [0]},
        "model": {"arch": "mlp", "width": 128},
        "weights": {"source": "init"},
        "similarity": {"kind": "relative", "step": 0},
        "clustering": None,
        "baselines": [],
    }
    result, job_dir, _ = run(tmp_path, spec)
    analysis = result["analysis"]
    assert analysis["pairs"] == 40 * 39
    assert -1 <= analysis["pearson"] <= 1 and -1 <= analysis["spearman"] <= 1
    assert (job_dir / "elasticity.png").read_bytes().startswith(b"\x89PNG")


def test_divergent_training_fails_with_a_reason_naming_the_epoch(tmp_path):
    spec = dict(
        TINY,
        model={"arch": "linear", "depth": 2, "width": 256},
        weights={"source": "trained", "epochs": 50, "lr": 5.0, "batch_size": 10},
    )
    with pytest.raises(JobFailure, match=r"epoch \d+.*lr"):
        run(tmp_path, spec)


def test_labels_missing_from_the_dataset_fail_with_a_reason(tmp_path):
    spec = dict(TINY, primary={"labels": [3, 11]}, auxiliary=None)
    with pytest.raises(JobFailure, match=r"\[11\]"):
        run(tmp_path, spec)


def test_elasticity_pairs_are_counted_within_each_class_only(tmp_path):
    spec = {
        "dataset": {"builtin": "two_folded_boxes", "n": 40, "seed": 2},
        "model": {"arch": "mlp", "width": 32, "depth": 3},
        "weights": {"source": "init"},
        "similarity": {"kind": "kernelized", "step": 0},
        "clustering": {"k": 2},
        "baselines": ["kmeans_raw"],
    }
    result, _, _ = run(tmp_path, spec)
    assert result["analysis"]["pairs"] == 2 * 20 * 19  # two classes of 20, ordered pairs, no cross-class
    assert set(result["baselines"]) == {"kmeans_raw"}


def test_weights_carry_the_model_spec_and_version_in_their_metadata(tmp_path):
    from safetensors import safe_open

    from service import __version__

    _, job_dir, _ = run(tmp_path, TINY)
    with safe_open(str(job_dir / "weights.safetensors"), framework="numpy") as handle:
        metadata = json.loads(handle.metadata()["lelastic"])
    assert metadata["lelastic_version"] == __version__
    assert metadata["model"] == {"arch": "mlp", "width": 64, "depth": 2, "activation": "relu"}
    assert metadata["input_shape"] == [64] and metadata["loss"] == "mse"


def test_k_defaults_to_the_number_of_primary_classes(tmp_path):
    spec = dict(TINY, primary={"labels": [0, 1, 2]}, auxiliary=None, clustering={"method": "kernel_kmeans"})
    spec["weights"] = {"source": "init"}
    result, _, _ = run(tmp_path, spec)
    assert result["clustering"] == {"method": "kernel_kmeans", "k": 3, "k_from": "classes"}
    assert len(set(result["clusters"])) == 3
    explicit, _, _ = run(tmp_path, dict(spec, clustering={"k": 2, "method": "kernel_kmeans"}), "explicit")
    assert explicit["clustering"]["k"] == 2 and explicit["clustering"]["k_from"] == "spec"


def test_one_primary_class_reports_null_metrics_with_a_reason_and_skips_baselines(tmp_path):
    spec = {
        "dataset": {"builtin": "torus", "n": 40},
        "primary": {"labels": [1]},
        "auxiliary": {"labels": [0]},
        "model": {"arch": "mlp", "width": 32},
        "weights": {"source": "init"},
    }
    result, _, _ = run(tmp_path, spec)
    assert result["metrics"] == {"accuracy": None, "ari": None, "nmi": None, "within_between_ratio": None}
    assert "two classes" in result["metrics_note"]
    assert result["baselines"] == {} and "skipped" in result["baselines_note"]
    assert result["clustering"]["k_from"] == "default" and len(result["clusters"]) == 20


def strict_json(text: str) -> dict:
    """The document, refusing NaN and ±Infinity (which JSON has no words for)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in a JSON document")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.filterwarnings("ignore:k >= N for N \\* N square matrix:RuntimeWarning")  # spectral_rbf at n = 2
@pytest.mark.parametrize("clustering", [{"k": 2}, None])
def test_a_ratio_without_a_same_class_pair_is_null_with_a_reason(tmp_path, clustering):
    spec = dict(TINY, primary={"indices": [0, 1]}, auxiliary=None, weights={"source": "init"}, clustering=clustering)
    result, job_dir, _ = run(tmp_path, spec)
    stored = strict_json((job_dir / "result.json").read_text())
    assert stored["metrics"]["within_between_ratio"] is None
    assert "same class" in stored["metrics_note"]
    if clustering is not None:
        assert stored["metrics"]["accuracy"] == 1.0 and set(stored["baselines"]) == set(result["baselines"])


@pytest.mark.filterwarnings("ignore:Number of distinct clusters:sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:Graph is not fully connected:UserWarning")
@pytest.mark.parametrize("method", ["auto", "kmeans", "spectral", "kernel_kmeans"])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_a_zero_similarity_matrix_clusters_and_reports_a_null_ratio(tmp_path, kind, method):
    from safetensors.torch import save_file

    from service.contract.spec import MLPModel
    from workers.compute.models import build_model

    data_dir = DataDir(tmp_path / "data")
    state = build_model(MLPModel(width=8), [64], seed=0).state_dict()
    state["layers.1.bias"].fill_(200.0)  # the sigmoid saturates: ∂f/∂z = 0 at every example
    data_dir.weights_file("saturated").parent.mkdir(parents=True)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(data_dir.weights_file("saturated")))
    spec = dict(
        TINY,
        primary={"indices": list(range(20))},
        auxiliary=None,
        model={"arch": "mlp", "width": 8},
        loss="bce",
        weights={"source": "upload", "weights": "saturated"},
        similarity={"kind": kind, "step": 0},
        clustering={"k": 2, "method": method},
    )
    result, job_dir, _ = run(tmp_path, spec)
    assert not np.load(job_dir / "similarity.npy").any()
    stored = strict_json((job_dir / "result.json").read_text())
    assert len(stored["clusters"]) == 20 and set(stored["clusters"]) <= {0, 1}
    assert stored["metrics"]["within_between_ratio"] is None and "between classes" in stored["metrics_note"]
    assert 0 <= stored["metrics"]["accuracy"] <= 1


def test_features_too_large_for_float32_products_fail_with_their_magnitude(tmp_path):
    data_dir = DataDir(tmp_path / "data")
    rng = np.random.default_rng(0)
    data_dir.dataset_file("huge").parent.mkdir(parents=True)
    X = (rng.normal(size=(12, 4)) * 1e30).astype(np.float32)
    np.savez(data_dir.dataset_file("huge"), X=X, y=np.repeat([0, 1], 6))
    spec = dict(TINY, dataset="huge", primary=None, auxiliary=None, weights={"source": "init"})
    with pytest.raises(JobFailure, match=r"largest \|x\| .*e\+30.*rescale"):
        run(tmp_path, spec)
