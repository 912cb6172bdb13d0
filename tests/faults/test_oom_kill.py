"""A work-horse SIGKILLed (what the kernel's OOM killer sends) ends its job `failed` at once: the job is not
run again even with retries left, since a second run would meet the same end."""

from __future__ import annotations

import time

import pytest

from service.cli.supervisor import descendants
from service.contract.queue import fetch_rq_job
from tests.factories import app_client, kill_work_horse, long_spec, stop_worker, submit_id, wait_status

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_a_sigkilled_work_horse_fails_its_job_without_a_retry(settings, redis_conn, tmp_path, start_worker):
    retrying = settings.model_copy(update={"job_retries": 1, "worker_heartbeat_seconds": 1})
    worker = start_worker(retrying, tmp_path / "logs")
    try:
        with app_client(retrying) as client:
            job_id = submit_id(client, long_spec(10000))
            pid = kill_work_horse(redis_conn, job_id)

            record = wait_status(redis_conn, job_id, ("failed", "succeeded", "canceled"), timeout=30)
            assert record.status == "failed"
            assert record.error.startswith("the job was killed (out of memory?)"), record.error
            assert "not retried" in record.error
            rq_job = fetch_rq_job(redis_conn, job_id)
            assert rq_job is not None and rq_job.get_status(refresh=True) == "failed"
            assert not rq_job.retries_left

            time.sleep(3)  # a retry would have been queued and picked up by now
            assert not descendants(pid)  # the worker runs no new work-horse for it
            body = client.get(f"/v1/jobs/{job_id}").json()
            assert body["status"] == "failed" and body["error"] == record.error
    finally:
        stop_worker(worker)
