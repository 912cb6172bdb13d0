"""A real job end to end: POST /v1/jobs, a real RQ worker in burst mode, then the result over HTTP."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.factories import read_stream, tiny_spec

TINY_SPEC = tiny_spec(baselines=["kmeans_raw"])


@pytest.mark.worker
def test_a_job_runs_on_a_real_worker_and_its_result_downloads(client, settings, run_worker_burst):
    job = client.post("/v1/jobs", json=TINY_SPEC).json()
    worked = run_worker_burst(settings)
    assert worked.returncode == 0, worked.stderr[-3000:]
    record = client.get(f"/v1/jobs/{job['id']}").json()
    assert record["status"] == "succeeded", record
    assert record["progress"]["fraction"] == 1.0 and record["finished_at"] >= record["started_at"]
    default = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert default["similarity"] is None and default["similarity_inline"] is False
    stored = client.get(default["artifacts"]["result.json"]).json()  # the document is the stored result.json
    assert default["clusters"] == stored["clusters"] and default["timings"] == stored["timings"]
    result = client.get(f"/v1/jobs/{job['id']}/result?include=similarity").json()
    assert result["similarity_inline"] is True and np.array(result["similarity"]).shape == (40, 40)
    download = client.get(result["artifacts"]["similarity.npy"])
    assert download.status_code == 200
    np.testing.assert_allclose(np.load(io.BytesIO(download.content)), result["similarity"], rtol=1e-6)
    events = read_stream(client, job["id"])
    assert [e["data"]["status"] for e in events if e["event"] == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert any(e["event"] == "progress" for e in events)


@pytest.mark.worker
def test_a_canceled_job_is_not_run_by_a_real_worker(client, settings, run_worker_burst):
    job = client.post("/v1/jobs", json=TINY_SPEC).json()
    assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
    assert run_worker_burst(settings).returncode == 0
    record = client.get(f"/v1/jobs/{job['id']}").json()
    assert record["status"] == "canceled" and record["started_at"] is None


@pytest.mark.worker
def test_a_job_on_string_labels_reports_their_names(client, settings, run_worker_burst):
    from tests.factories import blobs, npz_bytes, upload

    X, y = blobs(n=20, d=3)
    dataset = upload(client, "animals.npz", npz_bytes(X=X, y=np.where(y == 1, "dog", "cat"))).json()["id"]
    spec = tiny_spec(dataset=dataset, primary={"labels": ["cat", "dog"]}, clustering={})
    job = client.post("/v1/jobs", json=spec).json()
    assert run_worker_burst(settings).returncode == 0
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["label_names"] == ["cat", "dog"]
    assert result["clustering"]["k"] == 2 and result["clustering"]["k_from"] == "classes"
    assert result["metrics"]["accuracy"] > 0.9


@pytest.mark.worker
def test_a_job_canceled_after_it_was_dequeued_is_not_logged_as_completed(
    client, redis_conn, settings, run_worker_burst
):
    from service.contract import jobstate

    job = client.post("/v1/jobs", json=TINY_SPEC).json()
    jobstate.mark_canceled(redis_conn, job["id"])  # the record only: the queue still hands the job out
    worked = run_worker_burst(settings)
    assert worked.returncode == 0
    assert "job ended: canceled" in worked.stderr, worked.stderr
    assert "Job OK" not in worked.stderr and "Successfully completed" not in worked.stderr, worked.stderr
