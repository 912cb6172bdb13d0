"""The work-horse killed mid-job (the OOM killer, a native crash): the job fails with a reason and the
same worker goes on to run the next queued job."""

from __future__ import annotations

import pytest

from tests.factories import (
    TINY_SPEC,
    app_client,
    kill_work_horse,
    long_spec,
    stop_worker,
    submit_id,
    wait_status,
    worker_log,
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
            assert kill_work_horse(redis_conn, doomed) == worker.pid

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
