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
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
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
