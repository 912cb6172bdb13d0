"""Job and upload records in Redis: create, read, list and delete them; job progress and events.

Key names come from `service.contract.keys`; a job's status moves only through
`service.contract.jobstate`. The RQ job that runs a lelastic job has the same id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio
from redis.typing import EncodableT, FieldT

from service.contract import keys
from service.contract.jobstate import JobStatus, forget, mark_created

DEFAULT_TENANT = "default"
#: Connections of an asyncio client's pool (commands beyond wait for one).
ASYNC_POOL_CONNECTIONS = 64


def connect(url: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A Redis client with explicit timeouts (redis-py 8 defaults are not relied on)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        health_check_interval=30,
        retry_on_timeout=True,
    )


def connect_async(url: str, *, socket_timeout: float = 10.0) -> redis.asyncio.Redis:
    """An asyncio Redis client with the same explicit timeouts (for the API's event streams, health and
    metrics: no thread per request), on a pool of ASYNC_POOL_CONNECTIONS connections where a command
    waits for a free one. Its blocking reads must block for less than `socket_timeout`."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=ASYNC_POOL_CONNECTIONS,
        timeout=socket_timeout,  # a command waits this long for a free connection, then fails
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        health_check_interval=30,
        retry_on_timeout=True,
    )
    return redis.asyncio.Redis.from_pool(pool)


def new_id() -> str:
    """A fresh record id (32 hex digits)."""
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


def text(value: bytes | str) -> str:
    """A Redis reply value as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _hash_fields(fields: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """`fields` typed as redis-py's HSET mapping."""
    return {name: value for name, value in fields.items()}


def _decode(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


# --------------------------------------------------------------------------------------------- jobs


@dataclass
class JobRecord:
    id: str
    tenant: str
    spec: dict[str, Any]
    status: JobStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    progress: dict[str, Any]
    result: dict[str, Any] | None

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> JobRecord:
        def number(name: str) -> float | None:
            return float(fields[name]) if fields.get(name) else None

        return cls(
            id=fields["id"],
            tenant=fields.get("tenant", DEFAULT_TENANT),
            spec=json.loads(fields["spec"]),
            status=JobStatus(fields["status"]),
            created_at=float(fields["created_at"]),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            error=fields.get("error") or None,
            progress=json.loads(fields.get("progress") or '{"fraction": 0, "stage": "queued", "message": ""}'),
            result=json.loads(fields["result"]) if fields.get("result") else None,
        )


def create_job(
    conn: redis.Redis, *, spec: dict[str, Any], tenant: str = DEFAULT_TENANT, job_id: str | None = None
) -> JobRecord:
    """Store a new job record, status `queued` (the caller enqueues it)."""
    job_id = job_id or new_id()
    created = now()
    progress = {"fraction": 0.0, "stage": "queued", "message": "waiting for a worker"}
    fields = {
        "id": job_id,
        "tenant": tenant,
        "spec": json.dumps(spec),
        "created_at": repr(created),
        "progress": json.dumps(progress),
    }
    pipe = conn.pipeline()
    pipe.hset(keys.job(job_id), mapping=_hash_fields(fields))
    mark_created(pipe, job_id, tenant, created)
    pipe.zadd(keys.jobs_index(tenant), {job_id: created})
    pipe.execute()
    return JobRecord.from_hash(fields | {"status": JobStatus.QUEUED.value})


def get_job(conn: redis.Redis, job_id: str) -> JobRecord | None:
    return job_from_hash(conn.hgetall(keys.job(job_id)))


def job_from_hash(raw: Mapping[bytes | str, bytes | str]) -> JobRecord | None:
    """The record of a job hash as HGETALL returns it (None: an empty reply, no such job)."""
    return JobRecord.from_hash(_decode(raw)) if raw else None


def set_progress(
    conn: redis.Redis,
    job_id: str,
    *,
    fraction: float,
    stage: str,
    message: str = "",
    tiles: dict[str, Any] | None = None,
) -> None:
    """Record progress (0 ≤ fraction ≤ 1) and publish it on the job's event stream; `tiles` (a sharded
    job's done, total, per_second, eta_seconds) goes beside it."""
    fields: dict[str, Any] = {"fraction": round(max(0.0, min(1.0, fraction)), 4), "stage": stage, "message": message}
    if tiles is not None:
        fields["tiles"] = tiles
    progress = json.dumps(fields)
    pipe = conn.pipeline()
    pipe.hset(keys.job(job_id), "progress", progress)
    pipe.xadd(
        keys.job_events(job_id), {"event": "progress", "data": progress}, maxlen=keys.EVENTS_MAXLEN, approximate=True
    )
    pipe.execute()


def read_events(
    conn: redis.Redis, job_id: str, *, after: str = "0-0", block_ms: int | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """Events after stream id `after`: a list of (event id, event name, data)."""
    entries: list[tuple[bytes, dict[bytes | str, bytes | str]]]
    if block_ms is None:
        entries = cast(Any, conn.xrange(keys.job_events(job_id), min=f"({after}" if after != "0-0" else "-"))
    else:
        reply: Any = conn.xread({keys.job_events(job_id): after}, block=block_ms)
        entries = reply[0][1] if reply else []
    return decode_events(entries)


def decode_events(entries: list[tuple[bytes, dict[bytes | str, bytes | str]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """Stream entries (as XRANGE or one stream of XREAD returns them) as (event id, event name, data)."""
    out = []
    for entry_id, raw in entries:
        fields = _decode(raw)
        out.append((text(entry_id), fields["event"], json.loads(fields["data"])))
    return out


def list_jobs(
    conn: redis.Redis,
    *,
    tenant: str = DEFAULT_TENANT,
    status: JobStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[JobRecord], str | None]:
    """Jobs newest first. `cursor` is the opaque `next_cursor` of the previous page.

    With `status`, the pages come from the tenant's status index (`keys.status_index`): the cost of a
    page does not grow with the tenant's jobs in other statuses.
    """
    index = keys.jobs_index(tenant) if status is None else keys.status_index(status.value, tenant)
    max_score = "+inf" if cursor is None else f"({cursor}"
    out: list[JobRecord] = []
    next_cursor: str | None = None
    while len(out) < limit:
        batch: list[tuple[bytes, float]] = cast(
            Any, conn.zrevrangebyscore(index, max_score, "-inf", start=0, num=max(limit * 2, 50), withscores=True)
        )
        if not batch:
            break
        for member, score in batch:
            record = get_job(conn, text(member))
            max_score = f"({score!r}"
            if record is None or (status is not None and record.status != status):
                continue
            out.append(record)
            if len(out) == limit:
                next_cursor = repr(score)
                break
    return out, next_cursor


def delete_job_record(conn: redis.Redis, job_id: str, tenant: str) -> None:
    """Delete the job's record and events and drop it from its indexes (one atomic step)."""
    forget(conn, job_id, tenant)


# ----------------------------------------------------------------------------------------- datasets


def create_dataset(
    conn: redis.Redis,
    *,
    kind: str,
    name: str,
    meta: dict[str, Any],
    tenant: str = DEFAULT_TENANT,
    dataset_id: str | None = None,
) -> dict[str, Any]:
    """Store a dataset (or uploaded weights) record; `meta` holds n, shape, dtype, has_labels, classes."""
    dataset_id = dataset_id or new_id()
    created = now()
    fields = {
        "id": dataset_id,
        "tenant": tenant,
        "kind": kind,
        "name": name,
        "meta": json.dumps(meta),
        "created_at": repr(created),
    }
    pipe = conn.pipeline()
    pipe.hset(keys.dataset(dataset_id), mapping=_hash_fields(fields))
    pipe.zadd(keys.datasets_index(tenant), {dataset_id: created})
    pipe.execute()
    return _dataset_from_hash(fields)


def _dataset_from_hash(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "id": fields["id"],
        "tenant": fields["tenant"],
        "kind": fields["kind"],
        "name": fields["name"],
        "created_at": float(fields["created_at"]),
        **json.loads(fields["meta"]),
    }


def get_dataset(conn: redis.Redis, dataset_id: str) -> dict[str, Any] | None:
    raw = conn.hgetall(keys.dataset(dataset_id))
    return _dataset_from_hash(_decode(raw)) if raw else None


def list_datasets(conn: redis.Redis, *, tenant: str = DEFAULT_TENANT) -> list[dict[str, Any]]:
    members: list[bytes] = cast(Any, conn.zrevrange(keys.datasets_index(tenant), 0, -1))
    ids = [text(m) for m in members]
    return [d for d in (get_dataset(conn, i) for i in ids) if d is not None]


def page_datasets(
    conn: redis.Redis, *, tenant: str = DEFAULT_TENANT, limit: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the tenant's datasets, newest first, and the cursor of the next page (None on the last).

    The cursor is the creation time of the page's last dataset; the next page starts below it.
    """
    index = keys.datasets_index(tenant)
    max_score = f"({cursor}" if cursor is not None else "+inf"
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        batch: list[tuple[bytes, float]] = cast(
            Any, conn.zrevrangebyscore(index, max_score, "-inf", start=0, num=limit - len(out), withscores=True)
        )
        if not batch:
            return out, None
        for member, score in batch:
            max_score = f"({score!r}"
            record = get_dataset(conn, text(member))
            if record is not None:
                out.append(record)
    more = cast(Any, conn.zrevrangebyscore(index, max_score, "-inf", start=0, num=1))
    return out, (max_score[1:] if more else None)


def delete_dataset_record(conn: redis.Redis, dataset_id: str, tenant: str) -> None:
    conn.delete(keys.dataset(dataset_id))
    conn.zrem(keys.datasets_index(tenant), dataset_id)
