"""A job that runs past `job_timeout` ends `failed` with reason "timeout ..." and the worker goes on."""

from __future__ import annotations

import pytest

from tests.factories import TINY_SPEC, app_client, long_spec, stop_worker, submit_id, wait_status, worker_log

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_a_job_past_its_time_limit_fails_with_timeout_and_the_worker_goes_on(
    settings, redis_conn, tmp_path, start_worker
):
    limited = settings.model_copy(update={"job_timeout": 3, "worker_heartbeat_seconds": 1})
    worker = start_worker(limited, tmp_path / "logs")
    try:
        with app_client(limited) as client:
            slow = submit_id(client, long_spec(10000))
            following = submit_id(client, TINY_SPEC)
            record = wait_status(redis_conn, slow, ("failed", "succeeded", "canceled"), timeout=60)
            assert record.status == "failed"
            assert record.error.startswith("timeout"), record.error
            assert record.finished_at - record.started_at < 30
            assert not (limited.data_dir / "jobs" / slow).exists()
            record = wait_status(redis_conn, following, ("failed", "succeeded", "canceled"), timeout=60)
            assert record.status == "succeeded", record.error
            assert client.get(f"/v1/jobs/{slow}").json()["status"] == "failed"
            assert worker.poll() is None, worker_log(worker)
    finally:
        stop_worker(worker)
