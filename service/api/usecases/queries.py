"""Reading the tenant's jobs and datasets: one by id (another tenant's is not found), or a list."""

from __future__ import annotations

from typing import Any

import redis

from service.api.errors import NotFound
from service.api.schemas import DatasetOut, DatasetsOut, JobOut, JobsOut
from service.contract import queue, records
from service.contract.jobstate import JobStatus


def owned_job(conn: redis.Redis, job_id: str, tenant: str) -> records.JobRecord:
    """The reconciled record of the tenant's job `job_id`, or NotFound."""
    record = records.get_job(conn, job_id)
    if record is None or record.tenant != tenant:
        raise NotFound.at(["path", "job_id"], "no job with this id", job_id)
    return queue.reconcile(conn, record)


def list_jobs(conn: redis.Redis, tenant: str, *, status: JobStatus | None, limit: int, cursor: str | None) -> JobsOut:
    """One page of the tenant's jobs, newest first, each reconciled with its queue state."""
    found, next_cursor = records.list_jobs(conn, tenant=tenant, status=status, limit=limit, cursor=cursor)
    data = [JobOut.from_record(queue.reconcile(conn, r)) for r in found]
    return JobsOut(data=data, count=len(data), next_cursor=next_cursor)


def owned_dataset(conn: redis.Redis, dataset_id: str, tenant: str) -> dict[str, Any]:
    """The record of the tenant's dataset or weights `dataset_id`, or NotFound."""
    record = records.get_dataset(conn, dataset_id)
    if record is None or record["tenant"] != tenant:
        raise NotFound.at(["path", "dataset_id"], "no dataset or weights with this id", dataset_id)
    return record


def list_datasets(conn: redis.Redis, tenant: str) -> DatasetsOut:
    """The tenant's datasets and weights, newest first."""
    data = [DatasetOut.from_record(r) for r in records.list_datasets(conn, tenant=tenant)]
    return DatasetsOut(data=data, count=len(data))
