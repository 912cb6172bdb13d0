"""A succeeded job's result (the similarity matrix inline on request) and its artifact files."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from service.api.errors import Conflict, NotFound, replace_non_finite
from service.api.usecases.queries import owned_job
from service.contract.jobstate import JobStatus
from service.contract.settings import Settings
from service.contract.storage import ARTIFACT_TYPES, DataDir

#: Matrix rows encoded per chunk of a streamed result.
ROWS_PER_CHUNK = 64


def read_result(
    conn: redis.Redis,
    data_dir: DataDir,
    settings: Settings,
    job_id: str,
    tenant: str,
    *,
    include_similarity: bool = False,
) -> Iterator[str]:
    """The result document of the tenant's succeeded job, as chunks of JSON text.

    The document is the job's stored `result.json` (the job record's copy when the file is gone) with
    artifact names turned into download URLs. With `include_similarity`, the similarity matrix follows
    as `similarity`, streamed row by row from `similarity.npy`, when n is at most
    `inline_matrix_max_n`; otherwise `similarity` is null and `similarity_omitted` says why. NaN/±Inf
    (which JSON has no number for) become null. Conflict while the job has not succeeded.
    """
    record = owned_job(conn, job_id, tenant)
    if record.status != JobStatus.SUCCEEDED or record.result is None:
        raise Conflict.at(
            ["path", "job_id"],
            f"the job is {record.status}; a result exists only once it has succeeded",
            job_id,
            status=record.status,
        )
    result = _stored_result(data_dir.artifact(job_id, "result.json"), record.result)
    result["artifacts"] = {
        name: f"/v1/jobs/{job_id}/artifacts/{name}" for name in result.get("artifacts") or [] if name in ARTIFACT_TYPES
    }
    result.pop("similarity", None)
    matrix, omitted = _matrix(data_dir.artifact(job_id, "similarity.npy"), result.get("n"), settings)
    if not include_similarity:
        omitted = "not requested; add ?include=similarity, or download artifacts/similarity.npy"
        matrix = None
    result["similarity_inline"] = matrix is not None
    if matrix is None:
        result["similarity"] = None
        result["similarity_omitted"] = omitted
        yield _dumps(result)
        return
    head = _dumps(result)
    yield head[:-1] + (', "similarity": [' if len(head) > 2 else '"similarity": [')
    for start in range(0, matrix.shape[0], ROWS_PER_CHUNK):
        rows = _rows_json(matrix[start : start + ROWS_PER_CHUNK])
        yield ("," if start else "") + rows
    yield "]}"


def _stored_result(path: Path, fallback: dict[str, Any]) -> dict[str, Any]:
    """The result document the worker wrote as result.json, or the job record's copy of it."""
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return dict(fallback)
    return stored if isinstance(stored, dict) else dict(fallback)


def _dumps(value: dict[str, Any]) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # a NaN/±Inf metric: JSON has no such number, so it becomes null
        return json.dumps(replace_non_finite(value, lambda _: None), allow_nan=False)


def _matrix(path: Path, n: int | None, settings: Settings) -> tuple[np.ndarray | None, str]:
    """The similarity matrix memory-mapped, or None and why it is not inlined."""
    limit = settings.inline_matrix_max_n
    too_large = (
        f"n = {{}} exceeds inline_matrix_max_n = {limit} (LELASTIC_INLINE_MATRIX_MAX_N); "
        "download artifacts/similarity.npy"
    )
    if n is not None and n > limit:
        return None, too_large.format(n)
    if not path.exists():
        return None, "the job wrote no similarity.npy"
    matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    if matrix.ndim != 2:
        return None, "similarity.npy is not a matrix"
    if matrix.shape[0] > limit:
        return None, too_large.format(matrix.shape[0])
    return matrix, ""


def _rows_json(block: np.ndarray) -> str:
    """Rows of the matrix as JSON arrays joined by commas (non-finite entries as null)."""
    values = np.asarray(block, dtype=np.float64)
    rows: list[list[float | None]] = values.tolist()
    if not np.isfinite(values).all():
        rows = [[value if value is not None and math.isfinite(value) else None for value in row] for row in rows]
    return ",".join(json.dumps(row) for row in rows)


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
