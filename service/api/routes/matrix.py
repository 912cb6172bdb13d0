"""/v1/jobs/{id}/similarity and /v1/jobs/{id}/neighbors: parts of a job's matrix, read memory-mapped."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from service.api.deps import DataDirDep, RedisDep, SettingsDep, TenantDep
from service.api.schemas import ErrorOut
from service.api.usecases import matrix

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No job with this id, or it wrote no such file."},
    409: {"model": ErrorOut, "description": "The job has not succeeded."},
    422: {"model": ErrorOut, "description": "The rows asked for are out of range or too many."},
}


@router.get(
    "/{job_id}/similarity",
    summary="Rows of a job's similarity matrix",
    description="Rows A..B-1 of the matrix as an `.npy` file (float32 [B-A, n_cols]), for single and sharded "
    "jobs alike; at most `LELASTIC_MAX_SLICE_BYTES` per answer. The whole matrix is "
    "`artifacts/similarity.npy` (row-major: rows A..B-1 are the bytes header + 4·n_cols·A to "
    "header + 4·n_cols·B, one HTTP Range).",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}},
)
def read_similarity_rows(
    job_id: str,
    conn: RedisDep,
    data_dir: DataDirDep,
    settings: SettingsDep,
    tenant: TenantDep,
    rows: Annotated[str, Query(max_length=32, description="A:B, rows A to B-1.", examples=["0:100"])],
) -> Response:
    body = matrix.similarity_rows(conn, data_dir, settings, job_id, tenant, rows)
    return Response(body, media_type="application/octet-stream")


@router.get(
    "/{job_id}/neighbors",
    summary="One row's nearest neighbours",
    description="The k nearest neighbours of row `row` (its column, dataset row and similarity, best first; "
    "ties by the lower column), read from `neighbors_index.npy` / `neighbors_value.npy` without loading them.",
    responses=ERRORS,
)
def read_neighbors(
    job_id: str,
    conn: RedisDep,
    data_dir: DataDirDep,
    tenant: TenantDep,
    row: Annotated[int, Query(ge=0, description="A row of the matrix (0-based).")],
) -> dict[str, Any]:
    return matrix.neighbors(conn, data_dir, job_id, tenant, row)
