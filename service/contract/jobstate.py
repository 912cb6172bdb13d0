"""A job's status: its values, the moves allowed between them, and the only functions that write it.

    queued   ──► running, failed, canceled
    running  ──► succeeded, failed, canceled; queued (its worker was lost: run it again);
                 running (RQ runs it again before its record was put back to queued)
    succeeded, failed, canceled: final, never left

Every status write is one atomic compare-and-set on the job's hash (`keys.job`) that also appends a
`status` event to the job's stream (`keys.job_events`). A move whose expected statuses do not include
the job's status now is refused and changes nothing, so a cancel racing a completion ends in exactly
one final state. Each `mark_*` function names the statuses it moves from; every one of those moves is
in TRANSITIONS, checked before Redis is asked.

The same atomic writes keep the status index: each job is a member of `keys.status_index(status,
tenant)` for its status now, `keys.JOB_COUNTS` counts the members of each status, and
`keys.JOB_DURATIONS` adds up the run time of jobs as they end. Counts change only with the index
membership (a ZADD that added, a ZREM that removed), so indexing a job twice changes nothing: records
created before the index existed are added by `index_existing` (run by the API at start-up until
`keys.STATUS_INDEX_READY` is set), and a move of such a record indexes it on the way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

import redis
from redis.client import Pipeline

from service.contract import keys


class JobStatus(StrEnum):
    """A job's status (a `str`); the value is what the record, the events and the API carry."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


#: A job not finished yet: waiting for a worker, or running on one.
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
#: A job that has ended; its status never changes again.
FINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

#: Status now -> the statuses it may move to.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELED}),
        JobStatus.RUNNING: frozenset(
            {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
        ),
        JobStatus.SUCCEEDED: frozenset(),
        JobStatus.FAILED: frozenset(),
        JobStatus.CANCELED: frozenset(),
    }
)


class Move(NamedTuple):
    """The outcome of a status write: whether it was done, and the status the job had before it.

    `before` is None when the job does not exist.
    """

    done: bool
    before: JobStatus | None


def can_move(before: JobStatus, after: JobStatus) -> bool:
    """Whether TRANSITIONS allows a job in status `before` to move to `after`."""
    return after in TRANSITIONS[before]


def mark_created(pipe: Pipeline, job_id: str, tenant: str, created_at: float) -> None:
    """Queue on `pipe` (the transaction that creates the job's hash) its first status, `queued`, the
    matching event and its place in the status index (a fresh id is in no index yet)."""
    pipe.hset(keys.job(job_id), "status", JobStatus.QUEUED.value)
    pipe.xadd(
        keys.job_events(job_id),
        {"event": "status", "data": _status_data(JobStatus.QUEUED)},
        maxlen=keys.EVENTS_MAXLEN,
    )
    pipe.zadd(keys.status_index(JobStatus.QUEUED.value, tenant), {job_id: created_at})
    pipe.hincrby(keys.JOB_COUNTS, JobStatus.QUEUED.value, 1)


def mark_running(conn: redis.Redis, job_id: str, *, at: float | None = None) -> Move:
    """A worker starts the job (queued, or running again after its worker was lost).

    Sets `started_at` (`at`, default now) and clears the error of an earlier run.
    """
    return _move(conn, job_id, JobStatus.RUNNING, ACTIVE, {"started_at": _time(at), "error": ""})


def mark_requeued(conn: redis.Redis, job_id: str, reason: str) -> Move:
    """A running job whose worker was lost is queued again; its progress says why."""
    progress = {"fraction": 0.0, "stage": JobStatus.QUEUED.value, "message": f"{reason}; queued to run again"}
    return _move(conn, job_id, JobStatus.QUEUED, {JobStatus.RUNNING}, {"progress": progress})


def mark_succeeded(conn: redis.Redis, job_id: str, result: dict[str, Any], *, at: float | None = None) -> Move:
    """A running job succeeded with `result` (the result document), finished `at` (default now)."""
    return _move(conn, job_id, JobStatus.SUCCEEDED, {JobStatus.RUNNING}, {"result": result, "finished_at": _time(at)})


def mark_failed(
    conn: redis.Redis,
    job_id: str,
    reason: str,
    *,
    expected: Collection[JobStatus] = ACTIVE,
    at: float | None = None,
) -> Move:
    """The job fails with `reason` if it is one of `expected` (default: queued or running).

    A worker fails only the run it owns (`expected={RUNNING}`); the API fails a job it could not queue
    (`expected={QUEUED}`); a job lost by its worker fails from either.
    """
    return _move(conn, job_id, JobStatus.FAILED, expected, {"error": reason, "finished_at": _time(at)})


def mark_canceled(conn: redis.Redis, job_id: str, *, at: float | None = None) -> Move:
    """A queued or running job is canceled, finished `at` (default now)."""
    return _move(conn, job_id, JobStatus.CANCELED, ACTIVE, {"finished_at": _time(at)})


#: The tenant of a record without one (as `records.DEFAULT_TENANT`).
_DEFAULT_TENANT = "default"

# Lua shared by the scripts below: the index and counters of one job. `fields` is its HMGET of
# status, tenant, created_at, started_at, finished_at; KEYS[3], KEYS[4]: JOB_COUNTS, JOB_DURATIONS.
_INDEX_LUA = """
local function index_key(prefix, status, fields, default_tenant)
  return prefix .. status .. ':' .. (fields[2] or default_tenant)
end
local function unindex(prefix, id, status, fields, default_tenant)
  if redis.call('ZREM', index_key(prefix, status, fields, default_tenant), id) == 1 then
    redis.call('HINCRBY', KEYS[3], status, -1)
  end
end
local function index(prefix, id, status, fields, default_tenant, final)
  local key = index_key(prefix, status, fields, default_tenant)
  if redis.call('ZADD', key, tonumber(fields[3]) or 0, id) == 0 then return 0 end
  redis.call('HINCRBY', KEYS[3], status, 1)
  if final and fields[4] and fields[4] ~= '' and fields[5] and fields[5] ~= '' then
    local seconds = math.max(0, tonumber(fields[5]) - tonumber(fields[4]))
    redis.call('HINCRBYFLOAT', KEYS[4], status .. ':sum', seconds)
    redis.call('HINCRBY', KEYS[4], status .. ':count', 1)
  end
  return 1
end
local RECORD_FIELDS = {'status', 'tenant', 'created_at', 'started_at', 'finished_at'}
"""

# Atomic compare-and-set of a job's status. KEYS: the job hash, its event stream, JOB_COUNTS,
# JOB_DURATIONS. ARGV: new status, stream maxlen, event JSON, status index prefix, default tenant,
# 1 if the new status is final else 0, the job id, the expected statuses, "--", then field/value pairs.
# Returns nil when the job does not exist, else {1 if done or 0, the status before}.
_COMPARE_AND_SET = (
    _INDEX_LUA
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return nil end
local i = 8
local expected = false
while ARGV[i] ~= '--' do
  if ARGV[i] == current then expected = true end
  i = i + 1
end
if not expected then return {0, current} end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
i = i + 1
while ARGV[i] do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', 'status', 'data', ARGV[3])
local fields = redis.call('HMGET', KEYS[1], unpack(RECORD_FIELDS))
unindex(ARGV[4], ARGV[7], current, fields, ARGV[5])
index(ARGV[4], ARGV[7], ARGV[1], fields, ARGV[5], ARGV[6] == '1')
return {1, current}
"""
)

# Index records that may predate the index. KEYS: (unused) x 2, JOB_COUNTS, JOB_DURATIONS.
# ARGV: status index prefix, default tenant, job key prefix, the number of final statuses, the final
# statuses, then the job ids. Returns how many jobs were added (those in an index already are left).
_INDEX_MANY = (
    _INDEX_LUA
    + """
local final = {}
local n_final = tonumber(ARGV[4])
for i = 5, 4 + n_final do final[ARGV[i]] = true end
local added = 0
for i = 5 + n_final, #ARGV do
  local fields = redis.call('HMGET', ARGV[3] .. ARGV[i], unpack(RECORD_FIELDS))
  if fields[1] then
    added = added + index(ARGV[1], ARGV[i], fields[1], fields, ARGV[2], final[fields[1]] == true)
  end
end
return added
"""
)

# Delete a job's record and events, and drop it from its indexes. KEYS: the job hash, its event stream,
# JOB_COUNTS, (unused), the tenant's jobs index. ARGV: status index prefix, default tenant, the job id.
_FORGET = (
    _INDEX_LUA
    + """
local fields = redis.call('HMGET', KEYS[1], unpack(RECORD_FIELDS))
if fields[1] then unindex(ARGV[1], ARGV[3], fields[1], fields, ARGV[2]) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[5], ARGV[3])
return 1
"""
)


def _move(
    conn: redis.Redis,
    job_id: str,
    to: JobStatus,
    expected: Collection[JobStatus],
    fields: dict[str, Any],
) -> Move:
    """Set the job's status to `to`, with `fields`, if its status now is one of `expected`."""
    refused = sorted(before.value for before in expected if not can_move(before, to))
    if refused:
        raise ValueError(f"no job moves from {', '.join(refused)} to {to.value}")
    encoded = {name: _encode(value) for name, value in fields.items()}
    event_data = _status_data(to, error=encoded.get("error"))
    args = [
        to.value,
        str(keys.EVENTS_MAXLEN),
        event_data,
        keys.STATUS_INDEX_PREFIX,
        _DEFAULT_TENANT,
        "1" if to in FINAL else "0",
        job_id,
        *(status.value for status in expected),
        "--",
    ]
    for name, value in encoded.items():
        args += [name, value]
    job_keys = (keys.job(job_id), keys.job_events(job_id), keys.JOB_COUNTS, keys.JOB_DURATIONS)
    reply = conn.eval(_COMPARE_AND_SET, len(job_keys), *job_keys, *args)
    if reply is None:
        return Move(False, None)
    done, before = reply
    return Move(bool(done), JobStatus(before.decode() if isinstance(before, bytes) else before))


def forget(conn: redis.Redis, job_id: str, tenant: str) -> None:
    """Delete the job's record and event stream and drop it from the tenant's jobs index and the
    status index, in one atomic step (the counts follow)."""
    job_keys = (keys.job(job_id), keys.job_events(job_id), keys.JOB_COUNTS, keys.JOB_DURATIONS, keys.jobs_index(tenant))
    conn.eval(_FORGET, len(job_keys), *job_keys, keys.STATUS_INDEX_PREFIX, _DEFAULT_TENANT, job_id)


def index_existing(conn: redis.Redis, *, batch: int = 1000) -> int:
    """Add every job record to the status index (and counts) unless it is there already; then set
    `keys.STATUS_INDEX_READY`. Returns how many records were added. Safe to run while jobs move, and
    more than once: a script adds a record only if it is in no index yet, `batch` records at a time."""
    added = 0
    final = [status.value for status in FINAL]
    head: list[str | int] = [keys.STATUS_INDEX_PREFIX, _DEFAULT_TENANT, keys.job(""), len(final), *final]
    counters = ("", "", keys.JOB_COUNTS, keys.JOB_DURATIONS)
    ids: list[str] = []
    for key in conn.scan_iter(match=keys.pattern(keys.job), count=batch):
        job_id = keys.id_in(key.decode() if isinstance(key, bytes) else str(key), keys.job)
        if job_id is not None:
            ids.append(job_id)
        if len(ids) >= batch:
            added += int(conn.eval(_INDEX_MANY, len(counters), *counters, *head, *ids))
            ids.clear()
    if ids:
        added += int(conn.eval(_INDEX_MANY, len(counters), *counters, *head, *ids))
    conn.set(keys.STATUS_INDEX_READY, "1")
    return added


def ensure_indexed(conn: redis.Redis) -> int | None:
    """`index_existing` unless `keys.STATUS_INDEX_READY` says it was done; returns what it added, or None."""
    if conn.exists(keys.STATUS_INDEX_READY):
        return None
    return index_existing(conn)


def _status_data(status: JobStatus, *, error: str | None = None) -> str:
    """The `data` of a `status` event: '{"status": ...}', with the error when the move sets one."""
    data = {"status": status.value} if error is None else {"status": status.value, "error": error}
    return json.dumps(data)


def _encode(value: Any) -> str:
    """A hash field value: strings as they are, dicts and lists as JSON, numbers as their repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value)
    return repr(value)


def _time(at: float | None) -> float:
    return time.time() if at is None else at
