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
    loc: list[str | int] = Field(description="Where the problem is: body field path, header, query or path parameter.")
    msg: str = Field(description="What is wrong and what is allowed.")
    input: Any = Field(None, description="The offending value.")


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
    detail: list[ErrorItem]


class TensorInfo(BaseModel):
    dtype: str = Field(examples=["F32"])
    shape: list[int] = Field(examples=[[64, 64]])


class DatasetOut(BaseModel):
    """An uploaded dataset (kind "dataset") or set of weights (kind "weights")."""

    id: str
    kind: Literal["dataset", "weights"]
    name: str = Field(description="The uploaded file's name.")
    created_at: datetime
    n: int | None = Field(None, description="Number of examples (datasets only).")
    shape: list[int] | None = Field(None, description="Shape of one example (datasets only).")
    dtype: str | None = Field(None, description="Stored dtype of X: float32 (datasets only).")
    has_labels: bool | None = Field(None, description="Whether the dataset has integer labels y.")
    classes: list[int] | None = Field(None, description="Sorted distinct labels, or null without labels.")
    class_counts: dict[str, int] | None = Field(None, description="Examples per label (labelled datasets).")
    tensors: dict[str, TensorInfo] | None = Field(None, description="Name → dtype and shape (weights only).")

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
                }
            ]
        }
    )

    data: list[DatasetOut]
    count: int = Field(description="Number of datasets in `data` (all of the tenant's).")


class Progress(BaseModel):
    fraction: float = Field(ge=0, le=1, description="Share of the job done, 0 to 1.")
    stage: str = Field(examples=["training"])
    message: str = ""


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

    id: str
    status: JobStatusValue
    progress: Progress
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
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

    data: list[JobOut]
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
    train_seconds: float | None = None
    similarity_seconds: float | None = None
    clustering_seconds: float | None = None
    total_seconds: float | None = None


class ResultOut(BaseModel):
    """The outcome of a succeeded job, as the worker wrote it, plus download links and the matrix."""

    model_config = ConfigDict(extra="allow")
    n: int | None = Field(None, description="Number of primary examples (size of the similarity matrix).")
    clusters: Any = Field(None, description="Cluster assignment of each primary example, with its quality.")
    metrics: Any = None
    baselines: Any = None
    timings: Timings | None = None
    device: str | None = Field(None, examples=["cuda:0"])
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="Artifact name → download URL.",
        examples=[{"similarity.npy": "/v1/jobs/0f1e.../artifacts/similarity.npy"}],
    )
    similarity: list[list[float | None]] | None = Field(
        None, description="The n × n similarity matrix, when n ≤ inline_matrix_max_n (else download it)."
    )
    similarity_inline: bool = Field(description="Whether `similarity` holds the matrix.")
    spec: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    training: Any = None
    analysis: Any = None


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


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

    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="Check name → 'ok' or why it failed.")
    failed: list[str] = Field(description="Names of the checks that failed.")
