"""RQ entry point: `workers.tasks.run_job(job_id)`, enqueued by dotted name with the JSON serializer.

It moves the job record queued → running → succeeded | failed (through `service.contract.jobstate`),
forwards progress to the record, the job's event stream and RQ's job meta, and turns every failure into
a readable reason. It never lets an exception escape for a failure it can explain, so RQ's own
bookkeeping stays "finished" while our record carries the real outcome; reconciliation in
`service.contract.queue` covers the failures it cannot see (a killed work-horse, a lost worker).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import traceback
from collections.abc import Callable

import redis
import torch
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from service.contract import jobstate, keys, logs, records
from service.contract.jobstate import JobStatus
from service.contract.settings import WorkerSettings, get_settings
from service.contract.spec import JobSpec
from service.contract.storage import DataDir
from workers.errors import JobCanceled, JobFailure
from workers.pipeline import run_pipeline

log = logging.getLogger("lelastic.worker")

#: Least seconds between two progress writes within one stage.
PROGRESS_INTERVAL = 0.5


class ProgressWriter:
    """Writes progress to Redis at most every PROGRESS_INTERVAL s (always on a new stage)."""

    def __init__(self, conn: redis.Redis, job_id: str) -> None:
        self.conn, self.job_id = conn, job_id
        self.last_time = 0.0
        self.last_stage: str | None = None
        self.rq_job = get_current_job()

    def __call__(self, fraction: float, stage: str, message: str) -> None:
        now = time.monotonic()
        if stage == self.last_stage and now - self.last_time < PROGRESS_INTERVAL and fraction < 1.0:
            return
        self.last_time, self.last_stage = now, stage
        record = records.get_job(self.conn, self.job_id)
        if record is None or record.status != JobStatus.RUNNING:
            raise JobCanceled(f"job is {record.status if record else 'gone'}; stopping")
        records.set_progress(self.conn, self.job_id, fraction=fraction, stage=stage, message=message)
        if self.rq_job is not None:
            self.rq_job.meta["progress"] = {"fraction": fraction, "stage": stage, "message": message}
            self.rq_job.save_meta()


def _connect(settings: WorkerSettings) -> redis.Redis:
    if not settings.redis_url:
        raise RuntimeError("LELASTIC_REDIS_URL is not set: the worker needs the Redis/Valkey server's URL")
    return records.connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout)


#: Ids of jobs this process was handed but did not run (canceled while queued, or gone): RQ would still log
#: them as "Successfully completed … Job OK".
_NOT_RUN: set[str] = set()


class NotRunJobFilter(logging.Filter):
    """Drops RQ's success lines ("Job OK", "Successfully completed …") for a job that was not run; the
    task's own "job ended: canceled" line says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _NOT_RUN:
            return True
        message = record.getMessage()
        if "Job OK" not in message and "Successfully completed" not in message:
            return True
        return not any(job_id in message for job_id in _NOT_RUN)


logging.getLogger("rq.worker").addFilter(NotRunJobFilter())


def _with_job_logging(task: Callable[[str], str]) -> Callable[[str], str]:
    """Bind the job's id and tenant to every log record of the task; log its start and end."""

    @functools.wraps(task)
    def wrapper(job_id: str) -> str:
        settings = get_settings()
        if not logs.is_configured():
            logs.configure_logging(settings)
        tenant = None
        with contextlib.suppress(Exception):  # the task itself reports a missing record or a lost server
            with _connect(settings) as conn:
                raw = conn.hget(keys.job(job_id), "tenant")
            tenant = records.text(raw) if raw is not None else None
        with logs.job_context(job_id, tenant):
            started = time.monotonic()
            log.info("job started")
            try:
                status = task(job_id)
            except BaseException:
                log.exception("job ended with an exception after %.1f s", time.monotonic() - started)
                raise
            log.info(
                "job ended: %s in %.1f s",
                status,
                time.monotonic() - started,
                extra={"status": status, "duration_s": round(time.monotonic() - started, 3)},
            )
            return status

    return wrapper


@_with_job_logging
def run_job(job_id: str) -> str:
    """Run lelastic job `job_id`; returns its final status."""
    settings = get_settings()
    conn = _connect(settings)
    started = jobstate.mark_running(conn, job_id)
    if not started.done:
        log.info("job %s is %s; not running it", job_id, started.before)
        _NOT_RUN.add(job_id)
        return started.before or "missing"
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    data_dir = DataDir(settings.data_dir)
    job_dir = data_dir.job_dir(job_id)
    try:
        record = records.get_job(conn, job_id)
        if record is None:
            raise JobCanceled("job is gone; stopping")
        spec = JobSpec.model_validate(record.spec)
        if spec.execution.mode == "sharded" or spec.observed is not None:
            from workers import shards

            if spec.execution.mode == "sharded":  # the tiles and the reduce step (workers.shards) end it
                shards.start(
                    conn, settings, spec, job_id=job_id, data_dir=data_dir, report=ProgressWriter(conn, job_id)
                )
                return JobStatus.RUNNING
            # Observed columns in a single job: the same tiles, one after the other, in this work-horse.
            result = shards.run_inline(
                conn, settings, spec, job_id=job_id, data_dir=data_dir, report=ProgressWriter(conn, job_id)
            )
        else:
            result = run_pipeline(
                spec,
                job_dir=job_dir,
                data_dir=data_dir,
                device_setting=settings.device,
                report=ProgressWriter(conn, job_id),
            )
        succeeded = jobstate.mark_succeeded(conn, job_id, result)
        if not succeeded.done:
            _discard(conn, data_dir, job_id)
            return succeeded.before or "missing"
        log.info("job %s succeeded in %.1f s", job_id, result["timings"]["total_seconds"])
        return JobStatus.SUCCEEDED
    except JobCanceled:
        _discard(conn, data_dir, job_id)
        return JobStatus.CANCELED
    except JobTimeoutException:
        return _fail(
            conn, data_dir, job_id, f"timeout: the job ran past the job time limit of {settings.job_timeout} s"
        )
    except JobFailure as error:
        return _fail(conn, data_dir, job_id, str(error))
    except torch.cuda.OutOfMemoryError:
        return _fail(conn, data_dir, job_id, "out of GPU memory: use fewer examples or a narrower model")
    except MemoryError:
        return _fail(conn, data_dir, job_id, "out of memory: use fewer examples or a narrower model")
    except OSError as error:
        return _fail(conn, data_dir, job_id, f"storage error while writing artifacts: {error.strerror or error}")
    except Exception as error:  # a bug: keep the worker alive, give the client a reason
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        return _fail(conn, data_dir, job_id, f"internal error: {type(error).__name__}: {error}")


def _discard(conn: redis.Redis, data_dir: DataDir, job_id: str) -> None:
    """Remove this run's artifacts, unless another run of the same job (a retry after its worker was
    thought lost) has already succeeded with them: a failed or canceled job never has artifacts."""
    record = records.get_job(conn, job_id)
    if record is None or record.status != JobStatus.SUCCEEDED:
        data_dir.remove_job(job_id)


def _fail(conn: redis.Redis, data_dir: DataDir, job_id: str, reason: str) -> str:
    _discard(conn, data_dir, job_id)
    jobstate.mark_failed(conn, job_id, reason, expected={JobStatus.RUNNING})
    log.warning("job %s failed: %s", job_id, reason)
    return JobStatus.FAILED
