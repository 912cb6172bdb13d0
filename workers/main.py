"""The worker process: an RQ worker on the lelastic queue, one job at a time.

RQ's default worker forks a work-horse per job. Torch, numpy and scikit-learn are imported here, in the
parent, so each job does not pay for the imports; CUDA is never initialised in the parent (that happens
only inside a job, in the work-horse), since a CUDA context does not survive a fork.
"""

from __future__ import annotations

import logging
import time

import redis
from rq import Worker
from rq.serializers import JSONSerializer

from service import records
from service.config import Settings, get_settings
from service.logs import configure_logging

log = logging.getLogger("lelastic.worker")


def preload() -> None:
    """Import the heavy compute modules before the fork (no CUDA initialisation)."""
    import sklearn.cluster  # noqa: F401
    import torch  # noqa: F401

    import workers.tasks  # noqa: F401


def wait_for_redis(conn: redis.Redis, *, timeout: float = 60.0) -> None:
    """Block until Redis answers PING, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.ping()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_worker(*, settings: Settings | None = None, queues: list[str] | None = None, burst: bool = False) -> bool:
    """Work jobs from `queues` (default: the configured queue). Returns whether any job was worked."""
    settings = settings or get_settings()
    if not settings.redis_url:
        raise SystemExit("LELASTIC_REDIS_URL is not set: the worker needs the Redis/Valkey server's URL")
    configure_logging(settings)  # JSON lines (or text) on stderr; RQ's loggers propagate to it
    preload()
    # Blocking dequeues wait up to the worker's dequeue timeout: no socket timeout on this client.
    conn = redis.Redis.from_url(settings.redis_url, socket_timeout=None, socket_connect_timeout=5, health_check_interval=30)
    wait_for_redis(conn)
    worker = Worker(queues or [settings.queue], connection=conn, serializer=JSONSerializer)
    log.info("worker %s listening on %s", worker.name, ", ".join(worker.queue_names()))
    return worker.work(burst=burst, with_scheduler=False)


__all__ = ["run_worker", "preload", "wait_for_redis", "records"]
