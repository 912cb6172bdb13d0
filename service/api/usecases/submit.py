"""Submitting a job: check the spec, admit it under the tenant's active-jobs limit, record it, queue it."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import status

from service.api import execution, idempotency, limits, retention, validation
from service.api.errors import InvalidInput
from service.api.schemas import JobOut
from service.contract import jobstate, queue, records
from service.contract.jobstate import JobStatus
from service.contract.settings import Settings
from service.contract.spec import JobSpec
from service.contract.storage import DataDir


def job_location(job_id: str) -> str:
    """The job's URL, for the `Location` header."""
    return f"/v1/jobs/{job_id}"


def submit_job(
    conn: redis.Redis,
    data_dir: DataDir,
    settings: Settings,
    spec: JobSpec,
    tenant: str,
    *,
    key: str | None = None,
    fingerprint: str | None = None,
) -> JobOut | idempotency.Stored:
    """The new, queued job; with an Idempotency-Key already used, the first request's response instead
    (with the job as it is now). Blocking: call it from a thread."""
    return idempotency.create_once(
        conn,
        tenant=tenant,
        route="jobs",
        key=key,
        fingerprint=fingerprint,
        status_code=status.HTTP_202_ACCEPTED,
        create=lambda: _submit(conn, data_dir, settings, spec, tenant),
        location=job_location,
        current=lambda job_id: _current(conn, job_id),
    )


def _submit(conn: redis.Redis, data_dir: DataDir, settings: Settings, spec: JobSpec, tenant: str) -> JobOut:
    """Check, admit (active-jobs limit), record and enqueue a job; a job that cannot be queued ends failed."""
    spec = validation.with_label_numbers(conn, data_dir, spec, tenant=tenant)
    validation.check_job_spec(conn, data_dir, spec, tenant=tenant, settings=settings)
    spec = execution.resolve_execution(conn, data_dir, spec, tenant=tenant, settings=settings)
    job_id = records.new_id()
    limits.admit_job(conn, settings, tenant, job_id)
    try:
        record = records.create_job(conn, spec=spec.model_dump(mode="json"), tenant=tenant, job_id=job_id)
        limits.confirm_job(conn, tenant, job_id)
    except BaseException:
        limits.release_job(conn, tenant, job_id)
        raise
    if not retention.uploads_exist(conn, record.spec):  # deleted between the checks and the record
        records.delete_job_record(conn, job_id, tenant)
        limits.release_job(conn, tenant, job_id)
        raise InvalidInput.at(["body", "dataset"], "an upload this job names was deleted meanwhile", None)
    try:
        queue.enqueue(conn, settings, record.id)
    except Exception as exc:
        jobstate.mark_failed(conn, record.id, f"could not be queued: {exc}", expected={JobStatus.QUEUED})
        raise
    return JobOut.from_record(record)


def _current(conn: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """The job as GET /v1/jobs/{id} shows it now, or None once it was purged."""
    record = records.get_job(conn, job_id)
    return JobOut.from_record(queue.reconcile(conn, record)).model_dump(mode="json") if record is not None else None
