"""Per-request and per-tenant limits, each answer naming the limit and the setting that sets it.

    size limits        max_dataset_examples, max_features (uploads); max_examples is checked in
                       service.api.validation for jobs
    active jobs        a tenant's queued + running jobs < max_active_jobs, else 429 + Retry-After
    request rate       rate_limit_per_minute per tenant on /v1, else 429 + Retry-After

Redis keys (`service.contract.keys`)::

    active_jobs(tenant)      sorted set: job id -> time its record was created, or minus the time it
                             was admitted while the record is being created. Pruned of jobs that are
                             final or gone whenever it is counted, so it stays right even if no worker
                             ever touches it (a member not created yet counts for a grace period).
    rate(tenant, window)     request counter of one fixed one-minute window (expires after two)
    event_streams(tenant)    sorted set: open event stream token -> its lease's expiry. A stream renews
                             its lease while it runs and drops it when it ends; a lease of a process
                             that died lapses after STREAM_LEASE_SECONDS.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, cast

import anyio
import redis
import redis.asyncio
from fastapi import Depends

from service.api.deps import RedisDep, SettingsDep, TenantDep
from service.api.errors import InvalidInput, TooManyRequests, issue
from service.contract import keys, queue, records
from service.contract.jobstate import ACTIVE
from service.contract.settings import Settings
from service.contract.spec import MAX_SELECTED_LABELS

RATE_WINDOW_SECONDS = 60
#: Seconds an event stream's lease lasts unless renewed (streams renew theirs every few seconds).
STREAM_LEASE_SECONDS = 30
#: What a tenant at its event-streams limit is told to wait.
STREAMS_RETRY_AFTER_SECONDS = 5
#: What a tenant at its uploads-in-progress limit is told to wait.
UPLOADS_RETRY_AFTER_SECONDS = 5
#: Seconds an admitted job may take to get its record before the counter treats it as gone.
CREATING_GRACE_SECONDS = 60
#: What a tenant at its active-jobs limit is told to wait (jobs take a while; there is no better guess).
ACTIVE_RETRY_AFTER_SECONDS = 30


def env_name(setting: str) -> str:
    """The environment variable of a setting: max_examples -> LELASTIC_MAX_EXAMPLES."""
    return f"LELASTIC_{setting.upper()}"


def exceeds(what: str, value: int, setting: str, limit: int, unit: str = "") -> str:
    """'n = 60000 exceeds max_examples = 50000 (LELASTIC_MAX_EXAMPLES)'."""
    return f"{what} = {value}{unit} exceeds {setting} = {limit}{unit} ({env_name(setting)})"


def limit_issue(
    loc: list[str | int], what: str, value: int, setting: str, limit: int, unit: str = ""
) -> dict[str, Any]:
    """An error entry for a value over a limit; `ctx` carries the limit for programs."""
    entry = issue(loc, exceeds(what, value, setting, limit, unit), value)
    entry["ctx"] = {"limit": setting, "allowed": limit, "env": env_name(setting)}
    return entry


# -------------------------------------------------------------------------------- sizes


def dataset_issues(shape: tuple[int, ...] | list[int], settings: Settings) -> list[dict[str, Any]]:
    """Issues of an uploaded array of `shape` ([n, ...]) against max_dataset_examples and max_features."""
    found = []
    n, features = int(shape[0]), math.prod(int(s) for s in shape[1:])
    if n > settings.max_dataset_examples:
        found.append(limit_issue(["body", "file", "X"], "n", n, "max_dataset_examples", settings.max_dataset_examples))
    if features > settings.max_features:
        found.append(
            limit_issue(["body", "file", "X"], "features per example", features, "max_features", settings.max_features)
        )
    return found


def check_dataset(shape: tuple[int, ...] | list[int], settings: Settings) -> None:
    found = dataset_issues(shape, settings)
    if found:
        raise InvalidInput(found)


#: Most distinct labels in an uploaded dataset: as many as one selection may name. Every class is kept in
#: the dataset's record (classes, counts, names), which each listing page and job submission reads.
MAX_CLASSES = MAX_SELECTED_LABELS


def check_classes(count: int) -> None:
    """InvalidInput when an uploaded dataset has more than MAX_CLASSES distinct labels."""
    if count > MAX_CLASSES:
        msg = (
            f"y has {count} distinct labels; at most {MAX_CLASSES} are allowed (as many as a selection can "
            "name): upload without labels and select rows by 'indices' instead"
        )
        raise InvalidInput.at(["body", "y"], msg, count)


# -------------------------------------------------------------------------------- active jobs


# KEYS[1]: the tenant's active set. ARGV: job id, now, max_active_jobs, grace seconds, job key prefix,
# then the active statuses.
# Prunes members that are final or gone (a missing record with a negative score is being created),
# then adds the job (score -now) when fewer than the limit remain.
# Returns -1 when admitted, else the number of active jobs.
_ADMIT = """
local now = tonumber(ARGV[2])
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local active = {}
for i = 6, #ARGV do active[ARGV[i]] = true end
local count = 0
for i = 1, #members, 2 do
  local status = redis.call('HGET', ARGV[5] .. members[i], 'status')
  local score = tonumber(members[i + 1])
  if status and active[status] then
    count = count + 1
  elseif (not status) and score < 0 and now + score < tonumber(ARGV[4]) then
    count = count + 1
  else
    redis.call('ZREM', KEYS[1], members[i])
  end
end
if count >= tonumber(ARGV[3]) then return count end
redis.call('ZADD', KEYS[1], -now, ARGV[1])
return -1
"""


def _try_admit(conn: redis.Redis, tenant: str, job_id: str, limit: int) -> int:
    job_key_prefix = keys.job("")
    args = [
        job_id,
        repr(time.time()),
        limit,
        CREATING_GRACE_SECONDS,
        job_key_prefix,
        *(status.value for status in ACTIVE),
    ]
    return int(conn.eval(_ADMIT, 1, keys.active_jobs(tenant), *args))


def _reconcile_active(conn: redis.Redis, tenant: str) -> None:
    """Let RQ's view end jobs whose worker died without saying so (they then stop counting)."""
    members: list[bytes] = cast(Any, conn.zrange(keys.active_jobs(tenant), 0, -1))
    for member in members:
        record = records.get_job(conn, records.text(member))
        if record is not None and record.status in ACTIVE:
            queue.reconcile(conn, record)


def admit_job(conn: redis.Redis, settings: Settings, tenant: str, job_id: str) -> None:
    """Count `job_id` among the tenant's active jobs, or TooManyRequests at max_active_jobs."""
    limit = settings.max_active_jobs
    if _try_admit(conn, tenant, job_id, limit) < 0:
        return
    _reconcile_active(conn, tenant)  # only when at the limit: some may have died unnoticed
    count = _try_admit(conn, tenant, job_id, limit)
    if count < 0:
        return
    msg = (
        f"active jobs = {count} (queued + running) reached max_active_jobs = {limit} "
        f"({env_name('max_active_jobs')}); wait for one to finish or cancel one"
    )
    entry = issue(["tenant"], msg, count)
    entry["ctx"] = {"limit": "max_active_jobs", "allowed": limit, "env": env_name("max_active_jobs")}
    raise TooManyRequests([entry], retry_after=ACTIVE_RETRY_AFTER_SECONDS)


def confirm_job(conn: redis.Redis, tenant: str, job_id: str) -> None:
    """The admitted job's record exists now: from here on a missing record means the job is gone."""
    conn.zadd(keys.active_jobs(tenant), {job_id: time.time()}, xx=True)


def release_job(conn: redis.Redis, tenant: str, job_id: str) -> None:
    """Stop counting a job that was admitted but never created."""
    conn.zrem(keys.active_jobs(tenant), job_id)


# -------------------------------------------------------------------------------- rate


def count_request(conn: redis.Redis, tenant: str, limit: int, *, now: float | None = None) -> None:
    """Count one request in the tenant's current one-minute window; TooManyRequests past `limit`."""
    now = time.time() if now is None else now
    window = int(now // RATE_WINDOW_SECONDS)
    key = keys.rate(tenant, window)
    pipe = conn.pipeline()
    pipe.incr(key)
    pipe.expire(key, 2 * RATE_WINDOW_SECONDS)
    count = int(pipe.execute()[0])
    if count <= limit:
        return
    retry_after = math.ceil((window + 1) * RATE_WINDOW_SECONDS - now)
    msg = (
        f"requests this minute = {count} exceeds rate_limit_per_minute = {limit} "
        f"({env_name('rate_limit_per_minute')}); retry after {retry_after} s"
    )
    entry = issue(["tenant"], msg, count)
    entry["ctx"] = {
        "limit": "rate_limit_per_minute",
        "allowed": limit,
        "env": env_name("rate_limit_per_minute"),
    }
    raise TooManyRequests([entry], retry_after=retry_after)


def rate_limit(conn: RedisDep, settings: SettingsDep, tenant: TenantDep) -> None:
    """Dependency of the /v1 routers: the per-tenant request rate."""
    count_request(conn, tenant, settings.rate_limit_per_minute)


RateLimited = Depends(rate_limit)


# -------------------------------------------------------------------- leases: streams and uploads

# KEYS[1]: the tenant's leases of one kind (token -> expiry). ARGV: token, now, lease seconds, limit.
# Drops lapsed leases, then adds this one when fewer than the limit remain.
# Returns -1 when opened, else the number of leases held.
_OPEN_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[4]) then return count end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return -1
"""


def _open_lease(
    conn: redis.Redis, key: str, *, seconds: int, setting: str, limit: int, what: str, advice: str, retry_after: int
) -> str:
    """A lease (its token) on one of `limit` slots under `key`, lapsing after `seconds` unless renewed or
    given back; TooManyRequests naming `setting` when all are held."""
    token = uuid.uuid4().hex
    count = int(conn.eval(_OPEN_LEASE, 1, key, token, repr(time.time()), seconds, limit))
    if count < 0:
        return token
    msg = f"{what} = {count} reached {setting} = {limit} ({env_name(setting)}); {advice}"
    entry = issue(["tenant"], msg, count)
    entry["ctx"] = {"limit": setting, "allowed": limit, "env": env_name(setting)}
    raise TooManyRequests([entry], retry_after=retry_after)


def open_stream(conn: redis.Redis, settings: Settings, tenant: str) -> str:
    """A lease on one of the tenant's `max_event_streams_per_tenant` event streams (its token), or
    TooManyRequests naming the limit. The stream renews it (`renew_stream`) and ends it (`close_stream`)."""
    return _open_lease(
        conn,
        keys.event_streams(tenant),
        seconds=STREAM_LEASE_SECONDS,
        setting="max_event_streams_per_tenant",
        limit=settings.max_event_streams_per_tenant,
        what="open event streams",
        advice="close a stream (or poll GET /v1/jobs/{job_id}) and try again",
        retry_after=STREAMS_RETRY_AFTER_SECONDS,
    )


def open_upload(conn: redis.Redis, settings: Settings, tenant: str) -> str:
    """A lease on one of the tenant's `max_uploads_per_tenant` uploads in progress (its token), or
    TooManyRequests naming the limit; `close_upload` gives it back. The lease of an API process that died
    lapses after `upload_reservation_seconds`, as its storage reservation does."""
    return _open_lease(
        conn,
        keys.uploads_in_progress(tenant),
        seconds=settings.upload_reservation_seconds,
        setting="max_uploads_per_tenant",
        limit=settings.max_uploads_per_tenant,
        what="uploads in progress",
        advice="wait for one to finish and try again",
        retry_after=UPLOADS_RETRY_AFTER_SECONDS,
    )


def close_upload(conn: redis.Redis, tenant: str, token: str) -> None:
    """Give an upload's lease back."""
    conn.zrem(keys.uploads_in_progress(tenant), token)


async def renew_stream(aconn: redis.asyncio.Redis, tenant: str, token: str) -> None:
    """Extend an open stream's lease by STREAM_LEASE_SECONDS."""
    key = keys.event_streams(tenant)
    await aconn.zadd(key, {token: time.time() + STREAM_LEASE_SECONDS}, xx=True)
    await aconn.expire(key, 2 * STREAM_LEASE_SECONDS)


async def close_stream(aconn: redis.asyncio.Redis, tenant: str, token: str) -> None:
    """Give the stream's lease back (also when the stream is being cancelled: a client went away)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        await aconn.zrem(keys.event_streams(tenant), token)
