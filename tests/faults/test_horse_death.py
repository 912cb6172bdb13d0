"""The work-horse killed mid-job (the OOM killer, a native crash): the job fails with a reason and the
same worker goes on to run the next queued job."""

from __future__ import annotations

import os
import signal

import pytest

from service.cli.supervisor import descendants
from tests.factories import (
    TINY_SPEC,
    app_client,
    long_spec,
    stop_worker,
    submit_id,
    wait_for,
    wait_status,
    worker_log,
    worker_running,
)

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_a_killed_work_horse_fails_its_job_and_the_worker_runs_the_next_one(
    settings, redis_conn, tmp_path, start_worker
):
    no_retry = settings.model_copy(update={"job_retries": 0, "worker_heartbeat_seconds": 1})
    worker = start_worker(no_retry, tmp_path / "logs")
    try:
        with app_client(no_retry) as client:
            doomed = submit_id(client, long_spec(10000))
            following = submit_id(client, TINY_SPEC)
            wait_status(redis_conn, doomed, ("running",), timeout=60)
            pid, _ = wait_for(lambda: worker_running(redis_conn, doomed), 30)
            assert pid == worker.pid
            (horse,) = wait_for(lambda: descendants(pid), 10)
            os.kill(horse, signal.SIGKILL)

            record = wait_status(redis_conn, doomed, ("failed", "succeeded", "canceled"), timeout=30)
            assert record.status == "failed"
            assert record.error.startswith("the job was killed (out of memory?)"), record.error
            assert "SIGKILL" in record.error
            body = client.get(f"/v1/jobs/{doomed}").json()
            assert body["status"] == "failed" and body["error"] == record.error

            record = wait_status(redis_conn, following, ("failed", "succeeded", "canceled"), timeout=60)
            assert record.status == "succeeded", record.error
            assert worker.poll() is None, worker_log(worker)
            assert client.get(f"/v1/jobs/{following}/artifacts/similarity.npy").status_code == 200
    finally:
        stop_worker(worker)
