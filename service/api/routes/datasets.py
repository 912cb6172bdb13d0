"""/v1/datasets: upload, list, read and delete datasets and weights."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from service.api import idempotency, limits, uploads
from service.api.deps import DataDirDep, RedisDep, SettingsDep, TenantDep
from service.api.errors import Conflict, InvalidInput, NotFound
from service.api.schemas import DatasetOut, DatasetsOut, ErrorOut
from service.contract import queue, records
from service.contract.settings import Settings
from service.contract.storage import DataDir, atomic_open

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


def _store_dataset(data_dir: DataDir, dataset_id: str, parsed: uploads.ParsedDataset) -> dict[str, Any]:
    """Write X (and y) to the dataset file; return the record's meta."""
    arrays = {"X": parsed.X} if parsed.y is None else {"X": parsed.X, "y": parsed.y}
    with atomic_open(data_dir.dataset_file(dataset_id)) as handle:
        np.savez(handle, **arrays)
    classes, counts = None, None
    if parsed.y is not None:
        values, sizes = np.unique(parsed.y, return_counts=True)
        classes = [int(v) for v in values]
        counts = {str(int(v)): int(s) for v, s in zip(values, sizes, strict=True)}
    return {
        "n": int(parsed.X.shape[0]),
        "shape": [int(s) for s in parsed.X.shape[1:]],
        "dtype": "float32",
        "has_labels": parsed.y is not None,
        "classes": classes,
        "class_counts": counts,
    }


def _parse_and_store(
    data_dir: DataDir, dataset_id: str, upload: uploads.ReceivedUpload, settings: Settings
) -> tuple[str, dict[str, Any]]:
    """(kind, meta) of the upload after moving it into the dataset's folder. Blocking: run in a thread."""
    fmt = uploads.upload_format(upload.filename)
    label_column = upload.fields.get("label_column") or None
    if label_column is not None and fmt != ".csv":
        raise InvalidInput.at(
            ["body", "label_column"], "only for .csv files (a .npz carries labels as 'y')", label_column
        )
    if fmt == ".safetensors":
        tensors = uploads.read_safetensors_header(upload.path)
        target = data_dir.weights_file(dataset_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload.path, target)
        return "weights", {"tensors": tensors}
    if fmt == ".npy":
        parsed = uploads.read_npy(upload.path)
    elif fmt == ".npz":
        parsed = uploads.read_npz(upload.path, max_bytes=settings.max_upload_bytes)
    else:
        parsed = uploads.read_csv(upload.path, label_column=label_column)
    limits.check_dataset(parsed.X.shape, settings)
    return "dataset", _store_dataset(data_dir, dataset_id, parsed)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    summary="Upload a dataset or weights",
    description="Multipart upload of one `file`. Arrays are read without pickles, checked (numeric, finite, "
    "2 ≤ n ≤ max_examples, features ≤ max_features, labels integer and one per row) and stored as float32 "
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
        429: {"model": ErrorOut, "description": "Too many requests this minute; see Retry-After."},
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
    upload = await uploads.receive_multipart(request, dest_dir=data_dir.root, max_bytes=settings.max_upload_bytes)
    try:
        claim = None
        if key is not None:
            fingerprint = idempotency.upload_fingerprint(upload.file_sha256, upload.filename, upload.fields)
            outcome = await anyio.to_thread.run_sync(
                lambda: idempotency.begin(conn, tenant=tenant, route="datasets", key=key, fingerprint=fingerprint)
            )
            if isinstance(outcome, idempotency.Stored):
                return await anyio.to_thread.run_sync(_replayed, conn, outcome)
            claim = outcome
        try:
            out = await _create(conn, data_dir, settings, tenant, upload)
        except BaseException:
            if claim is not None:
                claim.release()
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(upload.path).unlink()
    location = f"/v1/datasets/{out.id}"
    if claim is not None:
        body = out.model_dump(mode="json")
        await anyio.to_thread.run_sync(claim.complete, status.HTTP_201_CREATED, out.id, location, body)
    response.headers["Location"] = location
    return out


async def _create(
    conn: Any, data_dir: DataDir, settings: Settings, tenant: str, upload: uploads.ReceivedUpload
) -> DatasetOut:
    """Parse, check and store the upload, then record it (its files are removed if anything fails)."""
    dataset_id = records.new_id()
    try:
        kind, meta = await anyio.to_thread.run_sync(_parse_and_store, data_dir, dataset_id, upload, settings)
        record = await anyio.to_thread.run_sync(
            lambda: records.create_dataset(
                conn,
                kind=kind,
                name=uploads.safe_name(upload.filename),
                meta=meta,
                tenant=tenant,
                dataset_id=dataset_id,
            )
        )
    except BaseException:
        data_dir.remove_dataset(dataset_id)
        raise
    return DatasetOut.from_record(record)


def _replayed(conn: Any, stored: idempotency.Stored) -> JSONResponse:
    """The response to a retry: the dataset's record (the original body if it was deleted since)."""
    record = records.get_dataset(conn, stored.resource_id)
    body = DatasetOut.from_record(record).model_dump(mode="json") if record is not None else stored.body
    headers = {"Idempotent-Replayed": "true"}
    if stored.location:
        headers["Location"] = stored.location
    return JSONResponse(body, status_code=stored.status_code, headers=headers)


@router.get(
    "",
    response_model=DatasetsOut,
    summary="List datasets",
    description="The tenant's datasets and weights, newest first.",
)
def read_datasets(conn: RedisDep, tenant: TenantDep) -> DatasetsOut:
    data = [DatasetOut.from_record(r) for r in records.list_datasets(conn, tenant=tenant)]
    return DatasetsOut(data=data, count=len(data))


def _get_owned(conn: Any, dataset_id: str, tenant: str) -> dict[str, Any]:
    record = records.get_dataset(conn, dataset_id)
    if record is None or record["tenant"] != tenant:
        raise NotFound.at(["path", "dataset_id"], "no dataset or weights with this id", dataset_id)
    return record


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    summary="Read a dataset",
    responses={404: {"model": ErrorOut, "description": "No such dataset."}},
)
def read_dataset(dataset_id: str, conn: RedisDep, tenant: TenantDep) -> DatasetOut:
    return DatasetOut.from_record(_get_owned(conn, dataset_id, tenant))


def active_jobs_using(conn: Any, dataset_id: str, tenant: str) -> list[str]:
    """Ids of the tenant's queued/running jobs whose dataset or uploaded weights is `dataset_id`."""
    ids = [m.decode() for m in conn.zrange(records.jobs_index_key(tenant), 0, -1)]
    pipe = conn.pipeline()
    for job_id in ids:
        pipe.hmget(records.job_key(job_id), "status", "spec")
    users = []
    for job_id, (job_status, raw_spec) in zip(ids, pipe.execute(), strict=True):
        if job_status is None or job_status.decode() not in ("queued", "running"):
            continue
        spec = json.loads(raw_spec)
        if dataset_id in (spec.get("dataset"), (spec.get("weights") or {}).get("weights")):
            record = records.get_job(conn, job_id)
            if record is not None and queue.reconcile(conn, record).status in ("queued", "running"):
                users.append(job_id)
    return users


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
    _get_owned(conn, dataset_id, tenant)
    users = active_jobs_using(conn, dataset_id, tenant)
    if users:
        raise Conflict.at(
            ["path", "dataset_id"],
            f"in use by {len(users)} queued or running job(s) {users[:10]}; cancel them or wait for them to finish",
            dataset_id,
            jobs=users,
        )
    records.delete_dataset_record(conn, dataset_id, tenant)
    data_dir.remove_dataset(dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
