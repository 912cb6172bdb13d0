"""The worker process: an RQ worker on the lelastic queue, one job at a time.

RQ's default worker forks a work-horse per job. Torch, numpy and scikit-learn are imported here, in the
parent, so each job does not pay for the imports; CUDA is never initialised in the parent (that happens
only inside a job, in the work-horse), since a CUDA context does not survive a fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue, Worker
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from service.contract import jobstate, records, sharding
from service.contract import queue as rq_glue
from service.contract.jobstate import JobStatus
from service.contract.logs import configure_logging
from service.contract.queue import ON_FAILURE, TASK
from service.contract.settings import WorkerSettings, get_settings
from service.contract.storage import DataDir

log = logging.getLogger("lelastic.worker")

#: The only functions a worker runs, by dotted name. Anything else on the queue fails unimported.
ALLOWED_TASKS: frozenset[str] = frozenset({TASK, sharding.TILE_TASK, sharding.REDUCE_TASK})
#: The only RQ callbacks a job may carry (the API sets the failure callback; no other).
ALLOWED_CALLBACKS: dict[str, frozenset[str | None]] = {
    "success": frozenset({None}),
    "failure": frozenset({None, ON_FAILURE, sharding.ON_TILE_FAILURE}),
    "stopped": frozenset({None}),
}


def refusal(job: Job) -> str | None:
    """Why `job` must not run (a function or callback outside the allowlists, webhooks), or None.

    Reads only the names stored with the job: nothing is imported.
    """
    try:
        func_name = job.func_name
    except Exception as error:  # noqa: BLE001 - undecodable job data is refused, not run
        return f"refused: the job's data cannot be read ({type(error).__name__})"
    if func_name not in ALLOWED_TASKS:
        return f"refused: function {str(func_name)[:200]!r} is not one of {sorted(ALLOWED_TASKS)}"
    if getattr(job, "_instance", None) is not None:
        return "refused: a job may not carry an instance"
    for kind, allowed in ALLOWED_CALLBACKS.items():
        name = getattr(job, f"_{kind}_callback_name", None)
        if name not in allowed:
            return f"refused: {kind} callback {str(name)[:200]!r} is not allowed"
    if getattr(job, "webhooks", None):
        return "refused: a job may not carry webhooks"
    return None


def preload() -> None:
    """Import the heavy compute modules before the fork (no CUDA initialisation)."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import torch  # noqa: F401

    import workers.compute.analysis  # noqa: F401
    import workers.compute.baselines  # noqa: F401
    import workers.compute.plots  # noqa: F401
    import workers.shards  # noqa: F401
    import workers.tasks  # noqa: F401


def wait_for_redis(conn: redis.Redis, *, timeout: float = 60.0) -> None:
    """Block until Redis answers PING, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.ping()
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
#: The reason of a job whose work-horse was SIGKILLed (not retried: the same job would meet the same end).
OOM_KILLED = (
    "the job was killed (out of memory?): its work-horse process got SIGKILL, as the kernel's OOM killer "
    "sends; it is not retried. Use fewer examples or a narrower model, or give the worker more memory"
)
_PR_SET_PDEATHSIG = 1


def _describe_wait_status(status: int | None) -> str:
    if status is not None and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
        return f"killed by {name}" + (", as the OOM killer does" if number == signal.SIGKILL else "")
    if status is not None and os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


class LelasticWorker(Worker):
    """RQ's forking worker, tuned so that a job survives the loss of its worker.

    * Heartbeats: while a job runs the worker refreshes the job's StartedJobRegistry entry every
      `job_monitoring_interval` s, each time for that long plus a grace of the same length (at least
      5 s), instead of RQ's fixed extra 60 s. Once a worker is lost its job's entry lapses within
      2 × interval, and the next registry sweep (every `maintenance_interval` s, by any idle worker)
      queues it again (RQ `Retry`) or fails it. An idle worker's blocking dequeue is cut short so that
      the sweep really runs every `maintenance_interval` s.
    * The work-horse dies with its worker (PR_SET_PDEATHSIG), so a re-run never races an orphan.
    * A work-horse killed by SIGKILL (the OOM killer's signal) fails its job at once, without retries;
      one that dies otherwise (a native crash) fails its job with a readable reason, or queues it again
      while retries are left; the worker goes on with the next job.
    * A Redis outage while a job runs costs missed heartbeats, not the worker.
    """

    #: Seconds between reconnection attempts once the backoff has grown (RQ: 60).
    max_connection_wait_time = 5.0

    def __init__(self, *args: Any, data_dir: DataDir | None = None, work_nice: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_dir = data_dir
        self.work_nice = work_nice
        self.shutdown_requested = False
        self._horse_death: tuple[str, str, bool] | None = None  # (job id, reason, is_timeout)
        self._parent_pid = os.getpid()

    # -- lost workers: short heartbeat TTLs, sweeps on time ------------------------------------------

    @property
    def heartbeat_grace(self) -> int:
        return max(5, int(self.job_monitoring_interval))

    def get_heartbeat_ttl(self, job: Job) -> int:
        interval = float(self.job_monitoring_interval)
        if job.timeout and job.timeout > 0:
            interval = min(interval, job.timeout - self.current_job_working_time)
        return max(1, int(interval)) + self.heartbeat_grace

    @property
    def dequeue_timeout(self) -> int:
        return max(1, min(self.worker_ttl - 15, int(self.maintenance_interval) // 4))

    # -- Redis outages while a job runs -------------------------------------------------------------

    def maintain_heartbeats(self, job: Job) -> None:
        try:
            super().maintain_heartbeats(job)
        except _REDIS_DOWN as error:
            self.log.warning("Worker %s: heartbeat for job %s missed: %s", self.name, job.id, error)

    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:
            super().set_current_job_working_time(current_job_working_time, pipeline=pipeline)
            return
        self.current_job_working_time = current_job_working_time
        try:
            super().set_current_job_working_time(current_job_working_time)
        except _REDIS_DOWN as error:
            self.log.warning("Worker %s: could not record the job's working time: %s", self.name, error)

    # -- the allowlist ------------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run `job` in a work-horse, unless `refusal` names a reason: then fail it here, in the parent,
        before RQ resolves (imports) its function or any callback."""
        reason = refusal(job)
        if reason is None:
            super().execute_job(job, queue)
            return
        self.log.error("Worker %s: job %s %s", self.name, job.id, reason)
        job.retries_left = 0
        job.webhooks = []
        for kind in ALLOWED_CALLBACKS:
            setattr(job, f"_{kind}_callback_name", None)
            setattr(job, f"_{kind}_callback", None)
        self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        job.ended_at = now()
        self.handle_job_failure(job, queue, exc_string=reason)
        self.set_state(WorkerStatus.IDLE)

    # -- the work-horse -----------------------------------------------------------------------------

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self._parent_pid = os.getpid()
        super().fork_work_horse(job, queue)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # In the horse: die with the worker. A worker killed mid-job must not leave its horse running
        # on while the job is queued again elsewhere.
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self._parent_pid:  # the worker died before the line above
                os._exit(1)
        if self.work_nice:  # the computation yields the CPU to the API and the worker's own heartbeats
            with contextlib.suppress(OSError):
                os.nice(self.work_nice)
        super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int | None, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        elapsed = (now() - job.started_at).total_seconds() if job.started_at else 0.0
        if job.timeout and job.timeout > 0 and elapsed > job.timeout:
            # Stuck past the time limit where SIGALRM could not reach it; RQ killed it: not retried.
            job.retries_left = 0
            reason = f"timeout: the job ran past the job time limit of {job.timeout} s"
            self._horse_death = (job.id, reason, True)
        elif ret_val is not None and os.WIFSIGNALED(ret_val) and os.WTERMSIG(ret_val) == signal.SIGKILL:
            # What the kernel's OOM killer sends: running the job again would only be killed again.
            job.retries_left = 0
            self._horse_death = (job.id, OOM_KILLED, False)
        else:
            reason = f"worker lost: the work-horse process died ({_describe_wait_status(ret_val)})"
            self._horse_death = (job.id, reason, False)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
    ) -> None:
        if self._stopped_job_id == job.id:  # the horse is dead: before RQ calls the job stopped
            self._discard_canceled(job.id)
        super().handle_job_failure(job, queue, started_job_registry, exc_string)
        death, self._horse_death = self._horse_death, None
        if death is None or death[0] != job.id:
            return
        _, reason, _ = death
        try:
            status = job.get_status(refresh=True)
            if status in (RQStatus.QUEUED, RQStatus.SCHEDULED):
                jobstate.mark_requeued(self.connection, job.id, reason)
                rq_glue.place_fairly(self.connection, queue.key, job.id, requeued=True)  # RQ's retry: at the tail
                self.log.warning("Worker %s: job %s: %s; queued to run again", self.name, job.id, reason)
            else:
                jobstate.mark_failed(self.connection, job.id, reason)
                self.log.warning("Worker %s: job %s failed: %s", self.name, job.id, reason)
        except _REDIS_DOWN as error:  # the API's reconcile covers it once Redis is back
            self.log.warning("Worker %s: could not record the end of job %s: %s", self.name, job.id, error)

    def clean_registries(self) -> None:
        """RQ's registry sweep, then the jobs it queued again (abandoned by a lost worker) placed fairly."""
        super().clean_registries()
        try:
            rq_glue.place_requeued(self.connection)
        except _REDIS_DOWN as error:
            self.log.warning("Worker %s: could not place requeued jobs: %s", self.name, error)

    def _discard_canceled(self, job_id: str) -> None:
        """A canceled job's horse is dead now: remove whatever it had written (it may have been
        stopped between writing its artifacts and noticing the cancel)."""
        try:
            record = records.get_job(self.connection, job_id)
        except _REDIS_DOWN:
            return
        if self.data_dir is not None and record is not None and record.status == JobStatus.CANCELED:
            self.data_dir.remove_job(job_id)

    # -- stopping -----------------------------------------------------------------------------------

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.shutdown_requested = True
        super().request_stop(signum, frame)


def make_worker(conn: redis.Redis, settings: WorkerSettings, queues: list[str] | None = None) -> LelasticWorker:
    # The job queue first, then the tile queue when it is another: a worker takes a whole job before a tile.
    tiles = [settings.tile_queue] if settings.tile_queue and settings.tile_queue != settings.queue else []
    return LelasticWorker(
        queues or [settings.queue, *tiles],
        connection=conn,
        serializer=JSONSerializer,
        job_monitoring_interval=settings.worker_heartbeat_seconds,
        maintenance_interval=settings.maintenance_interval,
        data_dir=DataDir(settings.data_dir),
        work_nice=settings.work_nice,
    )


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_worker(*, settings: WorkerSettings | None = None, queues: list[str] | None = None, burst: bool = False) -> bool:
    """Work jobs from `queues` (default: the configured queue). Returns whether any job was worked.

    RQ's work loop quits when it meets a Redis error outside its blocking dequeue (a server restart at
    the wrong moment); this loop then waits for the server and starts a fresh RQ worker, so a worker
    process outlives Redis restarts. It returns on SIGTERM/SIGINT (warm shutdown) or, in burst mode,
    once the queue is empty.
    """
    settings = settings or get_settings()
    if not settings.redis_url:
        raise SystemExit("LELASTIC_REDIS_URL is not set: the worker needs the Redis/Valkey server's URL")
    configure_logging(settings)  # JSON lines (or text) on stderr; RQ's loggers propagate to it
    preload()
    # Blocking dequeues wait up to the worker's dequeue timeout: RQ sets this client's socket timeout
    # a little above it. redis-py's default Retry rides out a short outage on single commands.
    conn = redis.Redis.from_url(
        settings.redis_url, socket_timeout=None, socket_connect_timeout=5, health_check_interval=30
    )
    wait_for_redis(conn)
    worked = False
    while True:
        worker = make_worker(conn, settings, queues)
        log.info("worker %s listening on %s", worker.name, ", ".join(worker.queue_names()))
        try:
            worked = worker.work(burst=burst, with_scheduler=False) or worked
            if burst or worker.shutdown_requested or worker._stop_requested:
                return worked
            log.warning("worker %s: the work loop ended on an error; starting again", worker.name)
        except _REDIS_DOWN as error:
            if burst:
                raise
            log.warning("worker %s: lost the Redis server (%s); reconnecting", worker.name, error)
        # Outside RQ's loop its signal handlers would talk to Redis: a signal now just ends the process.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        signal.signal(signal.SIGINT, _exit_on_signal)
        time.sleep(1.0)
        wait_for_redis(conn, timeout=float("inf"))


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.main [--queues Q ...] [--burst]`: what `lelastic worker` runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="lelastic worker", description="run one RQ worker")
    parser.add_argument("--queues", nargs="+", default=None, help="queues to listen on (default $LELASTIC_QUEUE)")
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    args = parser.parse_args(argv)
    run_worker(queues=args.queues, burst=args.burst)
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["ALLOWED_TASKS", "LelasticWorker", "main", "make_worker", "run_worker", "preload", "wait_for_redis"]
