"""/v1/jobs: submit, read, list, follow (SSE), cancel and purge jobs; fetch results and artifacts."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from fastapi.responses import FileResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.api import events, idempotency, limits, validation
from service.api.deps import DataDirDep, RedisDep, SettingsDep, TenantDep
from service.api.errors import Conflict, InvalidInput, NotFound, issue
from service.api.schemas import ErrorOut, JobOut, JobsOut, ResultOut
from service.contract import queue, records
from service.contract import spec as job_spec
from service.contract.storage import ARTIFACT_TYPES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND = {404: {"model": ErrorOut, "description": "No job with this id."}}
SpecBody = Annotated[
    job_spec.JobSpec,
    Body(openapi_examples={"digits": {"summary": "Digits 3 vs 5, trained MLP", "value": job_spec.EXAMPLE_SPEC}}),
]


def _owned_job(conn: Any, job_id: str, tenant: str) -> records.JobRecord:
    """The reconciled record of the tenant's job `job_id`, or NotFound."""
    record = records.get_job(conn, job_id)
    if record is None or record.tenant != tenant:
        raise NotFound.at(["path", "job_id"], "no job with this id", job_id)
    return queue.reconcile(conn, record)


TOO_MANY = {
    429: {
        "model": ErrorOut,
        "description": "Too many requests this minute, or too many queued + running jobs; see Retry-After.",
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    summary="Submit a job",
    description="Checks the spec against its dataset (labels, indices, selections, weights, model) and "
    "the service's limits, then queues it. The `Location` header is the job's URL; follow it, or its "
    "`/events` stream. With an `Idempotency-Key`, a retry with the same body returns the job the first "
    "request created (202, its current state, header `Idempotent-Replayed: true`).",
    responses={
        409: {"model": ErrorOut, "description": "A request with this Idempotency-Key is still in progress."},
        422: {
            "model": ErrorOut,
            "description": "The spec is invalid, does not fit its dataset or exceeds a limit; "
            "every problem is listed with its field.",
        },
        **TOO_MANY,
    },
)
def create_job(
    spec: SpecBody,
    response: Response,
    conn: RedisDep,
    data_dir: DataDirDep,
    settings: SettingsDep,
    tenant: TenantDep,
    key: idempotency.KeyDep,
    fingerprint: idempotency.FingerprintDep,
) -> Any:
    claim = None
    if key is not None and fingerprint is not None:
        outcome = idempotency.begin(conn, tenant=tenant, route="jobs", key=key, fingerprint=fingerprint)
        if isinstance(outcome, idempotency.Stored):
            return _replayed(conn, outcome)
        claim = outcome
    try:
        job = _submit(conn, data_dir, settings, spec, tenant)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    location = f"/v1/jobs/{job.id}"
    if claim is not None:
        claim.complete(status.HTTP_202_ACCEPTED, job.id, location, job.model_dump(mode="json"))
    response.headers["Location"] = location
    return job


def _submit(conn: Any, data_dir: Any, settings: Any, spec: job_spec.JobSpec, tenant: str) -> JobOut:
    """Check, admit (active-jobs limit), record and enqueue a job."""
    validation.check_job_spec(conn, data_dir, spec, tenant=tenant, settings=settings)
    job_id = records.new_id()
    limits.admit_job(conn, settings, tenant, job_id)
    try:
        record = records.create_job(conn, spec=spec.model_dump(mode="json"), tenant=tenant, job_id=job_id)
        limits.confirm_job(conn, tenant, job_id)
    except BaseException:
        limits.release_job(conn, tenant, job_id)
        raise
    try:
        queue.enqueue(conn, settings, record.id)
    except Exception as exc:
        records.transition(
            conn,
            record.id,
            "failed",
            allowed_from=("queued",),
            fields={"error": f"could not be queued: {exc}", "finished_at": records.now()},
        )
        raise
    return JobOut.from_record(record)


def _replayed(conn: Any, stored: idempotency.Stored) -> JSONResponse:
    """The response to a retry: the job as it is now (the original body if it was purged since)."""
    record = records.get_job(conn, stored.resource_id)
    body = (
        JobOut.from_record(queue.reconcile(conn, record)).model_dump(mode="json") if record is not None else stored.body
    )
    headers = {"Idempotent-Replayed": "true"}
    if stored.location:
        headers["Location"] = stored.location
    return JSONResponse(body, status_code=stored.status_code, headers=headers)


def _cursor(value: str | None) -> str | None:
    if value is not None:
        with contextlib.suppress(ValueError):
            if math.isfinite(float(value)):
                return value
        raise InvalidInput.at(["query", "cursor"], "not a cursor; pass the `next_cursor` of the previous page", value)
    return value


@router.get(
    "",
    response_model=JobsOut,
    summary="List jobs",
    description="The tenant's jobs, newest first, a page at a time (cursor pagination).",
)
def read_jobs(
    conn: RedisDep,
    tenant: TenantDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "canceled"] | None,
        Query(description="Only jobs with this status."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor` of the previous page.")] = None,
) -> JobsOut:
    found, next_cursor = records.list_jobs(conn, tenant=tenant, status=status, limit=limit, cursor=_cursor(cursor))
    data = [JobOut.from_record(queue.reconcile(conn, r)) for r in found]
    return JobsOut(data=data, count=len(data), next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="Read a job",
    responses=NOT_FOUND,
    description="Status, progress and timestamps (ISO-8601, UTC) of one job.",
)
def read_job(job_id: str, conn: RedisDep, tenant: TenantDep) -> JobOut:
    return JobOut.from_record(_owned_job(conn, job_id, tenant))


def _stream_start(
    job_id: str,
    conn: RedisDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
) -> str:
    """Checks made before the stream starts (so they can still answer 404/422): the stream's start."""
    _owned_job(conn, job_id, tenant)
    if last_event_id is not None and not events.is_event_id(last_event_id):
        raise InvalidInput.at(
            ["header", "last-event-id"],
            "must be an event id such as '1718000000000-0' (the `id:` of an event this stream sent)",
            last_event_id,
        )
    return last_event_id or "0-0"


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a job (Server-Sent Events)",
    description="`event: progress` / `event: status` events with JSON `data` and the stream id as `id`. "
    "Send `Last-Event-ID` to resume. The stream ends after the final status event.",
    responses={**NOT_FOUND, 422: {"model": ErrorOut, "description": "Last-Event-ID is not an event id."}},
)
async def follow_job(
    job_id: str, conn: RedisDep, after: Annotated[str, Depends(_stream_start)]
) -> AsyncIterator[ServerSentEvent]:
    async for event in events.job_events(conn, job_id, after=after):
        yield event


@router.get(
    "/{job_id}/result",
    response_model=ResultOut,
    summary="Fetch a job's result",
    description="The result of a succeeded job, with artifact download URLs and, for n up to "
    "`inline_matrix_max_n`, the similarity matrix inline.",
    responses={
        **NOT_FOUND,
        409: {"model": ErrorOut, "description": "The job has not succeeded; the body has its `status`."},
    },
)
def read_result(
    job_id: str, conn: RedisDep, data_dir: DataDirDep, settings: SettingsDep, tenant: TenantDep
) -> Response:
    record = _owned_job(conn, job_id, tenant)
    if record.status != "succeeded" or record.result is None:
        raise Conflict.at(
            ["path", "job_id"],
            f"the job is {record.status}; a result exists only once it has succeeded",
            job_id,
            status=record.status,
        )
    result = dict(record.result)
    result["artifacts"] = {
        name: f"/v1/jobs/{job_id}/artifacts/{name}" for name in result.get("artifacts") or [] if name in ARTIFACT_TYPES
    }
    result["similarity"], result["similarity_inline"] = None, False
    path = data_dir.artifact(job_id, "similarity.npy")
    n = result.get("n")
    if path.exists() and (n is None or n <= settings.inline_matrix_max_n):
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        if matrix.ndim == 2 and matrix.shape[0] <= settings.inline_matrix_max_n:
            values = np.asarray(matrix, dtype=np.float64)
            nested = (
                values.tolist() if np.isfinite(values).all() else np.where(np.isfinite(values), values, None).tolist()
            )
            result["similarity"], result["similarity_inline"] = nested, True
    try:
        body = json.dumps(result, allow_nan=False)
    except ValueError:  # a NaN/±Inf metric: JSON has no such number, so it becomes null
        body = json.dumps(_finite_or_null(result), allow_nan=False)
    return Response(body, media_type="application/json")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    return value


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an artifact",
    description=f"One of {sorted(ARTIFACT_TYPES)} once the job wrote it. Supports HTTP Range.",
    response_class=FileResponse,
    responses={**NOT_FOUND, 200: {"content": {t: {} for t in set(ARTIFACT_TYPES.values())}}},
)
def read_artifact(job_id: str, name: str, conn: RedisDep, data_dir: DataDirDep, tenant: TenantDep) -> FileResponse:
    _owned_job(conn, job_id, tenant)
    if name not in ARTIFACT_TYPES:
        raise NotFound.at(["path", "name"], f"no such artifact; artifacts are {sorted(ARTIFACT_TYPES)}", name)
    path = data_dir.artifact(job_id, name)
    jobs_root = (data_dir.root / "jobs").resolve()
    if not path.is_file() or jobs_root not in path.resolve().parents:
        raise NotFound.at(["path", "name"], "this job has not written this artifact (yet)", name)
    media_type = ARTIFACT_TYPES[name]
    filename = None if media_type.startswith("image/") else name
    return FileResponse(path, media_type=media_type, filename=filename)


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    summary="Cancel (or purge) a job",
    description="Cancels a queued or running job (a running one is stopped) and returns it. With "
    "`purge=true`, deletes a final job's record and files instead (204).",
    responses={
        **NOT_FOUND,
        204: {"description": "Purged."},
        409: {"model": ErrorOut, "description": "Already final (cancel) or not final yet (purge)."},
    },
)
def delete_job(
    job_id: str,
    conn: RedisDep,
    data_dir: DataDirDep,
    tenant: TenantDep,
    purge: Annotated[bool, Query(description="Delete a final job's record and files.")] = False,
) -> Any:
    record = _owned_job(conn, job_id, tenant)
    if purge:
        if record.status not in records.FINAL_STATUSES:
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
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    canceled, before = queue.cancel(conn, job_id)
    if not canceled:
        raise Conflict(
            [
                issue(
                    ["path", "job_id"],
                    f"the job is already {before}; only queued or running jobs can be canceled",
                    job_id,
                )
            ],
            extra={"status": before},
        )
    return JobOut.from_record(records.get_job(conn, job_id) or record)
