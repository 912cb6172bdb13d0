"""Tenants take turns on the workers: with Alice's many jobs queued, Bob's one job starts as soon as a
worker frees, not after all of hers (real worker process, jobs submitted through HTTP)."""

from __future__ import annotations

from collections import Counter

import pytest

from service.api import auth
from service.contract import keys, records
from service.contract.jobstate import JobStatus
from tests.factories import TINY_SPEC, app_client, stop_worker, wait_status, worker_log

pytestmark = [pytest.mark.worker, pytest.mark.slow]

FINAL = ("succeeded", "failed", "canceled")


def test_another_tenants_job_starts_as_soon_as_a_worker_frees(settings, redis_conn, tmp_path, start_worker):
    keys_file = tmp_path / "keys"
    alice = {"X-API-Key": auth.create_key(keys_file, "alice")}
    bob = {"X-API-Key": auth.create_key(keys_file, "bob")}
    with app_client(settings, api_keys_file=keys_file) as client:

        def submit_as(headers: dict[str, str]) -> str:
            response = client.post("/v1/jobs", json=TINY_SPEC, headers=headers)
            assert response.status_code == 202, response.text
            return response.json()["id"]

        hers = [submit_as(alice) for _ in range(8)]
        worker = start_worker(settings, tmp_path / "logs")
        try:
            wait_status(redis_conn, hers[0], ("running", *FINAL), timeout=120)
            bobs = submit_as(bob)
            submitted = records.get_job(redis_conn, bobs).created_at
            done = wait_status(redis_conn, bobs, FINAL, timeout=120)
            assert done.status == "succeeded", (done.error, worker_log(worker))
            started_before_bob = [
                job_id
                for job_id in hers
                if (record := records.get_job(redis_conn, job_id)) is not None
                and record.started_at is not None
                and submitted < record.started_at < done.started_at
            ]
            # Alice's job running when Bob submitted may end and, at most, one more of hers may start (when
            # Bob's arrived in the instant between two of her jobs); without turns, all seven would.
            assert len(started_before_bob) <= 1, started_before_bob
            for job_id in hers:
                client.delete(f"/v1/jobs/{job_id}", headers=alice)
            for job_id in hers:
                wait_status(redis_conn, job_id, FINAL, timeout=60)
            assert worker.poll() is None, worker_log(worker)
            # The counters and the status index, kept by the worker's and the API's moves, match the records.
            actual = Counter(records.get_job(redis_conn, job_id).status.value for job_id in [*hers, bobs])
            counts = {k.decode(): int(v) for k, v in redis_conn.hgetall(keys.JOB_COUNTS).items() if int(v)}
            assert counts == dict(actual)
            indexed = {
                status.value: redis_conn.zcard(keys.status_index(status.value, "alice"))
                + redis_conn.zcard(keys.status_index(status.value, "bob"))
                for status in JobStatus
            }
            assert {s: n for s, n in indexed.items() if n} == dict(actual)
        finally:
            stop_worker(worker)
