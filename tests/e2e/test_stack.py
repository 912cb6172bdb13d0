"""End to end: `lelastic up` as a subprocess (Valkey + API + RQ workers), driven over HTTP.

These tests start real processes and run real (tiny) jobs; together they take about a minute or two.
"""

from __future__ import annotations

import io
import os
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


def lelastic(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the command line as a user would, with only the given LELASTIC_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **env},
    )


def test_submit_uploads_waits_and_downloads(stack, tmp_path):
    import json

    (tmp_path / "blobs.npz").write_bytes(blobs_npz(40, 5, gap=4.0))
    spec = tiny_job("replaced-by-the-upload")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    env = {"LELASTIC_URL": stack.url}  # read by every client command instead of --url
    spec_path, data_path = str(tmp_path / "spec.json"), str(tmp_path / "blobs.npz")
    done = lelastic("submit", spec_path, "--dataset", data_path, "--wait", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert set(result["artifacts"]) - {"result.json"} <= {path.name for path in out.iterdir()}
    assert "100.0%" in done.stderr, "the progress bar reached the end"
    assert "LE clustering" in done.stdout and "kmeans_raw" in done.stdout, "--wait prints the metrics table"
    job_id = done.stdout.splitlines()[0]

    status = lelastic("status", job_id, env=env)
    assert status.returncode == 0 and status.stdout.split()[:3] == [job_id, "succeeded", "100%"], status
    listed = lelastic("list", "--limit", "5", env=env)
    assert job_id in listed.stdout
    table = lelastic("result", job_id, env=env)
    assert table.stdout.startswith("method") and "LE clustering" in table.stdout
    assert json.loads(lelastic("result", job_id, "--json", env=env).stdout)["n"] == 40
    fetched = lelastic("download", job_id, "--out", str(tmp_path / "again"), env=env)
    assert fetched.returncode == 0 and (tmp_path / "again" / "similarity.npy").exists()
    canceled = lelastic("cancel", job_id, env=env)
    assert canceled.returncode == 1 and "purge=true" in canceled.stderr, "a finished job cannot be canceled"


def test_gc_finds_the_valkey_of_a_running_stack(stack):
    swept = lelastic("gc", "--data-dir", str(stack.data_dir), env={})
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.splitlines()[-1].startswith("removed")


def test_client_commands_name_the_url_they_could_not_reach(tmp_path):
    from tests.factories import free_port

    url = f"http://127.0.0.1:{free_port()}"
    failed = lelastic("status", "0123abcd", env={"LELASTIC_URL": url})
    assert failed.returncode == 1 and url in failed.stderr and "LELASTIC_URL" in failed.stderr


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


def test_the_stack_log_says_each_thing_once(stack):
    with Client(stack.url) as client:
        client.http.get("/v1/jobs")
    time.sleep(0.5)
    output = stack.log_path.read_text(errors="replace")
    assert output.count("no API keys") == 1, "the open-access warning is printed once"
    assert '"logger": "uvicorn.access"' not in output and '"logger": "lelastic.access"' in output
    assert "lelastic is up" in output and "not ready yet" not in output
