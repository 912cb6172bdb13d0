"""A job on the queue that names any function other than the allowlisted task: the worker fails it
without importing or calling it, logs why, and goes on to run the next real job."""

from __future__ import annotations

import pytest
from rq.job import Callback, Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from service.contract.queue import get_queue
from tests.factories import TINY_SPEC, app_client, submit_id, wait_for, wait_status, worker_log

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_only_the_allowlisted_task_runs(settings, redis_conn, tmp_path, start_worker):
    target = tmp_path / "created-by-the-queue"
    queue = get_queue(redis_conn, settings)
    hostile = [
        queue.enqueue("os.makedirs", str(target), job_timeout=60),
        queue.enqueue("no_such_module_xyz.run", job_timeout=60),
        queue.enqueue("workers.tasks.run_job", "0" * 32, on_success=Callback("os.getcwd"), job_timeout=60),
    ]
    worker = start_worker(settings, tmp_path / "logs")
    with app_client(settings) as client:
        following = submit_id(client, TINY_SPEC)
        record = wait_status(redis_conn, following, ("failed", "succeeded", "canceled"), timeout=120)
        assert record.status == "succeeded", (record.error, worker_log(worker))

    reasons = []
    for job in hostile:
        fetched = wait_for(lambda job=job: _final(redis_conn, job.id), 30)
        assert fetched.get_status() == RQStatus.FAILED
        reasons.append(fetched.latest_result().exc_string)
    assert reasons[0].startswith("refused: function 'os.makedirs' is not one of [")
    assert "'workers.tasks.run_job'" in reasons[0]
    assert reasons[1].startswith("refused: function 'no_such_module_xyz.run'")
    assert reasons[2] == "refused: success callback 'os.getcwd' is not allowed"
    assert not target.exists()
    log = worker_log(worker)
    assert "os.makedirs" in log and "no_such_module_xyz.run" in log and "success callback" in log
    assert "ModuleNotFoundError" not in log
    assert worker.poll() is None


def _final(conn, job_id: str) -> Job | None:
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    return job if job.get_status() in (RQStatus.FAILED, RQStatus.FINISHED) else None
