"""Fault tests: real Valkey, real RQ worker processes, real kills. Shared helpers.

start_worker(settings, log_dir)      a long-running (not burst) worker subprocess
stop_worker(process)                 SIGTERM, then SIGKILL what is left of it
wait_for(predicate, timeout)         poll until predicate() is truthy
wait_status(conn, job_id, statuses)  poll a job record until its status is one of `statuses`
worker_running(conn, job_id)         (worker pid, worker name) of the RQ worker now running a job
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import Worker

from service.contract import records
from service.contract.settings import Settings
from tests.helpers import tiny_spec

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY_SPEC: dict[str, Any] = tiny_spec()


def long_spec(epochs: int = 5000) -> dict[str, Any]:
    """A job that trains for a while (seconds to minutes, by `epochs`) before it measures anything."""
    weights = {"source": "trained", "epochs": epochs}
    return {**TINY_SPEC, "model": {"arch": "mlp", "width": 256}, "weights": weights}


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")}
    env.update(
        LELASTIC_REDIS_URL=str(settings.redis_url),
        LELASTIC_DATA_DIR=str(settings.data_dir),
        LELASTIC_QUEUE=settings.queue,
        LELASTIC_DEVICE="cpu",
        LELASTIC_TORCH_THREADS="1",
        LELASTIC_LOG_FORMAT="text",
        LELASTIC_JOB_TIMEOUT=str(settings.job_timeout),
        LELASTIC_JOB_RETRIES=str(settings.job_retries),
        LELASTIC_WORKER_HEARTBEAT_SECONDS=str(settings.worker_heartbeat_seconds),
        LELASTIC_MAINTENANCE_INTERVAL=str(settings.maintenance_interval),
        LELASTIC_REDIS_SOCKET_TIMEOUT=str(settings.redis_socket_timeout),
    )
    return env


def start_worker(settings: Settings, log_dir: Path, name: str = "worker") -> subprocess.Popen:
    """A real `run_worker()` process (not burst); its output goes to `<log_dir>/<name>-<pid>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from workers.main import run_worker; run_worker()"],
            cwd=REPO_ROOT,
            env=worker_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    return process


def worker_log(process: subprocess.Popen) -> str:
    with contextlib.suppress(OSError):
        return Path(process.log_path).read_text(errors="replace")[-4000:]  # type: ignore[attr-defined]
    return ""


def stop_worker(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL; only this process (its horse dies with it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_status(conn: redis.Redis, job_id: str, statuses: tuple[str, ...], timeout: float) -> records.JobRecord:
    last: list[str | None] = [None]

    def reached() -> records.JobRecord | None:
        record = records.get_job(conn, job_id)
        last[0] = record.status if record else None
        return record if record is not None and record.status in statuses else None

    try:
        return wait_for(reached, timeout)
    except AssertionError:
        raise AssertionError(f"job {job_id} is {last[0]}, not one of {statuses}, after {timeout} s") from None


def worker_running(conn: redis.Redis, job_id: str) -> tuple[int, str] | None:
    """(pid, name) of the live RQ worker whose current job is `job_id`."""
    for worker in Worker.all(connection=conn):
        if worker.get_current_job_id() == job_id and worker.pid:
            return worker.pid, worker.name
    return None


def children(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (a worker's work-horse)."""
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


@contextlib.contextmanager
def api(settings: Settings):
    """A TestClient over the real app on `settings` (lifespan running)."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


def submit(client, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code in (200, 201, 202), response.text
    return response.json()["id"]


def status_events(conn: redis.Redis, job_id: str) -> list[str]:
    return [data["status"] for _, event, data in records.read_events(conn, job_id) if event == "status"]
