"""RQ glue: enqueue a job by dotted name, cancel it, and reconcile our record with RQ's view.

The queue carries only the job id (JSON serializer); the worker reads the spec from the job record and
the data from the data dir. The API process never imports `workers`.

Fairness across tenants: RQ pushes a new job at the tail of the queue; `enqueue` then moves it up, in
one atomic script, to the place a round-robin over tenants would give it. A job's rank is its tenant's
running jobs plus its place among the tenant's queued jobs; the new job goes before the first queued
job of a higher rank. So with tenant A's 100 jobs queued (one running), tenant B's first job goes to the
head and starts as soon as a worker frees; B's second goes after A's next one, and so on. Workers are
plain RQ workers taking from the head. A job RQ queues again after losing its worker (its `Retry`)
lands at the tail too; the worker that queued it places it the same way (`place_requeued`), so a
retried job does not wait behind every job submitted since it first started.
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType

import redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue, Retry, Worker
from rq.command import send_stop_job_command
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Callback, Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from service.contract import jobstate, keys, records
from service.contract.jobstate import ACTIVE, JobStatus
from service.contract.settings import ApiSettings, CommonSettings

TASK = "workers.tasks.run_job"
#: RQ failure callback (runs where RQ notices the failure: a work-horse, or the worker or process that
#: sweeps the StartedJobRegistry for abandoned jobs). It lives here so that any process can import it.
ON_FAILURE = "service.contract.queue.on_rq_failure"
log = logging.getLogger(__name__)
#: Queue entries the fair placement looks at (from the head); a job behind more stays at the tail.
FAIR_SCAN_LIMIT = 10_000
#: RQ statuses of a job that ended without the task recording it (reconcile fails the record).
RQ_ENDED = frozenset({RQStatus.FAILED.value, RQStatus.STOPPED.value, RQStatus.CANCELED.value})

# Move a job just pushed at the queue's tail to its round-robin place. KEYS[1]: the queue list.
# ARGV: job id, job key prefix, status index prefix, the running status, default tenant, scan limit,
# "1" for a job queued again (it takes its tenant's next turn, ahead of its tenant's queued jobs and of
# other jobs of the same turn) or "0" for a new one (after its tenant's queued jobs).
# Returns the job's new position (0 is the head), or -1 when a worker took it already.
_PLACE_FAIRLY = """
local id = ARGV[1]
if redis.call('LREM', KEYS[1], -1, id) == 0 then return -1 end
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1)
local running = {}
local function tenant_of(job_id)
  local tenant = redis.call('HGET', ARGV[2] .. job_id, 'tenant')
  if not tenant and #job_id > 32 then
    -- a tile or reduce step of a sharded job (`<job id>-...`): it queues for its job's tenant
    tenant = redis.call('HGET', ARGV[2] .. string.sub(job_id, 1, 32), 'tenant')
  end
  return tenant or ('?' .. job_id)
end
local function start_rank(tenant)
  if running[tenant] == nil then
    running[tenant] = redis.call('ZCARD', ARGV[3] .. ARGV[4] .. ':' .. tenant)
  end
  return running[tenant]
end
local tenants = {}
local ahead = ARGV[7] == '1'
local mine = tenant_of(id)
local rank = start_rank(mine) + 1
for i = 1, #ids do
  tenants[i] = tenant_of(ids[i])
  if tenants[i] == mine and not ahead then rank = rank + 1 end
end
local seen = {}
for i = 1, #ids do
  local t = tenants[i]
  seen[t] = (seen[t] or start_rank(t)) + 1
  if seen[t] > rank or (ahead and seen[t] == rank) then
    redis.call('LINSERT', KEYS[1], 'BEFORE', ids[i], id)
    return i - 1
  end
end
redis.call('RPUSH', KEYS[1], id)
return redis.call('LLEN', KEYS[1]) - 1
"""


def get_queue(conn: redis.Redis, settings: CommonSettings) -> Queue:
    return Queue(settings.queue, connection=conn, serializer=JSONSerializer, default_timeout=settings.job_timeout)


def enqueue(conn: redis.Redis, settings: ApiSettings, job_id: str) -> None:
    """Put job `job_id` (already recorded as queued) on the queue; the RQ job has the same id.

    With `settings.job_retries` > 0 a job whose worker (or work-horse) was lost is queued again that
    many times before it fails: RQ's `Retry`, applied by the worker that notices the loss.
    """
    rq_queue = get_queue(conn, settings)
    rq_queue.enqueue(
        TASK,
        job_id,
        job_id=job_id,
        job_timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
        description=f"lelastic job {job_id}",
        retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
        on_failure=Callback(ON_FAILURE),
    )
    place_fairly(conn, rq_queue.key, job_id)


#: (queue name, job id) of the jobs this process saw RQ queue again (`on_rq_failure` with retries left),
#: waiting for `place_requeued`.
_requeued: list[tuple[str, str]] = []


def note_requeued(job: Job) -> None:
    """From an RQ failure callback with retries left: RQ pushes `job` at its queue's tail right after the
    callback; `place_requeued` moves it to its fair place then."""
    _requeued.append((job.origin, job.id))


def place_requeued(conn: redis.Redis) -> int:
    """Place fairly the jobs `on_rq_failure` saw RQ queue again in this process (their RQ retry has pushed
    them at the tail by now); returns how many were still queued and moved."""
    moved = 0
    while _requeued:
        name, job_id = _requeued.pop(0)
        moved += place_fairly(conn, Queue(name, connection=conn).key, job_id, requeued=True) >= 0
    return moved


def place_fairly(conn: redis.Redis, queue_key: str, job_id: str, *, requeued: bool = False) -> int:
    """Move job `job_id` from the tail of the RQ queue list `queue_key` to its round-robin place (see the
    module doc): a new job after its tenant's queued ones, a `requeued` one (its worker was lost) at its
    tenant's next turn, ahead of them. Returns its position (0: next to run), or -1 when a worker took it
    first."""
    args = [job_id, keys.job(""), keys.STATUS_INDEX_PREFIX, JobStatus.RUNNING.value, records.DEFAULT_TENANT]
    return int(conn.eval(_PLACE_FAIRLY, 1, queue_key, *args, FAIR_SCAN_LIMIT, "1" if requeued else "0"))


def on_rq_failure(
    job: Job,
    connection: redis.Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """RQ failure callback: keep the job record in step with RQ when the task could not do it itself.

    Called for a job abandoned by a lost worker (`AbandonedJobError`, from the registry sweep) and for
    an exception that escaped the task. With retries left RQ queues the job again right after this
    call, so the record goes back to `queued`; otherwise it ends `failed` with a readable reason.
    Never raises: it runs inside RQ's sweep, which must go on with the other jobs.
    """
    try:
        will_retry = bool(job.retries_left and job.retries_left > 0)
        if exc_type is not None and issubclass(exc_type, AbandonedJobError):
            reason = "worker lost: the worker stopped heartbeating (killed, crashed or cut off from Redis)"
        elif exc_type is not None and issubclass(exc_type, JobTimeoutException):
            reason = "timeout: the job ran past the job time limit"
        else:
            name = getattr(exc_type, "__name__", "error")
            reason = f"internal error: {name}: {exc_value}" if str(exc_value) else f"internal error: {name}"
        if will_retry:
            note_requeued(job)
            jobstate.mark_requeued(connection, job.id, reason)
            log.warning("job %s: %s; queued to run again (%s retries left)", job.id, reason, job.retries_left)
        else:
            jobstate.mark_failed(connection, job.id, reason)
            log.warning("job %s failed: %s", job.id, reason)
    except Exception:  # noqa: BLE001 - a callback error must not stop RQ's bookkeeping
        log.exception("job %s: could not update the record after an RQ failure", getattr(job, "id", "?"))


def fetch_rq_job(conn: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def cancel(conn: redis.Redis, job_id: str) -> jobstate.Move:
    """Cancel a queued or running job. Returns the move: (canceled, status before).

    A queued job is marked canceled before RQ drops it, so a worker that races to pick it up sees the
    final status and does nothing. A running job is marked canceled, then its work-horse is stopped.
    """
    move = jobstate.mark_canceled(conn, job_id)
    if not move.done:
        return move
    rq_job = fetch_rq_job(conn, job_id)
    if rq_job is not None:
        status = rq_job.get_status(refresh=True)
        if status == RQStatus.STARTED:
            with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                send_stop_job_command(conn, job_id, serializer=JSONSerializer)
        elif status in (RQStatus.QUEUED, RQStatus.DEFERRED, RQStatus.SCHEDULED, RQStatus.CREATED):
            with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                rq_job.cancel()
    return move


def reconcile(conn: redis.Redis, record: records.JobRecord) -> records.JobRecord:
    """Bring a queued/running record in line with RQ when the worker could not update it itself.

    A work-horse killed by the OOM killer or a native crash, a job timeout, or a worker lost for good:
    RQ marks its job failed/stopped while our record still says running. The record then ends `failed`
    with RQ's reason. A job RQ is about to run again (retries left: queued, scheduled, started) is
    left alone, and so is a record already final (a canceled job whose RQ job is `stopped`).
    """
    if record.status not in ACTIVE:
        return record
    rq_job = fetch_rq_job(conn, record.id)
    if rq_job is None:
        if record.status == JobStatus.RUNNING:
            reason = "worker lost: the queue no longer knows this job"
        else:
            return record
    else:
        status = rq_job.get_status(refresh=True)
        if status not in (RQStatus.FAILED, RQStatus.STOPPED, RQStatus.CANCELED):
            return record
        reason = _failure_reason(rq_job)
    jobstate.mark_failed(conn, record.id, reason)
    return records.get_job(conn, record.id) or record


def _failure_reason(rq_job: Job) -> str:
    info = ""
    with contextlib.suppress(Exception):
        result = rq_job.latest_result()
        info = (result.exc_string or "") if result is not None else ""
    lines = [line for line in info.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if "JobTimeoutException" in last or "timeout" in last.lower():
        return "timeout: the job ran past the job time limit"
    if "(signal 9)" in info:  # SIGKILL: what the kernel's OOM killer sends
        return "the job was killed (out of memory?): its work-horse process got SIGKILL"
    if "terminated unexpectedly" in info or "waitpid" in info or "Work-horse" in info:
        return f"worker lost: the work-horse process died ({last})"
    if "AbandonedJobError" in info:
        return "worker lost: the worker stopped heartbeating"
    return f"worker lost: {last}" if last else "worker lost"


def live_workers(conn: redis.Redis, settings: CommonSettings) -> int:
    """Workers registered on our queue (RQ drops a worker whose heartbeat lapsed)."""
    return sum(1 for worker in Worker.all(connection=conn) if settings.queue in worker.queue_names())


def may_need_reconcile(status: JobStatus, rq_status: str | None) -> bool:
    """Whether `reconcile` could change a record in `status` whose RQ job has `rq_status` (None: no RQ
    job): a cheap test on two values read without RQ, so a caller asks RQ only when it matters."""
    if status not in ACTIVE:
        return False
    return (rq_status is None and status == JobStatus.RUNNING) or rq_status in RQ_ENDED


def rq_job_key(job_id: str) -> str:
    """RQ's hash of the RQ job that runs job `job_id` (its `status` field is RQ's status)."""
    return Job.key_for(job_id)


def queue_key(settings: CommonSettings) -> str:
    """RQ's list of the jobs waiting on our queue."""
    return f"{Queue.redis_queue_namespace_prefix}{settings.queue}"


async def live_workers_async(aconn: AsyncRedis, settings: CommonSettings) -> int:
    """`live_workers` on the asyncio client: RQ's workers of our queue whose key has not expired."""
    members = await aconn.smembers(WORKERS_BY_QUEUE_KEY % settings.queue)
    if not members:
        return 0
    return int(await aconn.exists(*members))
