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

#: Rows of a class gathered at once by the elasticity analysis.
ELASTICITY_ROWS = 256

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
    device = torch.device(setting)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise JobFailure(f"device {setting!r} was asked for, but this worker has cuda:0 to cuda:{count - 1} only")
    return device


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

    S: the post-processed similarity matrix [n, n] float32, averaged over repeats; model: the first
    repeat's model, at its measured θ; trainings: each repeat's training report (None when the weights
    were not trained); the seconds spent in each of the two stages; analysis and elasticity_png: the
    elasticity analysis of the raw averaged matrix (`elasticity_analysis`), for a synthetic builtin only.
    """

    S: np.ndarray
    model: torch.nn.Module
    trainings: list[dict[str, Any] | None]
    train_seconds: float
    similarity_seconds: float
    analysis: dict[str, Any] | None = None
    elasticity_png: bytes | None = None


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
    clusters = cluster_stage(spec, measurement.S, progress, k=cluster_count(spec, inputs.data)[0])
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

    Memory: the repeats stream into running sums, in place: one n × n sum of the raw matrices, plus one
    of the post-processed matrices when post-processing is not linear (normalize, more than one repeat)
    and the raw mean is needed as well (a synthetic builtin's elasticity analysis). The raw mean is
    analysed first, then post-processed in place into S.
    """
    sim = spec.similarity
    train_seconds = similarity_seconds = 0.0
    trainings = []
    first_model: torch.nn.Module | None = None
    data = inputs.data
    wants_raw = data.coords is not None and data.builtin is not None
    per_repeat = sim.normalize and sim.repeats > 1  # the mean of normalised matrices is not linear in them
    raw_mean = similarity.RepeatMean() if wants_raw or not per_repeat else None
    post_mean = similarity.RepeatMean() if per_repeat else None
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
        if post_mean is not None:
            if raw_mean is not None:
                raw_mean.add(raw.copy() if raw_mean.total is None else raw)
            post_mean.add(similarity.postprocess_(raw, symmetrize=sim.symmetrize, normalize=sim.normalize))
        elif raw_mean is not None:
            raw_mean.add(raw)
        del raw
        if first_model is None:
            first_model = model
        else:
            del model
    assert first_model is not None  # similarity.repeats is at least 1
    analysis = elasticity_png = None
    if raw_mean is not None:
        S_raw = raw_mean.mean()
        del raw_mean
        if wants_raw:
            analysis, elasticity_png = elasticity_analysis(S_raw, data, spec)
        if post_mean is None:
            S = similarity.postprocess_(S_raw, symmetrize=sim.symmetrize, normalize=sim.normalize)
        del S_raw
    if post_mean is not None:
        S = post_mean.mean()
    return Measurement(
        S=S,
        model=first_model,
        trainings=trainings,
        train_seconds=train_seconds,
        similarity_seconds=similarity_seconds,
        analysis=analysis,
        elasticity_png=elasticity_png,
    )


def similarity_stage(
    spec: JobSpec, model: torch.nn.Module, inputs: JobInputs, *, seed: int, progress: Callable[[float, str], None]
) -> np.ndarray:
    """Stage 3, similarity: the raw similarity matrix of the primary examples at the model's θ.

    The auxiliary examples take part where the kind uses them. JobFailure when an entry is not finite,
    naming the examples' largest magnitude (features near float32's range overflow its products).
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
        raise non_finite_failure("the similarity matrix", inputs.X_primary, inputs.X_aux)
    return raw


def non_finite_failure(what: str, *examples: torch.Tensor | None) -> JobFailure:
    """The failure of a similarity (`what`) with non-finite entries, naming the largest magnitude of the
    examples it was measured on (tensors [m, *shape], None or empty ones skipped): features near float32's
    range overflow its products as surely as a diverged θ does."""
    largest = max((float(x.abs().max()) for x in examples if x is not None and x.numel()), default=0.0)
    return JobFailure(
        f"{what} has non-finite entries: a float32 overflow, either because the model's θ diverged or because "
        f"the features are too large (largest |x| = {largest:.3g}; rescale them, e.g. to unit variance, if it is "
        "far above 1)"
    )


def cluster_count(spec: JobSpec, data: JobData) -> tuple[int, str]:
    """(k, where it came from): the spec's k, else the number of primary classes (labelled data), else 2."""
    classes = int(np.unique(data.y[data.primary]).size) if data.y is not None else None
    if spec.clustering is None:
        return 2, "default"
    k, source = spec.clustering.resolve_k(classes)
    return min(k, int(data.primary.size)), source


def cluster_stage(spec: JobSpec, S: np.ndarray, progress: StageProgress, *, k: int) -> np.ndarray | None:
    """Stage 4, clustering: a cluster label per primary example from S (into k clusters); None when the spec
    asks for none."""
    progress("cluster", 0.0, "clustering")
    method = spec.clustering_method()
    if spec.clustering is None or method is None:
        return None
    return clustering.cluster(S, method=method, k=k, seed=spec.seed, n_init=spec.clustering.n_init)


def evaluation_stage(
    spec: JobSpec, data: JobData, measurement: Measurement, clusters: np.ndarray | None, progress: StageProgress
) -> Evaluation:
    """Stage 5, metrics and baselines: score the clusters and the baselines (`cluster_scores`) and, for a
    synthetic builtin, correlate similarity with geodesic distance (`elasticity_analysis`)."""
    result = cluster_scores(spec, data, measurement.S, clusters, progress)
    if measurement.analysis is not None:
        result["analysis"] = measurement.analysis
    return Evaluation(result=result, clusters=clusters, elasticity_png=measurement.elasticity_png)


def cluster_scores(
    spec: JobSpec, data: JobData, S: np.ndarray, clusters: np.ndarray | None, progress: StageProgress
) -> dict[str, Any]:
    """The result's `n`, `clusters`, `metrics` and `baselines` (and `clustering` when the spec clusters).

    With labels, the clusters are scored against them (accuracy, ARI, NMI, within/between ratio), and so
    are the baselines run on the raw features; without, the baselines report their cluster sizes. Without
    clustering, only the within/between similarity ratio is computed (when there are labels).
    """
    result: dict[str, Any] = {"n": int(data.primary.size), "clusters": None, "metrics": None, "baselines": {}}
    if data.label_names is not None:
        result["label_names"] = data.label_names
    labels_true = data.y[data.primary] if data.y is not None else None
    one_class = labels_true is not None and np.unique(labels_true).size < 2
    if one_class:
        assert labels_true is not None
        note = (
            f"the primary examples all have label {labels_true[0]}: accuracy, ARI, NMI and the within/between "
            "ratio need at least two classes among them"
        )
    if spec.clustering is None or clusters is None:
        if one_class:
            result["metrics"], result["metrics_note"] = {"within_between_ratio": None}, note
        elif labels_true is not None:
            result.update(ratio_scores(S, labels_true))
        return result
    k, k_from = cluster_count(spec, data)
    result["clusters"] = clusters.tolist()
    result["clustering"] = {"method": spec.clustering_method(), "k": k, "k_from": k_from}
    if one_class:
        result["metrics"] = {"accuracy": None, "ari": None, "nmi": None, "within_between_ratio": None}
        result["metrics_note"] = note
        if spec.baselines:
            result["baselines_note"] = "baselines skipped: " + note.replace("accuracy, ARI, NMI and the", "their")
        return result
    if labels_true is not None:
        result.update(ratio_scores(S, labels_true, metrics.clustering_metrics(labels_true, clusters)))
    progress("cluster", 0.5, "baselines")
    flat = data.X[data.primary].reshape(data.primary.size, -1)
    for name, labels in baselines.run_baselines(flat, k=k, seed=spec.seed, names=tuple(spec.baselines)).items():
        result["baselines"][name] = (
            metrics.clustering_metrics(labels_true, labels)
            if labels_true is not None
            else {"cluster_sizes": np.bincount(labels, minlength=k).tolist()}
        )
    return result


def ratio_scores(S: np.ndarray, labels_true: np.ndarray, scores: dict[str, float] | None = None) -> dict[str, Any]:
    """The result's `metrics`: `scores` plus the within/between ratio of S [n, n] over the classes
    labels_true [n]; an undefined ratio is null (JSON has no NaN) with `metrics_note` saying why."""
    ratio, why = metrics.similarity_ratio_or_reason(S, labels_true)
    out: dict[str, Any] = {"metrics": {**(scores or {}), "within_between_ratio": ratio}}
    if why is not None:
        out["metrics_note"] = why
    return out


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
        weights_metadata=weights_metadata(spec, list(inputs.data.X.shape[1:])),
        heatmap_title=heatmap_title(spec),
    )
    artifacts[-1:-1] = write_neighbors(job_dir, measurement.S, k=spec.output.neighbors)
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


def write_neighbors(job_dir: Path, S: np.ndarray, *, k: int) -> list[str]:
    """neighbors_index.npy (int32 [n, k]) and neighbors_value.npy (float32 [n, k]): each row's k most similar
    other examples, best first, ties by the lower column. Returns their names."""
    from workers.compute import tiles

    columns, values = tiles.neighbors(S, k, exclude_self=True)
    for name, array in (("neighbors_index.npy", columns), ("neighbors_value.npy", values)):
        with atomic_open(job_dir / name) as handle:
            np.save(handle, array, allow_pickle=False)
    return ["neighbors_index.npy", "neighbors_value.npy"]


def heatmap_title(spec: JobSpec) -> str:
    """The heat map's title: similarity kind and step, model and dataset."""
    sim = spec.similarity
    step = "small-step limit" if sim.step == 0 else f"step {sim.step:g}"
    model = spec.model.model_dump()
    shape = ", ".join(f"{key} {value}" for key, value in model.items() if key != "arch")
    data = spec.dataset if isinstance(spec.dataset, str) else spec.dataset.builtin
    return f"{sim.kind} similarity ({step}), {spec.model.arch} {shape}, dataset {data}"


def weights_metadata(spec: JobSpec, input_shape: list[int]) -> dict[str, str]:
    """What `weights.safetensors` records of how to rebuild its model, as one metadata entry `lelastic`: a
    JSON object of lelastic's version, the model spec, the input shape, the loss and the weights spec.
    (One entry, since safetensors writes several in no fixed order and the file must be reproducible.)"""
    from service import __version__

    described = {
        "lelastic_version": __version__,
        "model": spec.model.model_dump(mode="json"),
        "input_shape": input_shape,
        "loss": spec.loss,
        "weights": spec.weights.model_dump(mode="json"),
    }
    return {"lelastic": json.dumps(described, sort_keys=True)}


def describe_device(device: torch.device) -> str:
    """`cpu`, or a CUDA device with its name, e.g. `cuda:0 (NVIDIA H200)`."""
    return str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"


def elasticity_analysis(S_raw: np.ndarray, data: JobData, spec: JobSpec) -> tuple[dict[str, Any], bytes]:
    """Correlation of similarity with geodesic distance over primary pairs of the same class.

    S_raw [n, n] is only read. The pairs (i, j), i ≠ j, of each class are gathered [ELASTICITY_ROWS] rows
    at a time into two float32 vectors (similarity, distance) of Σ_c n_c (n_c − 1) entries: no n × n
    temporary.
    """
    from workers.compute import analysis, datasets, plots

    if data.coords is None or data.y is None or data.builtin is None:
        raise ValueError("the elasticity analysis needs a synthetic builtin (intrinsic coordinates and labels)")
    coords, labels = data.coords[data.primary], data.y[data.primary]
    classes = [(int(label), np.flatnonzero(labels == label)) for label in np.unique(labels)]
    total = sum(rows.size * (rows.size - 1) for _, rows in classes)
    s = np.empty(total, dtype=np.float32)
    d = np.empty(total, dtype=np.float32)
    at = 0
    for label, rows in classes:
        for r0 in range(0, rows.size, ELASTICITY_ROWS):
            chunk = rows[r0 : r0 + ELASTICITY_ROWS]
            off = np.ones((chunk.size, rows.size), dtype=bool)
            off[np.arange(chunk.size), r0 + np.arange(chunk.size)] = False  # i == j
            count = int(off.sum())
            s[at : at + count] = S_raw[np.ix_(chunk, rows)][off]
            d[at : at + count] = datasets.geodesic_distances(data.builtin, coords[chunk], coords[rows], label=label)[
                off
            ]
            at += count
    keep = np.isfinite(s) & np.isfinite(d)
    if not keep.all():
        s, d = s[keep], d[keep]
    stats = analysis.pair_correlation(s, d)
    title = f"{data.builtin}, {spec.model.arch}: {spec.similarity.kind} similarity"
    pearson = stats["pearson"]
    png = plots.elasticity_png(s, d, title=title, r=float("nan") if pearson is None else float(pearson))
    return stats, png


def write_artifacts(
    job_dir: Path,
    *,
    S: np.ndarray,
    data: JobData,
    clusters: np.ndarray | None,
    model: torch.nn.Module | None,
    elasticity_png: bytes | None,
    weights_metadata: dict[str, str] | None = None,
    heatmap_title: str = "Similarity matrix",
) -> list[str]:
    """Write every artifact atomically; returns their names. `weights_metadata` goes into the
    safetensors header (`__metadata__`, string to string)."""
    from workers.compute import plots

    job_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save_npy(name: str, array: np.ndarray) -> None:
        with atomic_open(job_dir / name) as handle:
            np.save(handle, array, allow_pickle=False)
        written.append(name)

    save_npy("similarity.npy", np.ascontiguousarray(S, dtype=np.float32))  # no copy of a float32 S
    save_npy("primary_index.npy", data.primary.astype(np.int64))
    # The primary examples themselves (flattened) and their labels: what a client needs to show them.
    save_npy("examples.npy", data.X[data.primary].reshape(data.primary.size, -1).astype(np.float32))
    if data.y is not None:
        save_npy("labels.npy", data.y[data.primary].astype(np.int64))
    if clusters is not None:
        save_npy("clusters.npy", clusters.astype(np.int64))
    if model is not None:
        from safetensors.torch import save

        tensors = {
            name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in model.state_dict().items()
        }
        atomic_write_bytes(job_dir / "weights.safetensors", save(tensors, metadata=weights_metadata))
        written.append("weights.safetensors")
    order_labels = clusters if clusters is not None else np.zeros(S.shape[0], dtype=np.int64)
    atomic_write_bytes(
        job_dir / "heatmap.png",
        plots.heatmap_png(
            S,
            order_labels,
            title=heatmap_title,
            true_labels=data.y[data.primary] if data.y is not None else None,
        ),
    )
    written.append("heatmap.png")
    if elasticity_png is not None:
        atomic_write_bytes(job_dir / "elasticity.png", elasticity_png)
        written.append("elasticity.png")
    written.append("result.json")
    return written


__all__ = ["run_pipeline", "pick_device"]
