"""Artifacts that cannot be written: the job fails cleanly ("storage error ...") and no partial
artifact is ever served. Tests run as root, so chmod blocks nothing: the job folder's path is taken by a
file, or the worker runs under a file-size limit (RLIMIT_FSIZE: the disk "fills up" mid-write)."""

from __future__ import annotations

import pytest

from service.contract import queue as rq_glue
from service.contract import records
from service.contract.storage import ARTIFACT_TYPES, DataDir
from tests.factories import TINY_SPEC, app_client

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def assert_nothing_served(client, job_id: str) -> None:
    assert client.get(f"/v1/jobs/{job_id}/result").status_code != 200
    for name in ARTIFACT_TYPES:
        assert client.get(f"/v1/jobs/{job_id}/artifacts/{name}").status_code == 404, name


def test_a_job_folder_that_cannot_be_created_fails_the_job_with_a_storage_error(settings, redis_conn, run_worker_burst):
    data_dir = DataDir(settings.data_dir)
    with app_client(settings) as client:
        job_id = records.create_job(redis_conn, spec=TINY_SPEC).id
        data_dir.job_dir(job_id).write_text("in the way")  # mkdir of jobs/<id> fails
        rq_glue.enqueue(redis_conn, settings, job_id)
        other = records.create_job(redis_conn, spec=TINY_SPEC).id
        rq_glue.enqueue(redis_conn, settings, other)
        done = run_worker_burst(settings)
        assert done.returncode == 0, done.stderr[-3000:]

        record = records.get_job(redis_conn, job_id)
        assert record.status == "failed" and record.error.startswith("storage error"), record.error
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"
        assert_nothing_served(client, job_id)
        assert records.get_job(redis_conn, other).status == "succeeded", "the next job still ran"


def test_a_disk_that_fills_up_mid_write_leaves_no_partial_artifact(settings, redis_conn, run_worker_burst):
    data_dir = DataDir(settings.data_dir)
    with app_client(settings) as client:
        job_id = records.create_job(redis_conn, spec=TINY_SPEC).id
        rq_glue.enqueue(redis_conn, settings, job_id)
        # similarity.npy (40 × 40 float32, 6.5 kB) fits; the model's weights (about 20 kB) do not
        done = run_worker_burst(settings, file_size_limit=10_000)
        assert done.returncode == 0, done.stderr[-3000:]

        record = records.get_job(redis_conn, job_id)
        assert record.status == "failed", record
        assert record.error.startswith("storage error"), record.error
        assert not data_dir.job_dir(job_id).exists(), "artifacts written before the error were removed"
        assert_nothing_served(client, job_id)
