"""A succeeded job's result (with the similarity matrix inline when it is small) and its artifact files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from service.api.errors import Conflict, NotFound, replace_non_finite
from service.api.usecases.queries import owned_job
from service.contract.jobstate import JobStatus
from service.contract.settings import Settings
from service.contract.storage import ARTIFACT_TYPES, DataDir


def read_result(conn: redis.Redis, data_dir: DataDir, settings: Settings, job_id: str, tenant: str) -> str:
    """The result document of the tenant's succeeded job, as JSON text.

    Artifact names become download URLs, and the similarity matrix is inlined for n up to
    `inline_matrix_max_n`. NaN/±Inf (which JSON has no number for) become null. Conflict while the job
    has not succeeded.
    """
    record = owned_job(conn, job_id, tenant)
    if record.status != JobStatus.SUCCEEDED or record.result is None:
        raise Conflict.at(
            ["path", "job_id"],
            f"the job is {record.status}; a result exists only once it has succeeded",
            job_id,
            status=record.status,
        )
    result = dict(record.result)
    result["artifacts"] = {
        name: f"/v1/jobs/{job_id}/artifacts/{name}" for name in result.get("artifacts") or [] if name in ARTIFACT_TYPES
    }
    result["similarity"] = _inline_similarity(data_dir.artifact(job_id, "similarity.npy"), result.get("n"), settings)
    result["similarity_inline"] = result["similarity"] is not None
    try:
        return json.dumps(result, allow_nan=False)
    except ValueError:  # a NaN/±Inf metric: JSON has no such number, so it becomes null
        return json.dumps(replace_non_finite(result, lambda _: None), allow_nan=False)


def _inline_similarity(path: Path, n: int | None, settings: Settings) -> list[list[float | None]] | None:
    """The similarity matrix as nested lists (non-finite entries as None), or None when it is too large or absent."""
    if not path.exists() or (n is not None and n > settings.inline_matrix_max_n):
        return None
    matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    if matrix.ndim != 2 or matrix.shape[0] > settings.inline_matrix_max_n:
        return None
    values = np.asarray(matrix, dtype=np.float64)
    rows: list[list[float | None]] = values.tolist()
    if np.isfinite(values).all():
        return rows
    return [[value if value is not None and math.isfinite(value) else None for value in row] for row in rows]


@dataclass(frozen=True)
class Artifact:
    """An artifact file to send: where it is, its media type and the download name (None for images)."""

    path: Path
    media_type: str
    filename: str | None


def read_artifact(conn: redis.Redis, data_dir: DataDir, job_id: str, name: str, tenant: str) -> Artifact:
    """The artifact `name` of the tenant's job, once the job wrote it; NotFound otherwise."""
    owned_job(conn, job_id, tenant)
    if name not in ARTIFACT_TYPES:
        raise NotFound.at(["path", "name"], f"no such artifact; artifacts are {sorted(ARTIFACT_TYPES)}", name)
    path = data_dir.artifact(job_id, name)
    jobs_root = (data_dir.root / "jobs").resolve()
    if not path.is_file() or jobs_root not in path.resolve().parents:
        raise NotFound.at(["path", "name"], "this job has not written this artifact (yet)", name)
    media_type = ARTIFACT_TYPES[name]
    return Artifact(path=path, media_type=media_type, filename=None if media_type.startswith("image/") else name)
