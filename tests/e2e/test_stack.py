"""End to end: `lelastic up` as a subprocess (Valkey + API + RQ workers), driven over HTTP.

These tests start real processes and run real (tiny) jobs; together they take about a minute or two.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.cli.client import Client
from service.cli.supervisor import _alive, descendants

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningStack:
    """`python -m service.cli.main up` in a subprocess; its output goes to a log file in the data dir."""

    def __init__(self, data_dir: Path, *, workers: int) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"up-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")}
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "up",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--data-dir",
                str(data_dir),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_for(self, path: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"`lelastic up` exited early:\n{self.output()}"
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{path} did not answer 200 within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> list[int]:
        """SIGTERM the supervisor and wait for it; returns the pids it had under it."""
        pids = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=45)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()
        assert code == 0, f"`lelastic up` exited with {code}:\n{self.output()}"
        return pids


def wait_for_status(client: Client, job_id: str, statuses: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.job(job_id)
        if record["status"] in statuses:
            return record
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} is {record['status']}, not {statuses}, after {timeout} s")


def two_blobs_npz(n: int = 40, d: int = 5, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, d)).astype(np.float32) + 4.0 * y[:, None]
    buffer = io.BytesIO()
    np.savez(buffer, X=X, y=y.astype(np.int64))
    return buffer.getvalue()


def tiny_spec(dataset_id: str) -> dict:
    return {
        "dataset": dataset_id,
        "primary": {"indices": list(range(40))},
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "weights": {"source": "init"},
        "similarity": {"kind": "kernelized", "step": 0},
        "clustering": {"k": 2},
        "baselines": ["kmeans_raw"],
    }


def upload(client: Client, tmp_path: Path) -> str:
    path = tmp_path / "blobs.npz"
    path.write_bytes(two_blobs_npz())
    dataset = client.upload_dataset(path)
    assert dataset["n"] == 40 and dataset["shape"] == [5]
    return dataset["id"]


def assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], "processes outlived `lelastic up`"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = RunningStack(tmp_path_factory.mktemp("stack"), workers=1)
    try:
        running.wait_for("/readyz")
        yield running
    finally:
        pids = running.stop()
    assert len(pids) >= 3, "valkey, the API and a worker ran under the supervisor"
    assert_all_gone(pids)


def test_a_job_runs_and_its_artifacts_download(stack, tmp_path):
    with Client(stack.url) as client:
        job = client.submit(tiny_spec(upload(client, tmp_path)))
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

    (tmp_path / "blobs.npz").write_bytes(two_blobs_npz())
    spec = tiny_spec("replaced-by-the-upload")
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
        cwd=ROOT,
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

        following = client.submit(tiny_spec(upload(client, tmp_path)))
        record = wait_for_status(client, following["id"], ("succeeded", "failed", "canceled"), timeout=90)
        assert record["status"] == "succeeded", record.get("error")


def test_a_queued_job_survives_a_restart_and_sigterm_leaves_no_orphans(tmp_path):
    data_dir = tmp_path / "data"
    first = RunningStack(data_dir, workers=0)
    try:
        first.wait_for("/healthz")
        with Client(first.url) as client:
            dataset_id = upload(client, tmp_path)
            job = client.submit(tiny_spec(dataset_id))
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
