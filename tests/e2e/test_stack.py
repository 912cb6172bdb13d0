"""End to end: `lelastic up` as a subprocess (Valkey + API + RQ workers), driven over HTTP.

These tests start real processes and run real (tiny) jobs; together they take about a minute or two.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.cli.client import Client
from tests.factories import REPO_ROOT, RunningStack, assert_all_gone, blobs_npz, tiny_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def wait_for_status(client: Client, job_id: str, statuses: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.job(job_id)
        if record["status"] in statuses:
            return record
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} is {record['status']}, not {statuses}, after {timeout} s")


def tiny_job(dataset_id: str) -> dict:
    return tiny_spec(dataset=dataset_id, model={"arch": "mlp", "width": 64, "depth": 2}, baselines=["kmeans_raw"])


def upload_blobs(client: Client, tmp_path: Path) -> str:
    """Two blobs of 40 points in 5 dimensions, uploaded from a file by the command line's client."""
    path = tmp_path / "blobs.npz"
    path.write_bytes(blobs_npz(40, 5, gap=4.0))
    dataset = client.upload_dataset(path)
    assert dataset["n"] == 40 and dataset["shape"] == [5]
    return dataset["id"]


def test_a_job_runs_and_its_artifacts_download(stack, tmp_path):
    with Client(stack.url) as client:
        job = client.submit(tiny_job(upload_blobs(client, tmp_path)))
        progress: list[dict] = []
        record = client.follow(job["id"], on_progress=progress.append, timeout=120)
        assert record["status"] == "succeeded", record.get("error")

        result = client.result(job["id"])
        assert set(result["metrics"]) >= {"accuracy", "ari", "nmi", "within_between_ratio"}
        assert set(result["baselines"]) == {"kmeans_raw"}
        artifacts = result["artifacts"]
        assert {"similarity.npy", "primary_index.npy", "clusters.npy"} <= set(artifacts)
        for name, url in artifacts.items():
            response = client.http.get(url)
            assert response.status_code == 200, (name, response.text[:200])
            assert response.content, name
        similarity = np.load(io.BytesIO(client.http.get(artifacts["similarity.npy"]).content))
        assert similarity.shape == (40, 40) and similarity.dtype == np.float32

        full = client.http.get(artifacts["similarity.npy"]).content
        part = client.http.get(artifacts["similarity.npy"], headers={"Range": "bytes=10-99"})
        assert part.status_code == 206
        assert part.content == full[10:100]

        out = tmp_path / "out"
        _, paths = client.download_results(job["id"], out)
        assert (out / "result.json").exists() and all(path.exists() for path in paths)


def test_submit_uploads_waits_and_downloads(stack, tmp_path):
    import json

    (tmp_path / "blobs.npz").write_bytes(blobs_npz(40, 5, gap=4.0))
    spec = tiny_job("replaced-by-the-upload")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "submit",
            str(tmp_path / "spec.json"),
            "--dataset",
            str(tmp_path / "blobs.npz"),
            "--wait",
            "--out",
            str(out),
            "--url",
            stack.url,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert set(result["artifacts"]) - {"result.json"} <= {path.name for path in out.iterdir()}
    assert "100.0%" in done.stderr, "the progress bar reached the end"


def test_a_running_job_is_canceled_and_the_worker_moves_on(stack, tmp_path):
    slow = {
        "dataset": {"builtin": "digits"},
        "primary": {"labels": [3, 5]},
        "auxiliary": {"labels": [8, 9]},
        "model": {"arch": "mlp", "width": 256},
        "weights": {"source": "trained", "epochs": 10000, "lr": 0.003, "batch_size": 50},
        "clustering": {"k": 2},
        "baselines": [],
    }
    with Client(stack.url) as client:
        job = client.submit(slow)
        wait_for_status(client, job["id"], ("running",), timeout=60)
        client.cancel(job["id"])
        record = wait_for_status(client, job["id"], ("canceled", "failed", "succeeded"), timeout=10)
        assert record["status"] == "canceled"

        following = client.submit(tiny_job(upload_blobs(client, tmp_path)))
        record = wait_for_status(client, following["id"], ("succeeded", "failed", "canceled"), timeout=90)
        assert record["status"] == "succeeded", record.get("error")


def test_a_queued_job_survives_a_restart_and_sigterm_leaves_no_orphans(tmp_path):
    data_dir = tmp_path / "data"
    first = RunningStack(data_dir, workers=0)
    try:
        first.wait_for("/healthz")
        with Client(first.url) as client:
            dataset_id = upload_blobs(client, tmp_path)
            job = client.submit(tiny_job(dataset_id))
            assert client.job(job["id"])["status"] == "queued"
    finally:
        pids = first.stop()
    assert len(pids) >= 2, "valkey and the API ran under the supervisor"
    assert_all_gone(pids)

    second = RunningStack(data_dir, workers=1)
    try:
        second.wait_for("/readyz")
        with Client(second.url) as client:
            record = wait_for_status(client, job["id"], ("succeeded", "failed", "canceled"), timeout=90)
            assert record["status"] == "succeeded", record.get("error")
            listed = client.http.get("/v1/datasets").json()["data"]
            assert dataset_id in [dataset["id"] for dataset in listed]
    finally:
        pids = second.stop()
    assert_all_gone(pids)
