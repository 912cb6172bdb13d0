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


def mark_created(pipe: Pipeline, job_id: str) -> None:
    """Queue on `pipe` (the transaction that creates the job's hash) its first status, `queued`, and
    the matching event."""
    pipe.hset(keys.job(job_id), "status", JobStatus.QUEUED.value)
    pipe.xadd(
        keys.job_events(job_id),
        {"event": "status", "data": _status_data(JobStatus.QUEUED)},
        maxlen=keys.EVENTS_MAXLEN,
    )


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


# Atomic compare-and-set of a job's status. KEYS: the job hash, its event stream.
# ARGV: new status, stream maxlen, event JSON, the expected statuses, "--", then field/value pairs.
# Returns nil when the job does not exist, else {1 if done or 0, the status before}.
_COMPARE_AND_SET = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return nil end
local i = 4
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
return {1, current}
"""


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
    args = [to.value, str(keys.EVENTS_MAXLEN), event_data, *(status.value for status in expected), "--"]
    for name, value in encoded.items():
        args += [name, value]
    reply = conn.eval(_COMPARE_AND_SET, 2, keys.job(job_id), keys.job_events(job_id), *args)
    if reply is None:
        return Move(False, None)
    done, before = reply
    return Move(bool(done), JobStatus(before.decode() if isinstance(before, bytes) else before))


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
