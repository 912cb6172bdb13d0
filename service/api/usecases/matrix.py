"""Parts of a succeeded job's matrix without loading the rest: rows A..B-1 of similarity.npy, and one row's
k nearest neighbours (both memory-mapped)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import redis

from service.api.errors import Conflict, InvalidInput, NotFound
from service.api.usecases.queries import owned_job
from service.contract.jobstate import JobStatus
from service.contract.settings import Settings
from service.contract.storage import DataDir

ROWS = re.compile(r"^(\d{1,9}):(\d{1,9})$")


def _succeeded_dir(conn: redis.Redis, data_dir: DataDir, job_id: str, tenant: str) -> Path:
    record = owned_job(conn, job_id, tenant)
    if record.status != JobStatus.SUCCEEDED:
        raise Conflict.at(
            ["path", "job_id"],
            f"the job is {record.status}; its matrix exists only once it has succeeded",
            job_id,
            status=record.status,
        )
    return data_dir.job_dir(job_id)


def _open(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise NotFound.at(["path", "job_id"], f"this job wrote no {what} (see the spec's `output`)", path.name)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def similarity_rows(
    conn: redis.Redis, data_dir: DataDir, settings: Settings, job_id: str, tenant: str, rows: str
) -> bytes:
    """Rows A..B-1 (`rows` = "A:B") of the job's matrix as an .npy file (float32 [B-A, n_cols])."""
    job_dir = _succeeded_dir(conn, data_dir, job_id, tenant)
    match = ROWS.match(rows)
    if match is None:
        raise InvalidInput.at(["query", "rows"], "must be A:B, rows A to B-1 (0 ≤ A < B ≤ n)", rows)
    matrix = _open(job_dir / "similarity.npy", "similarity.npy")
    start, stop = int(match.group(1)), int(match.group(2))
    n_rows, n_cols = matrix.shape
    if not 0 <= start < stop <= n_rows:
        raise InvalidInput.at(["query", "rows"], f"must be A:B with 0 ≤ A < B ≤ n = {n_rows}", rows)
    size = (stop - start) * n_cols * 4
    if size > settings.max_slice_bytes:
        most = max(1, settings.max_slice_bytes // (4 * n_cols))
        raise InvalidInput.at(
            ["query", "rows"],
            f"{stop - start} rows of {n_cols} float32 are {size} bytes, over max_slice_bytes = "
            f"{settings.max_slice_bytes} (LELASTIC_MAX_SLICE_BYTES): ask for at most {most} rows at once",
            rows,
        )
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(matrix[start:stop], dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def neighbors(conn: redis.Redis, data_dir: DataDir, job_id: str, tenant: str, row: int) -> dict[str, Any]:
    """Row `row`'s k nearest neighbours: each one's column, dataset row and similarity, best first."""
    job_dir = _succeeded_dir(conn, data_dir, job_id, tenant)
    index = _open(job_dir / "neighbors_index.npy", "neighbors_index.npy")
    value = _open(job_dir / "neighbors_value.npy", "neighbors_value.npy")
    n_rows = index.shape[0]
    if not 0 <= row < n_rows:
        raise InvalidInput.at(["query", "row"], f"must be a row from 0 to {n_rows - 1}", row)
    primary = np.load(job_dir / "primary_index.npy", mmap_mode="r", allow_pickle=False)
    observed_path = job_dir / "observed_index.npy"
    observed = np.load(observed_path, mmap_mode="r", allow_pickle=False) if observed_path.is_file() else primary
    columns = np.asarray(index[row], dtype=np.int64)
    values = np.asarray(value[row], dtype=np.float64)
    return {
        "row": row,
        "dataset_row": int(primary[row]),
        "neighbors": [
            {"column": int(c), "dataset_row": int(observed[c]), "value": float(v)}
            for c, v in zip(columns, values, strict=True)
        ],
    }
