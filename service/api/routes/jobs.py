"""/v1/jobs: submit, read, list, follow (SSE), cancel and purge jobs; fetch results and artifacts."""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any, Literal, NamedTuple

from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.api import events, idempotency, limits
from service.api.deps import AsyncRedisDep, DataDirDep, RedisDep, SettingsDep, TenantDep
from service.api.errors import InvalidInput
from service.api.files import DownloadResponse
from service.api.schemas import ErrorOut, JobOut, JobsOut, JobStatusValue, ResultOut
from service.api.usecases import queries, results, submit
from service.api.usecases.purge import cancel_job, purge_job
from service.contract import spec as job_spec
from service.contract.examples import openapi_examples
from service.contract.storage import ARTIFACT_TYPES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No job with this id."}}
SpecBody = Annotated[
    job_spec.JobSpec,
    Body(openapi_examples=openapi_examples()),
]


TOO_MANY: dict[int | str, dict[str, Any]] = {
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
    outcome = submit.submit_job(conn, data_dir, settings, spec, tenant, key=key, fingerprint=fingerprint)
    if isinstance(outcome, idempotency.Stored):
        return idempotency.replayed(outcome)
    response.headers["Location"] = submit.job_location(outcome.id)
    return outcome


#: A `next_cursor`: the repr of a finite float score (ASCII digits only).
CURSOR = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?(e[-+]?[0-9]{1,3})?")


def page_cursor(value: str | None) -> str | None:
    """A list's `cursor` query parameter, checked (422 unless it is a `next_cursor` this API gave)."""
    return _cursor(value)


def _cursor(value: str | None) -> str | None:
    if value is not None:
        with contextlib.suppress(ValueError):
            if CURSOR.fullmatch(value) and math.isfinite(float(value)):
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
        JobStatusValue | None,
        Query(description="Only jobs with this status."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor` of the previous page.")] = None,
) -> JobsOut:
    return queries.list_jobs(conn, tenant, status=status, limit=limit, cursor=_cursor(cursor))


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="Read a job",
    responses=NOT_FOUND,
    description="Status, progress and timestamps (ISO-8601, UTC) of one job.",
)
def read_job(job_id: str, conn: RedisDep, tenant: TenantDep) -> JobOut:
    return JobOut.from_record(queries.owned_job(conn, job_id, tenant))


class StreamStart(NamedTuple):
    """Where an event stream starts (a stream id) and the lease it holds (`limits.open_stream`)."""

    after: str
    lease: str


def _stream_start(
    job_id: str,
    conn: RedisDep,
    settings: SettingsDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
) -> StreamStart:
    """Checks made before the stream starts (so they can still answer 404/422/429), then the lease on one
    of the tenant's streams."""
    queries.owned_job(conn, job_id, tenant)
    if last_event_id is not None and not events.is_event_id(last_event_id):
        raise InvalidInput.at(
            ["header", "last-event-id"],
            "must be an event id such as '1718000000000-0' (the `id:` of an event this stream sent)",
            last_event_id,
        )
    return StreamStart(after=last_event_id or "0-0", lease=limits.open_stream(conn, settings, tenant))


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a job (Server-Sent Events)",
    description="`event: progress` / `event: status` events with JSON `data` and the stream id as `id`. "
    "Send `Last-Event-ID` to resume. The stream ends after the final status event. A tenant may have "
    "`max_event_streams_per_tenant` streams open at once (429 beyond).",
    responses={
        **NOT_FOUND,
        422: {"model": ErrorOut, "description": "Last-Event-ID is not an event id."},
        429: {"model": ErrorOut, "description": "Too many requests this minute, or too many open streams."},
    },
)
async def follow_job(
    job_id: str,
    conn: RedisDep,
    aconn: AsyncRedisDep,
    tenant: TenantDep,
    hub: Annotated[events.EventHub, Depends(events.get_hub)],
    start: Annotated[StreamStart, Depends(_stream_start)],
) -> AsyncIterator[ServerSentEvent]:
    renew = partial(limits.renew_stream, aconn, tenant, start.lease)
    try:
        async for event in events.job_events(aconn, conn, hub, job_id, after=start.after, renew=renew):
            yield event
    finally:
        await limits.close_stream(aconn, tenant, start.lease)


@router.get(
    "/{job_id}/result",
    response_model=ResultOut,
    summary="Fetch a job's result",
    description="The result of a succeeded job (its stored `result.json`) with artifact download URLs. "
    "The n × n similarity matrix is left out unless asked for with `?include=similarity` (then inline for n "
    "up to `inline_matrix_max_n`, streamed); `similarity_omitted` says why it is absent. The matrix is "
    "always downloadable as `artifacts/similarity.npy`.",
    responses={
        **NOT_FOUND,
        409: {"model": ErrorOut, "description": "The job has not succeeded; the body has its `status`."},
    },
)
def read_result(
    job_id: str,
    conn: RedisDep,
    data_dir: DataDirDep,
    settings: SettingsDep,
    tenant: TenantDep,
    include: Annotated[
        list[Literal["similarity"]] | None,
        Query(description="`similarity`: inline the n × n similarity matrix (n ≤ `inline_matrix_max_n`)."),
    ] = None,
) -> Response:
    chunks = results.read_result(
        conn, data_dir, settings, job_id, tenant, include_similarity="similarity" in (include or [])
    )
    first = next(chunks)  # checks (404, 409) happen before the response starts
    return StreamingResponse(itertools.chain([first], chunks), media_type="application/json")


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an artifact",
    description=f"One of {sorted(ARTIFACT_TYPES)} once the job wrote it. Supports HTTP Range.",
    response_class=FileResponse,
    responses={**NOT_FOUND, 200: {"content": {t: {} for t in set(ARTIFACT_TYPES.values())}}},
)
def read_artifact(job_id: str, name: str, conn: RedisDep, data_dir: DataDirDep, tenant: TenantDep) -> FileResponse:
    artifact = results.read_artifact(conn, data_dir, job_id, name, tenant)
    return DownloadResponse(artifact.path, media_type=artifact.media_type, filename=artifact.filename)


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
    if purge:
        purge_job(conn, data_dir, job_id, tenant)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return cancel_job(conn, data_dir, job_id, tenant)
