"""Server-Sent Events of a job: its progress and status stream, resumable with Last-Event-ID.

Each SSE event is one entry of the job's Redis stream (`keys.job_events`)::

    id: 1718000000000-0
    event: progress | status
    data: {"fraction": 0.5, "stage": "similarity", "message": "..."} | {"status": "running"}

The stream ends after a final status (succeeded, failed, canceled). Redis reads block at most
`BLOCK_MS`, well under the client's socket timeout, and run in a worker thread. Every
`RECONCILE_SECONDS` the record is reconciled with RQ, so a job whose worker died still ends its stream.
FastAPI's EventSourceResponse sends the `: ping` keep-alive comment after 15 s without events.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import redis
from fastapi.sse import ServerSentEvent

from service.contract import queue, records
from service.contract.jobstate import FINAL

BLOCK_MS = 1000
RECONCILE_SECONDS = 5.0
EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def is_event_id(value: str) -> bool:
    """Whether `value` is a stream entry id ("<ms>-<seq>"), the only valid Last-Event-ID."""
    return bool(EVENT_ID.match(value))


def _final_status(conn: redis.Redis, job_id: str) -> tuple[bool, records.JobRecord | None]:
    """(stream over, record): over when the reconciled record is final or the job was purged."""
    record = records.get_job(conn, job_id)
    if record is None:
        return True, None
    record = queue.reconcile(conn, record)
    return record.status in FINAL, record


async def job_events(conn: redis.Redis, job_id: str, *, after: str = "0-0") -> AsyncIterator[ServerSentEvent]:
    """Yield the job's events after stream id `after` until a final status event."""
    next_reconcile = 0.0
    while True:
        if time.monotonic() >= next_reconcile:
            next_reconcile = time.monotonic() + RECONCILE_SECONDS
            over, final = await anyio.to_thread.run_sync(_final_status, conn, job_id)
            if final is None and over:
                return
            if over and final is not None:
                # Flush what is left without blocking, then make sure the client sees the final status
                # even if its event was trimmed or was before `after`.
                pending = await anyio.to_thread.run_sync(partial(records.read_events, conn, job_id, after=after))
                for event in pending:
                    yield _sse(event)
                    if _is_final(event):
                        return
                yield ServerSentEvent(event="status", data=_status_data(final), id=after if after != "0-0" else None)
                return
        events = await anyio.to_thread.run_sync(
            partial(records.read_events, conn, job_id, after=after, block_ms=BLOCK_MS)
        )
        for event in events:
            after = event[0]
            yield _sse(event)
            if _is_final(event):
                return


def _sse(event: tuple[str, str, dict[str, Any]]) -> ServerSentEvent:
    event_id, name, data = event
    return ServerSentEvent(id=event_id, event=name, data=data)


def _is_final(event: tuple[str, str, dict[str, Any]]) -> bool:
    return event[1] == "status" and event[2].get("status") in FINAL


def _status_data(record: records.JobRecord) -> dict[str, str]:
    data = {"status": record.status.value}
    if record.error:
        data["error"] = record.error
    return data
