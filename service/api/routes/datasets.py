"""/v1/datasets: upload, list, read and delete datasets and weights."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response, status

from service.api import idempotency, limits, uploads
from service.api.deps import DataDirDep, RedisDep, SettingsDep, TenantDep
from service.api.routes.jobs import page_cursor
from service.api.schemas import DatasetOut, DatasetsOut, ErrorOut
from service.api.usecases import datasets, queries

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "A .npz (X, optional y), .npy (X), .csv or .safetensors file.",
                    },
                    "label_column": {
                        "type": "string",
                        "description": "CSV only: the column holding integer labels (header name, or 0-based "
                        "column number when the file has no header).",
                        "example": "label",
                    },
                },
            }
        }
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    summary="Upload a dataset or weights",
    description="Multipart upload of one `file`. Arrays are read without pickles, checked (numeric, finite, "
    "2 ≤ n ≤ max_dataset_examples, features ≤ max_features, labels integer and one per row) and stored as float32 "
    "X / int64 y. A `.safetensors` file is stored as kind `weights` for `weights: {source: upload}`. The "
    "`Location` header points at the new resource. With an `Idempotency-Key`, a retry of the same upload "
    "returns the dataset the first request created (201, header `Idempotent-Replayed: true`).",
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses={
        409: {"model": ErrorOut, "description": "A request with this Idempotency-Key is still in progress."},
        413: {"model": ErrorOut, "description": "The file is larger than max_upload_bytes."},
        422: {
            "model": ErrorOut,
            "description": "Unsupported, malformed or invalid file, or one over a limit; the body names the problem.",
        },
        429: {
            "model": ErrorOut,
            "description": "Too many requests this minute, or max_uploads_per_tenant uploads already in progress; "
            "see Retry-After.",
        },
    },
)
async def create_dataset(
    request: Request,
    response: Response,
    conn: RedisDep,
    data_dir: DataDirDep,
    settings: SettingsDep,
    tenant: TenantDep,
    key: idempotency.KeyDep,
) -> Any:
    lease = await anyio.to_thread.run_sync(limits.open_upload, conn, settings, tenant)
    try:
        upload = await uploads.receive_multipart(request, dest_dir=data_dir.root, max_bytes=settings.max_upload_bytes)
        outcome = await datasets.create_dataset(conn, data_dir, settings, tenant, upload, key=key)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(limits.close_upload, conn, tenant, lease)
    if isinstance(outcome, idempotency.Stored):
        return idempotency.replayed(outcome)
    response.headers["Location"] = datasets.dataset_location(outcome.id)
    return outcome


@router.get(
    "",
    response_model=DatasetsOut,
    summary="List datasets",
    description="The tenant's datasets and weights, newest first, a page at a time (cursor pagination, as "
    "for jobs): `count` is the number on this page; pass `next_cursor` as `cursor` for the next one.",
)
def read_datasets(
    conn: RedisDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Datasets per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor` of the previous page.")] = None,
) -> DatasetsOut:
    return queries.list_datasets(conn, tenant, limit=limit, cursor=page_cursor(cursor))


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    summary="Read a dataset",
    responses={404: {"model": ErrorOut, "description": "No such dataset."}},
)
def read_dataset(dataset_id: str, conn: RedisDep, tenant: TenantDep) -> DatasetOut:
    return DatasetOut.from_record(queries.owned_dataset(conn, dataset_id, tenant))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dataset",
    description="Removes the record and its files. Refused (409) while a queued or running job uses it.",
    responses={
        404: {"model": ErrorOut, "description": "No such dataset."},
        409: {"model": ErrorOut, "description": "A queued or running job uses it; the body lists the jobs."},
    },
)
def delete_dataset(dataset_id: str, conn: RedisDep, data_dir: DataDirDep, tenant: TenantDep) -> Response:
    datasets.delete_dataset(conn, data_dir, dataset_id, tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
