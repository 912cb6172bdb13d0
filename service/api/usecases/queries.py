"""Reading the tenant's jobs and datasets: one by id (another tenant's is not found), or a list."""

from __future__ import annotations

import re
from typing import Any

import redis

from service.api.errors import NotFound
from service.api.schemas import DatasetOut, DatasetsOut, JobOut, JobsOut
from service.contract import queue, records
from service.contract.jobstate import JobStatus

#: The form of every job, dataset and weights id (`records.new_id`): nothing else reaches Redis.
RECORD_ID = re.compile(r"[0-9a-f]{32}")


def is_record_id(value: str) -> bool:
    """Whether `value` has the form of a record id (32 lowercase hex digits)."""
    return RECORD_ID.fullmatch(value) is not None


def owned_job(conn: redis.Redis, job_id: str, tenant: str) -> records.JobRecord:
    """The reconciled record of the tenant's job `job_id`, or NotFound (the same for a malformed id, which
    never reaches Redis, an unknown one and another tenant's)."""
    record = records.get_job(conn, job_id) if is_record_id(job_id) else None
    if record is None or record.tenant != tenant:
        raise NotFound.at(["path", "job_id"], "no job with this id (ids are 32 lowercase hex digits)", job_id)
    return queue.reconcile(conn, record)


def list_jobs(conn: redis.Redis, tenant: str, *, status: JobStatus | None, limit: int, cursor: str | None) -> JobsOut:
    """One page of the tenant's jobs, newest first, each reconciled with its queue state."""
    found, next_cursor = records.list_jobs(conn, tenant=tenant, status=status, limit=limit, cursor=cursor)
    data = [JobOut.from_record(queue.reconcile(conn, r)) for r in found]
    return JobsOut(data=data, count=len(data), next_cursor=next_cursor)


def owned_dataset(conn: redis.Redis, dataset_id: str, tenant: str) -> dict[str, Any]:
    """The record of the tenant's dataset or weights `dataset_id`, or NotFound (the same for a malformed
    id, an unknown one and another tenant's)."""
    record = records.get_dataset(conn, dataset_id) if is_record_id(dataset_id) else None
    if record is None or record["tenant"] != tenant:
        msg = "no dataset or weights with this id (ids are 32 lowercase hex digits)"
        raise NotFound.at(["path", "dataset_id"], msg, dataset_id)
    return record


def list_datasets(conn: redis.Redis, tenant: str, *, limit: int = 50, cursor: str | None = None) -> DatasetsOut:
    """One page of the tenant's datasets and weights, newest first."""
    page, next_cursor = records.page_datasets(conn, tenant=tenant, limit=limit, cursor=cursor)
    data = [DatasetOut.from_record(r) for r in page]
    return DatasetsOut(data=data, count=len(data), next_cursor=next_cursor)
