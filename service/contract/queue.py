"""RQ glue: enqueue a job by dotted name, cancel it, and reconcile our record with RQ's view.

The queue carries only the job id (JSON serializer); the worker reads the spec from the job record and
the data from the data dir. The API process never imports `workers`.
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType

import redis
from rq import Queue, Retry, Worker
from rq.command import send_stop_job_command
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Callback, Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from service.contract import jobstate, records
from service.contract.jobstate import ACTIVE, JobStatus
from service.contract.settings import ApiSettings, CommonSettings

TASK = "workers.tasks.run_job"
#: RQ failure callback (runs where RQ notices the failure: a work-horse, or the worker or process that
#: sweeps the StartedJobRegistry for abandoned jobs). It lives here so that any process can import it.
ON_FAILURE = "service.contract.queue.on_rq_failure"
log = logging.getLogger(__name__)


def get_queue(conn: redis.Redis, settings: CommonSettings) -> Queue:
    return Queue(settings.queue, connection=conn, serializer=JSONSerializer, default_timeout=settings.job_timeout)


def enqueue(conn: redis.Redis, settings: ApiSettings, job_id: str) -> None:
    """Put job `job_id` (already recorded as queued) on the queue; the RQ job has the same id.

    With `settings.job_retries` > 0 a job whose worker (or work-horse) was lost is queued again that
    many times before it fails: RQ's `Retry`, applied by the worker that notices the loss.
    """
    get_queue(conn, settings).enqueue(
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
    if "terminated unexpectedly" in info or "waitpid" in info or "Work-horse" in info:
        return f"worker lost: the work-horse process died ({last})"
    if "AbandonedJobError" in info:
        return "worker lost: the worker stopped heartbeating"
    return f"worker lost: {last}" if last else "worker lost"


def live_workers(conn: redis.Redis, settings: CommonSettings) -> int:
    """Workers registered on our queue (RQ drops a worker whose heartbeat lapsed)."""
    return sum(1 for worker in Worker.all(connection=conn) if settings.queue in worker.queue_names())
