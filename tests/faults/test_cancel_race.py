"""Cancel racing with completion: each job ends in exactly one final state, canceled XOR succeeded,
with artifacts only when it succeeded and exactly one final status event."""

from __future__ import annotations

import random
import threading
import time

import pytest

from service.contract import queue as rq_glue
from service.contract import records
from service.contract.storage import DataDir
from tests.factories import TINY_SPEC, app_client, status_events, stop_worker, submit_id, wait_for, wait_status

pytestmark = [pytest.mark.worker, pytest.mark.slow]

ITERATIONS = 30


def in_started_registry(conn, queue: str, job_id: str) -> bool:
    return any(entry.decode().startswith(job_id) for entry in conn.zrange(f"rq:wip:{queue}", 0, -1))


FINAL = ("succeeded", "failed", "canceled")


def test_cancel_racing_completion_ends_in_exactly_one_final_state(settings, redis_conn, tmp_path, start_worker):
    quick = settings.model_copy(update={"worker_heartbeat_seconds": 1})
    data_dir = DataDir(quick.data_dir)
    rng = random.Random(1234)
    worker = start_worker(quick, tmp_path / "logs")
    outcomes: list[str] = []
    try:
        with app_client(quick) as client:
            warm = submit_id(client, TINY_SPEC)  # the first job pays for lazy imports; time the rest
            wait_status(redis_conn, warm, FINAL, timeout=60)
            took = records.get_job(redis_conn, warm)
            runtime = max(0.2, took.finished_at - took.started_at)
            for _ in range(ITERATIONS):
                job_id = submit_id(client, TINY_SPEC)
                delay = rng.uniform(0.0, runtime * 2.5)
                answers: list[int] = []

                def cancel_later(job_id=job_id, delay=delay, answers=answers) -> None:
                    time.sleep(delay)
                    answers.append(client.delete(f"/v1/jobs/{job_id}").status_code)

                canceler = threading.Thread(target=cancel_later)
                canceler.start()
                record = wait_status(redis_conn, job_id, FINAL, timeout=60)
                canceler.join()
                # the worker is done with it (a stopped horse's leftovers are removed by its worker)
                wait_for(
                    lambda j=job_id: (
                        rq_glue.fetch_rq_job(redis_conn, j).get_status(refresh=True) not in ("queued", "started")
                    ),
                    30,
                )
                wait_for(lambda j=job_id: not in_started_registry(redis_conn, quick.queue, j), 30)
                record = records.get_job(redis_conn, job_id)
                assert record.status in ("succeeded", "canceled"), (record.status, record.error)
                events = status_events(redis_conn, job_id)
                assert sum(event in FINAL for event in events) == 1, events
                assert events[-1] == record.status
                job_dir = data_dir.job_dir(job_id)
                if record.status == "succeeded":
                    assert answers and answers[0] >= 400, answers
                    names = set(record.result["artifacts"])
                    assert names and all((job_dir / name).is_file() for name in names), names
                    assert client.get(f"/v1/jobs/{job_id}/artifacts/similarity.npy").status_code == 200
                else:
                    assert answers and answers[0] < 300, answers
                    assert not job_dir.exists(), sorted(p.name for p in job_dir.iterdir())
                outcomes.append(record.status)
    finally:
        stop_worker(worker)
    print(f"\n{outcomes.count('succeeded')} succeeded, {outcomes.count('canceled')} canceled")
    assert len(outcomes) == ITERATIONS
