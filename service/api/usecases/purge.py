"""Ending a job: cancel a queued or running one, or purge a final one (its record, RQ job and files)."""

from __future__ import annotations

import contextlib

import redis

from service.api.errors import Conflict, issue
from service.api.schemas import JobOut
from service.api.usecases.queries import owned_job
from service.contract import queue, records, sharding
from service.contract.jobstate import FINAL
from service.contract.storage import DataDir


def cancel_job(conn: redis.Redis, data_dir: DataDir, job_id: str, tenant: str) -> JobOut:
    """Cancel the tenant's queued or running job (a running one is stopped); returns it. Conflict once final.

    A sharded job's queued tiles are dropped at once (no tile of it starts after this) and its files
    go: a tile still running finds the folder gone and the job canceled, and stops."""
    record = owned_job(conn, job_id, tenant)
    canceled, before = queue.cancel(conn, job_id)
    plan = sharding.read_plan(conn, job_id) if canceled else None
    if plan is not None and plan.get("fanned_out"):
        sharding.drop_queued(conn, job_id, plan)
        data_dir.remove_job(job_id)
    if not canceled:
        raise Conflict(
            [
                issue(
                    ["path", "job_id"],
                    f"the job is already {before}; only queued or running jobs can be canceled "
                    f"(to delete it and its files: DELETE /v1/jobs/{job_id}?purge=true)",
                    job_id,
                )
            ],
            extra={"status": before},
        )
    return JobOut.from_record(records.get_job(conn, job_id) or record)


def purge_job(conn: redis.Redis, data_dir: DataDir, job_id: str, tenant: str) -> None:
    """Delete the tenant's final job: its record, its RQ job and its files. Conflict while it is not final."""
    record = owned_job(conn, job_id, tenant)
    if record.status not in FINAL:
        raise Conflict.at(
            ["query", "purge"],
            f"the job is {record.status}; cancel it before purging it",
            True,
            status=record.status,
        )
    rq_job = queue.fetch_rq_job(conn, job_id)
    if rq_job is not None:
        with contextlib.suppress(Exception):
            rq_job.delete()
    records.delete_job_record(conn, job_id, tenant)
    data_dir.remove_job(job_id)
