"""Job and dataset records in Redis: the one place that names Redis keys and moves job states.

Keys (prefix `lelastic:`)::

    job:<id>                 hash: id, tenant, spec (JSON), status, created_at, started_at, finished_at,
                             error, progress (JSON {fraction, stage, message}), result (JSON)
    job:<id>:events          stream of {"event": "progress" | "status", "data": JSON}; its entry ids are
                             the SSE event ids, so a client resumes with Last-Event-ID
    jobs:<tenant>            sorted set of job ids by creation time (listing, cursor pagination)
    dataset:<id>             hash: id, tenant, kind ("dataset" | "weights"), name, meta (JSON), created_at
    datasets:<tenant>        sorted set of dataset ids by creation time

The RQ job that runs a lelastic job has the same id. Status moves only through `transition`, an atomic
compare-and-set, so a cancel racing a completion ends in exactly one final state.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

PREFIX = "lelastic:"
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
FINAL_STATUSES = ("succeeded", "failed", "canceled")
EVENTS_MAXLEN = 1000
DEFAULT_TENANT = "default"


def connect(url: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A Redis client with explicit timeouts (redis-py 8 defaults are not relied on)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        health_check_interval=30,
        retry_on_timeout=True,
    )


def new_id() -> str:
    """A fresh record id (32 hex digits)."""
    return uuid.uuid4().hex


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def events_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:events"


def jobs_index_key(tenant: str) -> str:
    return f"{PREFIX}jobs:{tenant}"


def dataset_key(dataset_id: str) -> str:
    return f"{PREFIX}dataset:{dataset_id}"


def datasets_index_key(tenant: str) -> str:
    return f"{PREFIX}datasets:{tenant}"


def now() -> float:
    return time.time()


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


# --------------------------------------------------------------------------------------------- jobs


@dataclass
class JobRecord:
    id: str
    tenant: str
    spec: dict[str, Any]
    status: str
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
            status=fields["status"],
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
    """Store a new job record with status `queued` (the caller enqueues it)."""
    job_id = job_id or new_id()
    created = now()
    progress = {"fraction": 0.0, "stage": "queued", "message": "waiting for a worker"}
    fields = {
        "id": job_id,
        "tenant": tenant,
        "spec": json.dumps(spec),
        "status": "queued",
        "created_at": repr(created),
        "progress": json.dumps(progress),
    }
    pipe = conn.pipeline()
    pipe.hset(job_key(job_id), mapping=fields)
    pipe.zadd(jobs_index_key(tenant), {job_id: created})
    pipe.xadd(events_key(job_id), {"event": "status", "data": json.dumps({"status": "queued"})}, maxlen=EVENTS_MAXLEN)
    pipe.execute()
    return JobRecord.from_hash(fields)


def get_job(conn: redis.Redis, job_id: str) -> JobRecord | None:
    raw = conn.hgetall(job_key(job_id))
    return JobRecord.from_hash(_decode(raw)) if raw else None


# Atomic compare-and-set of a job's status. KEYS: job hash, events stream.
# ARGV: new status, maxlen, event JSON, then allowed old statuses, then "--", then field/value pairs.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return nil end
local i = 4
local allowed = false
while ARGV[i] ~= '--' do
  if ARGV[i] == current then allowed = true end
  i = i + 1
end
if not allowed then return current end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
i = i + 1
while ARGV[i] do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', 'status', 'data', ARGV[3])
return 'OK'
"""


def transition(
    conn: redis.Redis,
    job_id: str,
    to: str,
    *,
    allowed_from: tuple[str, ...],
    fields: dict[str, Any] | None = None,
) -> tuple[bool, str | None]:
    """Set the job's status to `to` if it is now one of `allowed_from`, with extra hash fields.

    Returns (done, status before). (False, None) when the job does not exist.
    """
    assert to in STATUSES
    extra: dict[str, str] = {}
    for name, value in (fields or {}).items():
        extra[name] = (
            value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else repr(value)
        )
    event = {"status": to}
    if "error" in extra:
        event["error"] = extra["error"]
    args: list[str] = [to, str(EVENTS_MAXLEN), json.dumps(event), *allowed_from, "--"]
    for name, value in extra.items():
        args += [name, value]
    reply = conn.eval(_TRANSITION, 2, job_key(job_id), events_key(job_id), *args)
    if reply is None:
        return False, None
    reply = reply.decode() if isinstance(reply, bytes) else reply
    return (True, None) if reply == "OK" else (False, reply)


def set_progress(conn: redis.Redis, job_id: str, *, fraction: float, stage: str, message: str = "") -> None:
    """Record progress (0 ≤ fraction ≤ 1) and publish it on the job's event stream."""
    progress = json.dumps({"fraction": round(max(0.0, min(1.0, fraction)), 4), "stage": stage, "message": message})
    pipe = conn.pipeline()
    pipe.hset(job_key(job_id), "progress", progress)
    pipe.xadd(events_key(job_id), {"event": "progress", "data": progress}, maxlen=EVENTS_MAXLEN, approximate=True)
    pipe.execute()


def read_events(
    conn: redis.Redis, job_id: str, *, after: str = "0-0", block_ms: int | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """Events after stream id `after`: a list of (event id, event name, data)."""
    if block_ms is None:
        entries = conn.xrange(events_key(job_id), min=f"({after}" if after != "0-0" else "-")
    else:
        reply = conn.xread({events_key(job_id): after}, block=block_ms)
        entries = reply[0][1] if reply else []
    out = []
    for entry_id, fields in entries:
        f = _decode(fields)
        out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, f["event"], json.loads(f["data"])))
    return out


def list_jobs(
    conn: redis.Redis,
    *,
    tenant: str = DEFAULT_TENANT,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[JobRecord], str | None]:
    """Jobs newest first. `cursor` is the opaque `next_cursor` of the previous page."""
    index = jobs_index_key(tenant)
    max_score = "+inf" if cursor is None else f"({cursor}"
    out: list[JobRecord] = []
    next_cursor: str | None = None
    while len(out) < limit:
        batch = conn.zrevrangebyscore(index, max_score, "-inf", start=0, num=max(limit * 2, 50), withscores=True)
        if not batch:
            break
        for member, score in batch:
            record = get_job(conn, member.decode())
            max_score = f"({score!r}"
            if record is None or (status is not None and record.status != status):
                continue
            out.append(record)
            if len(out) == limit:
                next_cursor = repr(score)
                break
    return out, next_cursor


def delete_job_record(conn: redis.Redis, job_id: str, tenant: str) -> None:
    conn.delete(job_key(job_id), events_key(job_id))
    conn.zrem(jobs_index_key(tenant), job_id)


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
    pipe.hset(dataset_key(dataset_id), mapping=fields)
    pipe.zadd(datasets_index_key(tenant), {dataset_id: created})
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
    raw = conn.hgetall(dataset_key(dataset_id))
    return _dataset_from_hash(_decode(raw)) if raw else None


def list_datasets(conn: redis.Redis, *, tenant: str = DEFAULT_TENANT) -> list[dict[str, Any]]:
    ids = [m.decode() for m in conn.zrevrange(datasets_index_key(tenant), 0, -1)]
    return [d for d in (get_dataset(conn, i) for i in ids) if d is not None]


def delete_dataset_record(conn: redis.Redis, dataset_id: str, tenant: str) -> None:
    conn.delete(dataset_key(dataset_id))
    conn.zrem(datasets_index_key(tenant), dataset_id)
