"""One job from spec to result: data → θ → similarity → clustering → metrics → artifacts.

`run_pipeline` is the adapter between a job spec and the pure engine in `workers/compute`; it knows
nothing of Redis (progress goes through a callback) and writes only inside the job's folder.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contract.spec import JobSpec, TrainedWeights, UploadedWeights
from service.contract.storage import DataDir, atomic_open, atomic_write_bytes
from workers.compute import baselines, clustering, metrics, models, similarity, training
from workers.data import JobData, resolve
from workers.errors import JobFailure

#: (stage, start, end) of each stage on the job's overall progress scale.
STAGES = {
    "load": (0.0, 0.03),
    "train": (0.03, 0.5),
    "similarity": (0.5, 0.85),
    "cluster": (0.85, 0.95),
    "write": (0.95, 1.0),
}

Progress = Callable[[float, str, str], None]


class StageProgress:
    """Maps a stage's own 0..1 progress onto the job's scale and forwards it."""

    def __init__(self, report: Progress) -> None:
        self.report = report

    def __call__(self, stage: str, fraction: float = 0.0, message: str = "") -> None:
        start, end = STAGES[stage]
        self.report(start + (end - start) * max(0.0, min(1.0, fraction)), stage, message)

    def within(self, stage: str, start: float = 0.0, end: float = 1.0) -> Callable[[float, str], None]:
        """A (fraction, message) callback for one part [start, end] of a stage."""

        def part(fraction: float, message: str = "") -> None:
            self(stage, start + (end - start) * fraction, message)

        return part


def pick_device(setting: str) -> torch.device:
    """The device a job computes on: `auto` is CUDA when present, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise JobFailure(f"device {setting!r} was asked for, but this worker has no CUDA device")
    return torch.device(setting)


def versions() -> dict[str, str]:
    import sklearn

    from service import __version__

    return {
        "lelastic": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def measure_theta(
    spec: JobSpec,
    data: JobData,
    *,
    seed: int,
    device: torch.device,
    data_dir: DataDir,
    progress: Callable[[float, str], None],
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Stage 2, θ: build the model (seeded) and bring it to the spec's weights.

    Returns (model, training report or None): the seeded initialisation as is, the uploaded weights
    loaded, or the model trained on primary (label 1) and auxiliary (label 0) examples.
    """
    input_shape = list(data.X.shape[1:])
    model = models.build_model(spec.model, input_shape, seed=seed).to(device)
    weights = spec.weights
    if isinstance(weights, UploadedWeights):
        load_uploaded_weights(model, weights, data_dir=data_dir, device=device)
        return model, None
    if not isinstance(weights, TrainedWeights):
        return model, None
    return model, train_model(model, spec, weights, data, seed=seed, device=device, progress=progress)


def load_uploaded_weights(
    model: torch.nn.Module, weights: UploadedWeights, *, data_dir: DataDir, device: torch.device
) -> None:
    """Load an uploaded .safetensors file into the model; JobFailure when it is gone or does not fit."""
    from safetensors.torch import load_file

    path = data_dir.weights_file(weights.weights)
    if not path.exists():
        raise JobFailure(f"weights upload {weights.weights!r} no longer exists")
    try:
        models.load_weights(model, load_file(str(path), device=str(device)))
    except ValueError as error:
        raise JobFailure(f"uploaded weights do not fit the model: {error}") from error


def train_model(
    model: torch.nn.Module,
    spec: JobSpec,
    weights: TrainedWeights,
    data: JobData,
    *,
    seed: int,
    device: torch.device,
    progress: Callable[[float, str], None],
) -> dict[str, Any]:
    """Train the model with plain SGD, primary examples labelled 1 and auxiliary 0; returns the training report."""
    rows = np.concatenate([data.primary, data.auxiliary])
    X = torch.from_numpy(data.X[rows]).to(device)
    y = torch.cat([torch.ones(data.primary.size), torch.zeros(data.auxiliary.size)]).to(device)
    try:
        return training.train(
            model,
            X,
            y,
            loss=spec.loss,
            epochs=weights.epochs,
            lr=weights.lr,
            batch_size=weights.batch_size,
            seed=seed,
            progress=progress,
        )
    except training.TrainingDiverged as error:
        raise JobFailure(str(error)) from error


@dataclass
class JobInputs:
    """What the data stage gives the others: the job's examples and the device it computes on, with the
    primary and auxiliary rows already there as tensors."""

    data: JobData
    device: torch.device
    X_primary: torch.Tensor
    X_aux: torch.Tensor | None


@dataclass
class Measurement:
    """What the θ and similarity stages give the others, over every repeat (model seed).

    S: the post-processed similarity matrix (float32), averaged over repeats; S_raw: the raw one, averaged;
    model: the first repeat's model, at its measured θ; trainings: each repeat's training report (None
    when the weights were not trained); and the seconds spent in each of the two stages.
    """

    S: np.ndarray
    S_raw: np.ndarray
    model: torch.nn.Module
    trainings: list[dict[str, Any] | None]
    train_seconds: float
    similarity_seconds: float


@dataclass
class Evaluation:
    """What the clustering and metrics stages give the artifacts stage.

    result: the result so far (`n`, `clusters`, `metrics`, `baselines`, and `clustering` and `analysis`
    when computed); clusters: a label per primary example, or None; elasticity_png: the similarity
    against geodesic distance plot of a synthetic builtin, or None.
    """

    result: dict[str, Any]
    clusters: np.ndarray | None
    elasticity_png: bytes | None


def run_pipeline(
    spec: JobSpec,
    *,
    job_dir: Path,
    data_dir: DataDir,
    device_setting: str = "auto",
    report: Progress = lambda fraction, stage, message: None,
) -> dict[str, Any]:
    """Compute everything the spec asks for, write the artifacts into `job_dir`, return the result.

    The stages, in order: `load_stage` (data), `measure_stage` (θ by `measure_theta`, then
    `similarity_stage`, per repeat), `cluster_stage`, `evaluation_stage` (metrics and baselines) and
    `artifacts_stage`.
    """
    progress = StageProgress(report)
    started = time.perf_counter()
    inputs = load_stage(spec, data_dir, device_setting, progress)
    measurement = measure_stage(spec, inputs, data_dir, progress)
    tick = time.perf_counter()
    clusters = cluster_stage(spec, measurement.S, progress)
    evaluation = evaluation_stage(spec, inputs.data, measurement, clusters, progress)
    timings = {
        "train_seconds": round(measurement.train_seconds, 4),
        "similarity_seconds": round(measurement.similarity_seconds, 4),
        "clustering_seconds": round(time.perf_counter() - tick, 4),
    }
    return artifacts_stage(spec, job_dir, inputs, measurement, evaluation, timings, started=started, progress=progress)


def load_stage(spec: JobSpec, data_dir: DataDir, device_setting: str, progress: StageProgress) -> JobInputs:
    """Stage 1, data: pick the device, load the dataset and move the selected rows onto the device."""
    progress("load", 0.0, "loading the dataset")
    device = pick_device(device_setting)
    data = resolve(spec, data_dir)
    X_primary = torch.from_numpy(data.X[data.primary]).to(device)
    X_aux = torch.from_numpy(data.X[data.auxiliary]).to(device) if data.auxiliary.size else None
    return JobInputs(data=data, device=device, X_primary=X_primary, X_aux=X_aux)


def measure_stage(spec: JobSpec, inputs: JobInputs, data_dir: DataDir, progress: StageProgress) -> Measurement:
    """Stages 2 and 3, θ then similarity, once per repeat (model seed `spec.seed + repeat`).

    Each repeat brings a fresh model to its θ (`measure_theta`) and measures the primary examples'
    similarity there (`similarity_stage`); the matrices are post-processed, then averaged.
    """
    sim = spec.similarity
    train_seconds = similarity_seconds = 0.0
    matrices, raw_matrices, trainings = [], [], []
    first_model: torch.nn.Module | None = None
    for repeat in range(sim.repeats):
        share = (repeat / sim.repeats, (repeat + 1) / sim.repeats)
        tick = time.perf_counter()
        model, train_report = measure_theta(
            spec,
            inputs.data,
            seed=spec.seed + repeat,
            device=inputs.device,
            data_dir=data_dir,
            progress=progress.within("train", *share),
        )
        train_seconds += time.perf_counter() - tick
        trainings.append(train_report)
        tick = time.perf_counter()
        raw = similarity_stage(
            spec, model, inputs, seed=spec.seed + repeat, progress=progress.within("similarity", *share)
        )
        similarity_seconds += time.perf_counter() - tick
        raw_matrices.append(raw)
        matrices.append(similarity.postprocess(raw, symmetrize=sim.symmetrize, normalize=sim.normalize))
        if first_model is None:
            first_model = model
    assert first_model is not None  # similarity.repeats is at least 1
    return Measurement(
        S=np.mean(matrices, axis=0).astype(np.float32) if sim.repeats > 1 else matrices[0].astype(np.float32),
        S_raw=np.mean(raw_matrices, axis=0) if sim.repeats > 1 else raw_matrices[0],
        model=first_model,
        trainings=trainings,
        train_seconds=train_seconds,
        similarity_seconds=similarity_seconds,
    )


def similarity_stage(
    spec: JobSpec, model: torch.nn.Module, inputs: JobInputs, *, seed: int, progress: Callable[[float, str], None]
) -> np.ndarray:
    """Stage 3, similarity: the raw similarity matrix of the primary examples at the model's θ.

    The auxiliary examples take part where the kind uses them. JobFailure when an entry is not finite.
    """
    sim = spec.similarity
    raw = similarity.similarity(
        model,
        inputs.X_primary,
        kind=sim.kind,
        step=sim.step,
        loss=spec.loss,
        schedule=sim.schedule,
        X_aux=inputs.X_aux,
        seed=seed,
        progress=progress,
    )
    if not np.all(np.isfinite(raw)):
        raise JobFailure("the similarity matrix has non-finite entries (the model's θ may have diverged)")
    return raw


def cluster_stage(spec: JobSpec, S: np.ndarray, progress: StageProgress) -> np.ndarray | None:
    """Stage 4, clustering: a cluster label per primary example from S; None when the spec asks for none."""
    progress("cluster", 0.0, "clustering")
    method = spec.clustering_method()
    if spec.clustering is None or method is None:
        return None
    return clustering.cluster(S, method=method, k=spec.clustering.k, seed=spec.seed, n_init=spec.clustering.n_init)


def evaluation_stage(
    spec: JobSpec, data: JobData, measurement: Measurement, clusters: np.ndarray | None, progress: StageProgress
) -> Evaluation:
    """Stage 5, metrics and baselines: score the clusters and the baselines (`cluster_scores`) and, for a
    synthetic builtin, correlate similarity with geodesic distance (`elasticity_analysis`)."""
    result = cluster_scores(spec, data, measurement.S, clusters, progress)
    elasticity_png = None
    if data.coords is not None and data.builtin is not None:
        result["analysis"], elasticity_png = elasticity_analysis(measurement.S_raw, data, spec)
    return Evaluation(result=result, clusters=clusters, elasticity_png=elasticity_png)


def cluster_scores(
    spec: JobSpec, data: JobData, S: np.ndarray, clusters: np.ndarray | None, progress: StageProgress
) -> dict[str, Any]:
    """The result's `n`, `clusters`, `metrics` and `baselines` (and `clustering` when the spec clusters).

    With labels, the clusters are scored against them (accuracy, ARI, NMI, within/between ratio), and so
    are the baselines run on the raw features; without, the baselines report their cluster sizes. Without
    clustering, only the within/between similarity ratio is computed (when there are labels).
    """
    result: dict[str, Any] = {"n": int(data.primary.size), "clusters": None, "metrics": None, "baselines": {}}
    labels_true = data.y[data.primary] if data.y is not None else None
    if spec.clustering is None or clusters is None:
        if labels_true is not None:
            result["metrics"] = {"within_between_ratio": metrics.similarity_ratio(S, labels_true)}
        return result
    k = spec.clustering.k
    result["clusters"] = clusters.tolist()
    result["clustering"] = {"method": spec.clustering_method(), "k": k}
    if labels_true is not None:
        result["metrics"] = metrics.evaluate(S, labels_true, clusters)
    progress("cluster", 0.5, "baselines")
    flat = data.X[data.primary].reshape(data.primary.size, -1)
    for name, labels in baselines.run_baselines(flat, k=k, seed=spec.seed, names=tuple(spec.baselines)).items():
        result["baselines"][name] = (
            metrics.clustering_metrics(labels_true, labels)
            if labels_true is not None
            else {"cluster_sizes": np.bincount(labels, minlength=k).tolist()}
        )
    return result


def artifacts_stage(
    spec: JobSpec,
    job_dir: Path,
    inputs: JobInputs,
    measurement: Measurement,
    evaluation: Evaluation,
    timings: dict[str, float],
    *,
    started: float,
    progress: StageProgress,
) -> dict[str, Any]:
    """Stage 6, artifacts: write them, complete the result (training, timings with the total since
    `started`, device, artifact names, spec, versions) and write it as `result.json`. Returns the result."""
    progress("write", 0.0, "writing artifacts")
    artifacts = write_artifacts(
        job_dir,
        S=measurement.S,
        data=inputs.data,
        clusters=evaluation.clusters,
        model=measurement.model,
        elasticity_png=evaluation.elasticity_png,
    )
    trained = [t for t in measurement.trainings if t is not None]
    result = evaluation.result
    result.update(
        training=trained[0] if len(trained) == 1 else (trained or None),
        timings={**timings, "total_seconds": round(time.perf_counter() - started, 4)},
        device=describe_device(inputs.device),
        artifacts=artifacts,
        spec=spec.model_dump(mode="json"),
        versions=versions(),
    )
    with atomic_open(job_dir / "result.json", "w") as handle:
        json.dump(result, handle, indent=1)
    progress("write", 1.0, "done")
    return result


def describe_device(device: torch.device) -> str:
    """`cpu`, or a CUDA device with its name, e.g. `cuda:0 (NVIDIA H200)`."""
    return str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"


def elasticity_analysis(S_raw: np.ndarray, data: JobData, spec: JobSpec) -> tuple[dict[str, Any], bytes]:
    """Correlation of similarity with geodesic distance over primary pairs of the same class."""
    from workers.compute import analysis, datasets, plots

    if data.coords is None or data.y is None or data.builtin is None:
        raise ValueError("the elasticity analysis needs a synthetic builtin (intrinsic coordinates and labels)")
    coords, labels = data.coords[data.primary], data.y[data.primary]
    distances = np.full((coords.shape[0], coords.shape[0]), np.nan)  # undefined across classes
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        distances[np.ix_(rows, rows)] = datasets.geodesic_distances(
            data.builtin, coords[rows], coords[rows], label=int(label)
        )
    stats = analysis.elasticity_correlation(S_raw, distances)
    off_diagonal = ~np.eye(len(coords), dtype=bool) & np.isfinite(distances)
    title = f"{data.builtin}, {spec.model.arch}: {spec.similarity.kind} similarity"
    png = plots.elasticity_png(S_raw[off_diagonal], distances[off_diagonal], title=title)
    return stats, png


def write_artifacts(
    job_dir: Path,
    *,
    S: np.ndarray,
    data: JobData,
    clusters: np.ndarray | None,
    model: torch.nn.Module | None,
    elasticity_png: bytes | None,
) -> list[str]:
    """Write every artifact atomically; returns their names."""
    from workers.compute import plots

    job_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save_npy(name: str, array: np.ndarray) -> None:
        with atomic_open(job_dir / name) as handle:
            np.save(handle, array, allow_pickle=False)
        written.append(name)

    save_npy("similarity.npy", S.astype(np.float32))
    save_npy("primary_index.npy", data.primary.astype(np.int64))
    if clusters is not None:
        save_npy("clusters.npy", clusters.astype(np.int64))
    if model is not None:
        from safetensors.torch import save

        tensors = {
            name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in model.state_dict().items()
        }
        atomic_write_bytes(job_dir / "weights.safetensors", save(tensors))
        written.append("weights.safetensors")
    order_labels = clusters if clusters is not None else np.zeros(S.shape[0], dtype=np.int64)
    atomic_write_bytes(job_dir / "heatmap.png", plots.heatmap_png(S, order_labels))
    written.append("heatmap.png")
    if elasticity_png is not None:
        atomic_write_bytes(job_dir / "elasticity.png", elasticity_png)
        written.append("elasticity.png")
    written.append("result.json")
    return written


__all__ = ["run_pipeline", "pick_device"]
