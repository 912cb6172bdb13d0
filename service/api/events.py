"""Server-Sent Events of a job: its progress and status stream, resumable with Last-Event-ID.

Each SSE event is one entry of the job's Redis stream (`keys.job_events`)::

    id: 1718000000000-0
    event: progress | status
    data: {"fraction": 0.5, "stage": "similarity", "message": "..."} | {"status": "running"}

The stream ends after a final status (succeeded, failed, canceled). Reads go through the asyncio Redis
client and an open stream holds no thread of the API's pool and no Redis connection: the process's
`EventHub` runs one blocking XREAD (at most `BLOCK_MS`) over every followed stream and wakes the
streams whose job has new entries; each then reads them with a quick XRANGE. Every
`RECONCILE_SECONDS` the record is checked against RQ's status of its job (two reads), and reconciled
in a thread only when RQ says the job ended without the record knowing, so a job whose worker died
still ends its stream; the stream's lease (`limits.open_stream`) is renewed at the same time.
FastAPI's EventSourceResponse sends the `: ping` keep-alive comment after 15 s without events.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, cast

import anyio
import redis
import redis.asyncio
from fastapi import Request
from fastapi.sse import ServerSentEvent

from service.contract import keys, queue, records
from service.contract.jobstate import FINAL

BLOCK_MS = 1000
RECONCILE_SECONDS = 5.0
EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def is_event_id(value: str) -> bool:
    """Whether `value` is a stream entry id ("<ms>-<seq>", each part below 2**64), the only valid
    Last-Event-ID."""
    return EVENT_ID.fullmatch(value) is not None and all(int(part) < 2**64 for part in value.split("-"))


async def _final_status(
    aconn: redis.asyncio.Redis, conn: redis.Redis, job_id: str
) -> tuple[bool, records.JobRecord | None]:
    """(stream over, record): over when the record, reconciled if RQ says so, is final or was purged."""
    record = records.job_from_hash(await aconn.hgetall(keys.job(job_id)))
    if record is None:
        return True, None
    rq_status = await aconn.hget(queue.rq_job_key(job_id), "status")
    if queue.may_need_reconcile(record.status, records.text(rq_status) if rq_status else None):
        record = await anyio.to_thread.run_sync(queue.reconcile, conn, record)
    return record.status in FINAL, record


async def _read(aconn: redis.asyncio.Redis, job_id: str, after: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Events after stream id `after` (never blocks)."""
    entries = await aconn.xrange(keys.job_events(job_id), min=f"({after}" if after != "0-0" else "-")
    return records.decode_events(cast(Any, entries))


def get_hub(request: Request) -> EventHub:
    """The process's EventHub (started by the app's lifespan)."""
    hub: EventHub = request.app.state.event_hub
    return hub


class EventHub:
    """One blocking XREAD per API process over every followed job stream; each open stream waits on an
    `asyncio.Event` that the hub sets when its job's stream grows.

    The hub's cursor of a stream is the last entry id it has seen (at first, the stream's last id when
    the first follower came), so every entry added later wakes the followers. A follower registers
    before it reads and clears its event before each read, so no entry slips between a read and a wait.
    A stream that starts being followed while the hub's XREAD is in flight joins the next one (within
    BLOCK_MS). If Redis fails, the hub wakes everyone (their own reads then fail or succeed) and retries.
    """

    def __init__(self, aconn: redis.asyncio.Redis) -> None:
        self.aconn = aconn
        self.cursors: dict[str, str] = {}
        self.followers: dict[str, set[asyncio.Event]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> EventHub:
        self._task = asyncio.create_task(self._run(), name="lelastic-event-hub")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def follow(self, stream: str) -> asyncio.Event:
        """Register a follower of `stream`; returns its event (set when the stream may have grown)."""
        wake = asyncio.Event()
        if stream not in self.cursors:
            last: Any = await self.aconn.xrevrange(stream, count=1)
            self.cursors.setdefault(stream, records.text(last[0][0]) if last else "0-0")
        self.followers.setdefault(stream, set()).add(wake)
        self._changed.set()
        return wake

    def unfollow(self, stream: str, wake: asyncio.Event) -> None:
        waiting = self.followers.get(stream)
        if waiting is not None:
            waiting.discard(wake)
            if not waiting:
                del self.followers[stream]
                self.cursors.pop(stream, None)

    def _wake(self, streams: Iterable[str]) -> None:
        for stream in streams:
            for wake in self.followers.get(stream, ()):
                wake.set()

    async def _run(self) -> None:
        while True:
            if not self.cursors:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                streams: dict[Any, Any] = dict(self.cursors)
                reply: Any = await self.aconn.xread(streams, block=BLOCK_MS, count=100)
            except (redis.exceptions.RedisError, OSError):
                self._wake(list(self.followers))
                await asyncio.sleep(1.0)
                continue
            grown = []
            for stream, entries in reply or []:
                name = records.text(stream)
                if entries and name in self.cursors:
                    self.cursors[name] = records.text(entries[-1][0])
                    grown.append(name)
            self._wake(grown)


async def job_events(
    aconn: redis.asyncio.Redis,
    conn: redis.Redis,
    hub: EventHub,
    job_id: str,
    *,
    after: str = "0-0",
    renew: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """Yield the job's events after stream id `after` until a final status event.

    `aconn` does the reads, `hub` says when to read again; `conn` (blocking) only reconciles a job RQ has
    ended. `renew` is awaited every RECONCILE_SECONDS (the stream's lease).
    """
    stream = keys.job_events(job_id)
    wake = await hub.follow(stream)
    try:
        next_reconcile = 0.0
        while True:
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + RECONCILE_SECONDS
                if renew is not None:
                    await renew()
                over, final = await _final_status(aconn, conn, job_id)
                if final is None and over:
                    return
                if over and final is not None:
                    # Flush what is left, then make sure the client sees the final status even if its
                    # event was trimmed or was before `after`.
                    for event in await _read(aconn, job_id, after):
                        yield _sse(event)
                        if _is_final(event):
                            return
                    yield ServerSentEvent(
                        event="status", data=_status_data(final), id=after if after != "0-0" else None
                    )
                    return
            wake.clear()
            events = await _read(aconn, job_id, after)
            for event in events:
                after = event[0]
                yield _sse(event)
                if _is_final(event):
                    return
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, next_reconcile - time.monotonic()))
    finally:
        hub.unfollow(stream, wake)


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
