"""Uploads: store a dataset or a set of weights (parsed, checked, recorded), and delete a dataset."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import redis
from fastapi import status

from service.api import idempotency, limits, quota, uploads
from service.api.errors import Conflict, InvalidInput
from service.api.retention import active_jobs_by_upload, delete_upload_if_unused
from service.api.schemas import DatasetOut
from service.api.usecases.queries import owned_dataset
from service.contract import queue, records
from service.contract.jobstate import ACTIVE
from service.contract.settings import Settings
from service.contract.storage import DataDir, atomic_open


def dataset_location(dataset_id: str) -> str:
    """The dataset's URL, for the `Location` header."""
    return f"/v1/datasets/{dataset_id}"


async def create_dataset(
    conn: redis.Redis,
    data_dir: DataDir,
    settings: Settings,
    tenant: str,
    upload: uploads.ReceivedUpload,
    *,
    key: str | None = None,
) -> DatasetOut | idempotency.Stored:
    """Store and record a received upload as a dataset or weights; its temporary file is removed either way.

    With an Idempotency-Key already used for the same upload, the first request's response instead
    (with the dataset as it is now).
    """
    try:
        return await anyio.to_thread.run_sync(
            functools.partial(_create_once, conn, data_dir, settings, tenant, upload, key=key)
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(upload.path).unlink()


def _create_once(
    conn: redis.Redis,
    data_dir: DataDir,
    settings: Settings,
    tenant: str,
    upload: uploads.ReceivedUpload,
    *,
    key: str | None,
) -> DatasetOut | idempotency.Stored:
    fingerprint = None
    if key is not None:
        fingerprint = idempotency.upload_fingerprint(upload.file_sha256, upload.filename, upload.fields)
    return idempotency.create_once(
        conn,
        tenant=tenant,
        route="datasets",
        key=key,
        fingerprint=fingerprint,
        status_code=status.HTTP_201_CREATED,
        create=lambda: _create(conn, data_dir, settings, tenant, upload),
        location=dataset_location,
        current=lambda dataset_id: _current(conn, dataset_id),
    )


def _create(
    conn: redis.Redis, data_dir: DataDir, settings: Settings, tenant: str, upload: uploads.ReceivedUpload
) -> DatasetOut:
    """Parse, check and store the upload, then record it (its files are removed if anything fails).

    Its reservation of the tenant's storage quota is held until the dataset is recorded (indexed, so
    counted on disk from then on) or has failed.
    """
    dataset_id = records.new_id()
    with quota.storage_reservation(conn, data_dir, settings, tenant, dataset_id) as reservation:
        try:
            kind, meta = _parse_and_store(data_dir, dataset_id, upload, settings, reservation)
            record = records.create_dataset(
                conn,
                kind=kind,
                name=uploads.safe_name(upload.filename),
                meta=meta,
                tenant=tenant,
                dataset_id=dataset_id,
            )
        except BaseException:
            data_dir.remove_dataset(dataset_id)
            raise
    return DatasetOut.from_record(record)


def _parse_and_store(
    data_dir: DataDir,
    dataset_id: str,
    upload: uploads.ReceivedUpload,
    settings: Settings,
    reservation: quota.StorageReservation,
) -> tuple[str, dict[str, Any]]:
    """(kind, meta) of the upload after moving it into the dataset's folder (within the tenant's quota).

    `reservation` holds the received file's size while it is parsed, then the parsed arrays' size
    while they are written (PayloadTooLarge when either would take the tenant past its quota).
    """
    fmt = uploads.upload_format(upload.filename)
    label_column = upload.fields.get("label_column") or None
    if label_column is not None and fmt != ".csv":
        raise InvalidInput.at(
            ["body", "label_column"], "only for .csv files (a .npz carries labels as 'y')", label_column
        )
    reservation.reserve(upload.size)
    if fmt == ".safetensors":
        tensors = uploads.read_safetensors_header(upload.path, settings)
        target = data_dir.weights_file(dataset_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload.path, target)
        return "weights", {"tensors": tensors}
    if fmt == ".npy":
        parsed = uploads.read_npy(upload.path, settings)
    elif fmt == ".npz":
        parsed = uploads.read_npz(upload.path, settings)
    else:
        parsed = uploads.read_csv(upload.path, settings, label_column=label_column)
    limits.check_dataset(parsed.X.shape, settings)
    if parsed.y is not None:
        limits.check_classes(len(np.unique(parsed.y)))
    reservation.reserve(parsed.X.nbytes + (parsed.y.nbytes if parsed.y is not None else 0))
    return "dataset", _store_dataset(data_dir, dataset_id, parsed)


def _store_dataset(data_dir: DataDir, dataset_id: str, parsed: uploads.ParsedDataset) -> dict[str, Any]:
    """Write X (and y) to the dataset file; return the record's meta."""
    with atomic_open(data_dir.dataset_file(dataset_id)) as handle:
        if parsed.y is None:
            np.savez(handle, X=parsed.X)
        elif parsed.label_names is None:
            np.savez(handle, X=parsed.X, y=parsed.y)
        else:
            np.savez(handle, X=parsed.X, y=parsed.y, label_names=np.array(parsed.label_names, dtype=str))
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
        "label_names": parsed.label_names,
        "label_column": parsed.label_column,
        "notes": parsed.notes or None,
    }


def _current(conn: redis.Redis, dataset_id: str) -> dict[str, Any] | None:
    """The dataset as GET /v1/datasets/{id} shows it now, or None once it was deleted."""
    record = records.get_dataset(conn, dataset_id)
    return DatasetOut.from_record(record).model_dump(mode="json") if record is not None else None


def delete_dataset(conn: redis.Redis, data_dir: DataDir, dataset_id: str, tenant: str) -> None:
    """Delete the tenant's dataset or weights (record and files). Conflict while a queued or running job uses it."""
    owned_dataset(conn, dataset_id, tenant)
    users = delete_upload_if_unused(conn, dataset_id, tenant, lambda: _active_users(conn, dataset_id, tenant))
    if users is None:
        msg = "jobs are being submitted right now; try again"
        raise Conflict.at(["path", "dataset_id"], msg, dataset_id, jobs=[])
    if users:
        raise Conflict.at(
            ["path", "dataset_id"],
            f"in use by {len(users)} queued or running job(s) {users[:10]}; cancel them or wait for them to finish",
            dataset_id,
            jobs=users,
        )
    data_dir.remove_dataset(dataset_id)


def _active_users(conn: redis.Redis, dataset_id: str, tenant: str) -> list[str]:
    """Ids of the tenant's jobs that use the upload and are still queued or running once reconciled."""
    users = []
    for job_id in active_jobs_by_upload(conn, tenant).get(dataset_id, []):
        record = records.get_job(conn, job_id)
        if record is not None and queue.reconcile(conn, record).status in ACTIVE:
            users.append(job_id)
    return users
