"""One job from spec to result: data → θ → similarity → clustering → metrics → artifacts.

`run_pipeline` is the adapter between a job spec and the pure engine in `workers/compute`; it knows
nothing of Redis (progress goes through a callback) and writes only inside the job's folder.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
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
        return lambda fraction, message="": self(stage, start + (end - start) * fraction, message)


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
    """Build the model and bring it to the spec's θ. Returns (model, training report or None)."""
    input_shape = list(data.X.shape[1:])
    model = models.build_model(spec.model, input_shape, seed=seed).to(device)
    weights = spec.weights
    if isinstance(weights, UploadedWeights):
        from safetensors.torch import load_file

        path = data_dir.weights_file(weights.weights)
        if not path.exists():
            raise JobFailure(f"weights upload {weights.weights!r} no longer exists")
        try:
            models.load_weights(model, load_file(str(path), device=str(device)))
        except ValueError as error:
            raise JobFailure(f"uploaded weights do not fit the model: {error}") from error
        return model, None
    if not isinstance(weights, TrainedWeights):
        return model, None
    rows = np.concatenate([data.primary, data.auxiliary])
    X = torch.from_numpy(data.X[rows]).to(device)
    y = torch.cat([torch.ones(data.primary.size), torch.zeros(data.auxiliary.size)]).to(device)
    try:
        report = training.train(
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
    return model, report


def run_pipeline(
    spec: JobSpec,
    *,
    job_dir: Path,
    data_dir: DataDir,
    device_setting: str = "auto",
    report: Progress = lambda fraction, stage, message: None,
) -> dict[str, Any]:
    """Compute everything the spec asks for, write the artifacts into `job_dir`, return the result."""
    progress = StageProgress(report)
    started = time.perf_counter()
    progress("load", 0.0, "loading the dataset")
    device = pick_device(device_setting)
    data = resolve(spec, data_dir)
    X_primary = torch.from_numpy(data.X[data.primary]).to(device)
    X_aux = torch.from_numpy(data.X[data.auxiliary]).to(device) if data.auxiliary.size else None

    sim = spec.similarity
    train_seconds = similarity_seconds = 0.0
    matrices, raw_matrices, trainings = [], [], []
    first_model = None
    for repeat in range(sim.repeats):
        share = (repeat / sim.repeats, (repeat + 1) / sim.repeats)
        tick = time.perf_counter()
        model, train_report = measure_theta(
            spec,
            data,
            seed=spec.seed + repeat,
            device=device,
            data_dir=data_dir,
            progress=progress.within("train", *share),
        )
        train_seconds += time.perf_counter() - tick
        trainings.append(train_report)
        tick = time.perf_counter()
        raw = similarity.similarity(
            model,
            X_primary,
            kind=sim.kind,
            step=sim.step,
            loss=spec.loss,
            schedule=sim.schedule,
            X_aux=X_aux,
            seed=spec.seed + repeat,
            progress=progress.within("similarity", *share),
        )
        similarity_seconds += time.perf_counter() - tick
        if not np.all(np.isfinite(raw)):
            raise JobFailure("the similarity matrix has non-finite entries (the model's θ may have diverged)")
        raw_matrices.append(raw)
        matrices.append(similarity.postprocess(raw, symmetrize=sim.symmetrize, normalize=sim.normalize))
        if first_model is None:
            first_model = model
    S = np.mean(matrices, axis=0).astype(np.float32) if sim.repeats > 1 else matrices[0].astype(np.float32)
    S_raw = np.mean(raw_matrices, axis=0) if sim.repeats > 1 else raw_matrices[0]

    tick = time.perf_counter()
    progress("cluster", 0.0, "clustering")
    result: dict[str, Any] = {"n": int(data.primary.size), "clusters": None, "metrics": None, "baselines": {}}
    labels_true = data.y[data.primary] if data.y is not None else None
    clusters = None
    if spec.clustering is not None:
        k = spec.clustering.k
        clusters = clustering.cluster(
            S, method=spec.clustering_method(), k=k, seed=spec.seed, n_init=spec.clustering.n_init
        )
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
    elif labels_true is not None:
        result["metrics"] = {"within_between_ratio": metrics.similarity_ratio(S, labels_true)}
    analysis_png = None
    if data.coords is not None and data.builtin is not None:
        result["analysis"], analysis_png = elasticity_analysis(S_raw, data, spec)
    clustering_seconds = time.perf_counter() - tick

    progress("write", 0.0, "writing artifacts")
    artifacts = write_artifacts(
        job_dir, S=S, data=data, clusters=clusters, model=first_model, elasticity_png=analysis_png
    )
    trained = [t for t in trainings if t is not None]
    result.update(
        training=trained[0] if len(trained) == 1 else (trained or None),
        timings={
            "train_seconds": round(train_seconds, 4),
            "similarity_seconds": round(similarity_seconds, 4),
            "clustering_seconds": round(clustering_seconds, 4),
            "total_seconds": round(time.perf_counter() - started, 4),
        },
        device=str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        artifacts=artifacts,
        spec=spec.model_dump(mode="json"),
        versions=versions(),
    )
    with atomic_open(job_dir / "result.json", "w") as handle:
        json.dump(result, handle, indent=1)
    progress("write", 1.0, "done")
    return result


def elasticity_analysis(S_raw: np.ndarray, data: JobData, spec: JobSpec) -> tuple[dict[str, Any], bytes]:
    """Correlation of similarity with geodesic distance over primary pairs of the same class."""
    from workers.compute import analysis, datasets, plots

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
