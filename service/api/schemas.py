"""Response models of the HTTP API (requests are `service.contract.spec.JobSpec` and multipart uploads).

Families: `XOut` is one resource, `XsOut` a list `{data, count}`. Timestamps are ISO-8601 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field

from service.contract.jobstate import JobStatus
from service.contract.records import JobRecord
from service.contract.spec import EXAMPLE_SPEC

if TYPE_CHECKING:
    JobStatusValue = JobStatus
else:
    #: A job status in a model or query: validated to a `JobStatus`, its schema the values inline
    #: (`{"enum": ["queued", ...], "type": "string"}`) rather than a reference to an enum schema.
    JobStatusValue = Literal[tuple(JobStatus)]


@overload
def utc(timestamp: float) -> datetime: ...


@overload
def utc(timestamp: None) -> None: ...


def utc(timestamp: float | None) -> datetime | None:
    """A Unix timestamp as an aware UTC datetime (None stays None)."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


class ErrorItem(BaseModel):
    """One problem of a request."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "literal_error",
                    "loc": ["body", "dataset", "builtin"],
                    "msg": "Input should be 'digits', 'torus', ...; did you mean 'digits'?",
                    "input": "digit",
                    "ctx": {"expected": "'digits', 'torus', ..."},
                }
            ]
        },
    )
    loc: list[str | int] = Field(
        description="Where the problem is, in the request's own terms: `body` and the field path as written, or "
        "`header`, `query` or `path` and the parameter's name."
    )
    msg: str = Field(description="What is wrong and what is allowed (with a 'did you mean' when one is close).")
    input: Any = Field(None, description="The offending value (long values are cut short).")
    type: str | None = Field(
        None, description="A machine-readable kind of problem (pydantic's error type for request validation)."
    )
    ctx: dict[str, Any] | None = Field(
        None, description="Details of the problem, e.g. the allowed values or the limit and its setting."
    )


class ErrorOut(BaseModel):
    """Every 4xx/5xx body. (422 from request validation also carries pydantic's `type` and `ctx`.)"""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "detail": [
                        {
                            "loc": ["body", "primary", "labels"],
                            "msg": "labels [11] do not occur in the dataset; its classes are 0 to 9",
                            "input": [3, 11],
                        }
                    ]
                }
            ]
        },
    )
    detail: list[ErrorItem] = Field(description="Every problem found, one entry per mistake.")


class TensorInfo(BaseModel):
    """One tensor of an uploaded .safetensors file."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"dtype": "F32", "shape": [64, 64]}]})
    dtype: str = Field(examples=["F32"], description="The safetensors dtype.")
    shape: list[int] = Field(examples=[[64, 64]], description="The tensor's shape.")


class DatasetOut(BaseModel):
    """An uploaded dataset (kind "dataset") or set of weights (kind "weights")."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                    "kind": "dataset",
                    "name": "iris.csv",
                    "created_at": "2026-11-26T20:59:00Z",
                    "n": 150,
                    "shape": [4],
                    "dtype": "float32",
                    "has_labels": True,
                    "classes": [0, 1, 2],
                    "class_counts": {"0": 50, "1": 50, "2": 50},
                    "tensors": None,
                    "label_names": ["setosa", "versicolor", "virginica"],
                    "label_column": "species",
                    "notes": None,
                }
            ]
        }
    )
    id: str = Field(description="The upload's id: a job's `dataset`, or `weights.weights` for weights.")
    kind: Literal["dataset", "weights"] = Field(description="dataset: examples; weights: a .safetensors file.")
    name: str = Field(description="The uploaded file's name.")
    created_at: datetime = Field(description="When it was uploaded (ISO-8601, UTC).")
    n: int | None = Field(None, description="Number of examples (datasets only).")
    shape: list[int] | None = Field(None, description="Shape of one example (datasets only).")
    dtype: str | None = Field(None, description="Stored dtype of X: float32 (datasets only).")
    has_labels: bool | None = Field(None, description="Whether the dataset has integer labels y.")
    classes: list[int] | None = Field(None, description="Sorted distinct labels, or null without labels.")
    class_counts: dict[str, int] | None = Field(None, description="Examples per label (labelled datasets).")
    tensors: dict[str, TensorInfo] | None = Field(None, description="Name → dtype and shape (weights only).")
    label_names: list[str] | None = Field(
        None,
        description="String labels' original names, by integer label: label i of `classes` is `label_names[i]`; "
        'job selections may name them (`{"labels": ["cat"]}`). Null for integer labels.',
    )
    label_column: str | None = Field(None, description="The CSV column the labels came from (CSV uploads).")
    notes: list[str] | None = Field(None, description="What the upload found, e.g. a label column found by its name.")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DatasetOut:
        fields = {k: v for k, v in record.items() if k in cls.model_fields}
        fields["created_at"] = utc(record["created_at"])
        return cls(**fields)


class DatasetsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": [
                        {
                            "id": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                            "kind": "dataset",
                            "name": "digits.npz",
                            "created_at": "2026-11-26T20:59:00Z",
                            "n": 1797,
                            "shape": [64],
                            "dtype": "float32",
                            "has_labels": True,
                            "classes": list(range(10)),
                            "class_counts": None,
                            "tensors": None,
                        }
                    ],
                    "count": 1,
                    "next_cursor": None,
                }
            ]
        }
    )

    data: list[DatasetOut] = Field(description="The datasets and weights of this page, newest first.")
    count: int = Field(description="Number of datasets on this page (not the tenant's total).")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


class TileProgress(BaseModel):
    """How far a sharded job's tiles are."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"done": 120, "total": 325, "per_second": 2.4, "eta_seconds": 85.4}]}
    )

    done: int = Field(ge=0, description="Tiles written.")
    total: int = Field(ge=1, description="Tiles planned.")
    per_second: float = Field(ge=0, description="Tiles written per second since the tiles were queued.")
    eta_seconds: float | None = Field(
        None, description="Estimated seconds until every tile is written, at that rate (null before the first)."
    )


class Progress(BaseModel):
    """How far a job is."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"fraction": 0.31, "stage": "train", "message": "epoch 62/200"}]}
    )
    fraction: float = Field(ge=0, le=1, description="Share of the job done, 0 to 1.")
    stage: str = Field(examples=["train"], description="The stage running: load, train, similarity, cluster or write.")
    message: str = Field(default="", description="What the stage is doing, e.g. the epoch and the loss.")
    tiles: TileProgress | None = Field(
        None, description="A sharded job's tiles while they run (stage `tiles`); null for other stages and jobs."
    )


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f2b9c0e8d7a4c1e9b6f5a4d3c2b1a09",
                    "status": "running",
                    "progress": {"fraction": 0.31, "stage": "train", "message": "epoch 62/200, batch loss 0.021"},
                    "created_at": "2026-11-26T21:00:00Z",
                    "started_at": "2026-11-26T21:00:01Z",
                    "finished_at": None,
                    "error": None,
                    "spec": EXAMPLE_SPEC,
                }
            ]
        }
    )

    id: str = Field(description="The job's id (32 hex digits).")
    status: JobStatusValue = Field(description="queued → running → succeeded | failed | canceled.")
    progress: Progress = Field(description="How far the job is.")
    created_at: datetime = Field(description="When it was submitted (ISO-8601, UTC).")
    started_at: datetime | None = Field(None, description="When a worker started it (null while queued).")
    finished_at: datetime | None = Field(None, description="When it reached a final status.")
    error: str | None = Field(None, description="Why the job failed (failed jobs only).")
    spec: dict[str, Any] = Field(description="The job spec with every default filled in.")

    @classmethod
    def from_record(cls, record: JobRecord) -> JobOut:
        progress = {"fraction": 0.0, "stage": "", "message": "", **(record.progress or {})}
        return cls(
            id=record.id,
            status=record.status,
            progress=Progress(**progress),
            created_at=utc(record.created_at),
            started_at=utc(record.started_at),
            finished_at=utc(record.finished_at),
            error=record.error,
            spec=record.spec,
        )


class JobsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": [
                        {
                            "id": "3f2b9c0e8d7a4c1e9b6f5a4d3c2b1a09",
                            "status": "running",
                            "progress": {
                                "fraction": 0.31,
                                "stage": "train",
                                "message": "epoch 62/200, batch loss 0.021",
                            },
                            "created_at": "2026-11-26T21:00:00Z",
                            "started_at": "2026-11-26T21:00:01Z",
                            "finished_at": None,
                            "error": None,
                            "spec": EXAMPLE_SPEC,
                        }
                    ],
                    "count": 1,
                    "next_cursor": "1795729200.123",
                }
            ]
        }
    )

    data: list[JobOut] = Field(description="The jobs of this page, newest first.")
    count: int = Field(description="Number of jobs on this page.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


class Timings(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "train_seconds": 40.5,
                    "similarity_seconds": 0.03,
                    "clustering_seconds": 3.3,
                    "total_seconds": 44.6,
                }
            ]
        },
    )
    train_seconds: float | None = Field(None, description="Bringing the model to its weights (training).")
    similarity_seconds: float | None = Field(None, description="Computing the similarity matrix.")
    clustering_seconds: float | None = Field(None, description="Clustering, metrics and baselines.")
    total_seconds: float | None = Field(None, description="The whole job, artifacts included.")


class ResultOut(BaseModel):
    """The outcome of a succeeded job, as the worker wrote it (`result.json`), plus download links.

    The similarity matrix is inline only on request (`?include=similarity`)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "n": 365,
                    "clusters": [0, 1, 1, 0],
                    "clustering": {"method": "kernel_kmeans", "k": 2, "k_from": "spec"},
                    "metrics": {"accuracy": 0.97, "ari": 0.883, "nmi": 0.805, "within_between_ratio": 1.185},
                    "baselines": {"kmeans_raw": {"accuracy": 0.945, "ari": 0.792, "nmi": 0.7}},
                    "timings": {"train_seconds": 4.1, "similarity_seconds": 0.04, "clustering_seconds": 0.6},
                    "device": "cpu",
                    "artifacts": {
                        "similarity.npy": "/v1/jobs/3f2b9c0e8d7a4c1e9b6f5a4d3c2b1a09/artifacts/similarity.npy"
                    },
                    "similarity": None,
                    "similarity_inline": False,
                    "similarity_omitted": "not requested; add ?include=similarity",
                    "spec": EXAMPLE_SPEC,
                    "versions": {"lelastic": "0.1.0", "torch": "2.13.0+cpu"},
                }
            ]
        },
    )
    n: int | None = Field(None, description="Number of primary examples (size of the similarity matrix).")
    clusters: list[int] | None = Field(
        None,
        description="The cluster (0 to k − 1) of each primary example, in primary order (the rows of the "
        "similarity matrix); null when the spec turned clustering off. Its quality is in `metrics`.",
    )
    clustering: dict[str, Any] | None = Field(
        None,
        description="The clustering run: `method` (after resolving auto), `k`, and `k_from` (`spec`, or "
        "`classes` when k defaulted to the number of primary classes, or `default`: 2 without labels).",
    )
    metrics: dict[str, Any] | None = Field(
        None,
        description="Scores against the true labels: `accuracy` (best cluster-to-class matching), `ari`, `nmi`, "
        "`within_between_ratio` (mean similarity within classes over between). Null without labels; a "
        "score is null with `metrics_note` saying why when it is undefined (fewer than two primary classes; "
        "for the ratio also no two examples of one class, or a mean similarity of 0 between classes).",
    )
    baselines: dict[str, Any] | None = Field(
        None,
        description="Baseline name → the same scores for clusterings of the raw features (or `cluster_sizes` "
        "without labels); `{}` when the spec asks for none or they are undefined (see `baselines_note`).",
    )
    timings: Timings | None = Field(None, description="Seconds spent in each stage.")
    device: str | None = Field(None, examples=["cuda:0"], description="Where the job computed.")
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="Artifact name → download URL.",
        examples=[{"similarity.npy": "/v1/jobs/0f1e.../artifacts/similarity.npy"}],
    )
    similarity: list[list[float | None]] | None = Field(
        None,
        description="The n × n similarity matrix, with `?include=similarity` and n ≤ inline_matrix_max_n "
        "(else null: download `similarity.npy`).",
    )
    similarity_inline: bool = Field(description="Whether `similarity` holds the matrix.")
    similarity_omitted: str | None = Field(None, description="Why `similarity` is null.")
    spec: dict[str, Any] | None = Field(None, description="The job spec with every default filled in.")
    versions: dict[str, Any] | None = Field(
        None, description="Versions of lelastic, Python, torch, NumPy, scikit-learn."
    )
    training: Any = Field(
        None, description="The training report (final loss and accuracy, epochs) of trained weights, else null."
    )
    analysis: dict[str, Any] | None = Field(
        None,
        description="Synthetic builtins only: correlation of similarity with geodesic distance over pairs of the "
        "same class (`pearson`, `spearman`, `pairs`).",
    )
    label_names: list[str] | None = Field(
        None, description="The original class names of a dataset uploaded with string labels, by integer label."
    )


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = Field(default="ok", description="Always ok: the process answers.")


class ReadyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "unavailable",
                    "checks": {
                        "redis": "ok",
                        "data_dir": "ok",
                        "workers": "no live worker listens on queue 'lelastic'",
                    },
                    "failed": ["workers"],
                }
            ]
        }
    )

    status: Literal["ready", "unavailable"] = Field(description="ready when every check passed.")
    checks: dict[str, str] = Field(description="Check name → 'ok' or why it failed.")
    failed: list[str] = Field(description="Names of the checks that failed.")
