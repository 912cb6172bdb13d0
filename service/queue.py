"""RQ glue: enqueue a job by dotted name, cancel it, and reconcile our record with RQ's view.

The queue carries only the job id (JSON serializer); the worker reads the spec from the job record and
the data from the data dir. The API process never imports `workers`.
"""

from __future__ import annotations

import contextlib
import logging

import redis
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service import records
from service.config import Settings

TASK = "workers.tasks.run_job"
log = logging.getLogger(__name__)


def get_queue(conn: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.queue, connection=conn, serializer=JSONSerializer, default_timeout=settings.job_timeout)


def enqueue(conn: redis.Redis, settings: Settings, job_id: str) -> None:
    """Put job `job_id` (already recorded as queued) on the queue; the RQ job has the same id."""
    get_queue(conn, settings).enqueue(
        TASK,
        job_id,
        job_id=job_id,
        job_timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
        description=f"lelastic job {job_id}",
    )


def fetch_rq_job(conn: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def cancel(conn: redis.Redis, job_id: str) -> tuple[bool, str | None]:
    """Cancel a queued or running job. Returns (canceled, status before).

    A queued job is marked canceled before RQ drops it, so a worker that races to pick it up sees the
    final status and does nothing. A running job is marked canceled, then its work-horse is stopped.
    """
    done, before = records.transition(
        conn, job_id, "canceled", allowed_from=("queued", "running"), fields={"finished_at": records.now()}
    )
    if not done:
        return False, before
    rq_job = fetch_rq_job(conn, job_id)
    if rq_job is not None:
        status = rq_job.get_status(refresh=True)
        if status == JobStatus.STARTED:
            with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                send_stop_job_command(conn, job_id, serializer=JSONSerializer)
        elif status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED):
            with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                rq_job.cancel()
    return True, before


def reconcile(conn: redis.Redis, record: records.JobRecord) -> records.JobRecord:
    """Bring a queued/running record in line with RQ when the worker could not update it itself.

    A work-horse killed by the OOM killer or a native crash, a job timeout, or a worker lost for good:
    RQ marks its job failed/stopped while our record still says running. The record then ends `failed`
    with RQ's reason.
    """
    if record.status not in ("queued", "running"):
        return record
    rq_job = fetch_rq_job(conn, record.id)
    if rq_job is None:
        if record.status == "running":
            reason = "worker lost: the queue no longer knows this job"
        else:
            return record
    else:
        status = rq_job.get_status(refresh=True)
        if status not in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            return record
        reason = _failure_reason(rq_job)
    records.transition(
        conn, record.id, "failed", allowed_from=("queued", "running"),
        fields={"error": reason, "finished_at": records.now()},
    )
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


def live_workers(conn: redis.Redis, settings: Settings) -> int:
    """Workers registered on our queue (RQ drops a worker whose heartbeat lapsed)."""
    return sum(1 for worker in Worker.all(connection=conn) if settings.queue in worker.queue_names())
