"""Builders and checks shared by the tests: plain functions and constants, no fixtures (those live in
the conftest.py files). No test module imports another one; what two of them share is here.

    specs        tiny_spec, TINY_SPEC, DIGITS_3_5, long_spec
    files        npz_bytes, npy_bytes, csv_bytes, safetensors_bytes, blobs, blobs_npz
    HTTP         app_client, upload, submit, submit_id, read_stream
    assertions   assert_names, relative_error
    similarity   output_of, example_loss, normalised_row, one_step_reference (torch is imported inside)
    command line subcommands, options
    processes    free_port, worker_env, stop_worker, worker_log, wait_for, wait_status, worker_running,
                 worker_and_horses, kill_work_horse, status_events, start_lelastic_up, RunningStack,
                 assert_all_gone
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import numpy as np
import redis
import uvicorn
from fastapi.testclient import TestClient
from rq import Worker

from service.api.app import create_app
from service.cli.supervisor import _alive, descendants
from service.contract import records
from service.contract.settings import Settings

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------- specs


def tiny_spec(*, rows: int = 40, width: int = 64, **overrides: Any) -> dict[str, Any]:
    """A job spec that runs in a fraction of a second: the first `rows` digits, an untrained narrow MLP,
    the kernelized limit, k = 2 (fields in `overrides` replace the defaults)."""
    spec: dict[str, Any] = {
        "dataset": {"builtin": "digits"},
        "primary": {"indices": list(range(rows))},
        "model": {"arch": "mlp", "width": width},
        "weights": {"source": "init"},
        "similarity": {"kind": "kernelized", "step": 0},
        "clustering": {"k": 2},
        "baselines": [],
    }
    spec.update(overrides)
    return spec


#: The default tiny job (read-only: build a changed one with tiny_spec(...)).
TINY_SPEC: dict[str, Any] = tiny_spec()

#: A valid job on the digits 3 and 5 that the API accepts (tests that never run it).
DIGITS_3_5: dict[str, Any] = {
    "dataset": {"builtin": "digits"},
    "primary": {"labels": [3, 5]},
    "model": {"arch": "mlp", "width": 8},
    "weights": {"source": "init"},
    "clustering": {"k": 2},
}


def long_spec(epochs: int = 5000) -> dict[str, Any]:
    """A job that trains for a while (seconds to minutes, by `epochs`) before it measures anything."""
    return tiny_spec(model={"arch": "mlp", "width": 256}, weights={"source": "trained", "epochs": epochs})


# ------------------------------------------------------------------------------------------- files


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def csv_bytes(rows: Iterable[Sequence[Any]], *, header: Sequence[str] | None = None) -> bytes:
    """A CSV file of `rows` (under `header` when given)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], *, header: bytes | None = None) -> bytes:
    """A .safetensors file of zero-filled tensors {name: (dtype, shape)} (or a given raw header)."""
    sizes = {"F32": 4, "F16": 2, "I64": 8}
    meta, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        length = int(np.prod(shape)) * sizes[dtype]
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    raw = header if header is not None else json.dumps(meta).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def blobs(n: int = 12, d: int = 3, *, gap: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs of n/2 points in d dimensions, `gap` apart on every axis: (X, y)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return rng.normal(size=(n, d)) + gap * y[:, None], y


def blobs_npz(n: int = 12, d: int = 3, **kwargs: Any) -> bytes:
    """blobs(n, d, ...) as an .npz upload with X and y."""
    X, y = blobs(n, d, **kwargs)
    return npz_bytes(X=X, y=y)


# -------------------------------------------------------------------------------------------- HTTP


def app_client(settings: Settings, **changes: Any) -> TestClient:
    """A TestClient over create_app(settings with `changes`); enter it (`with`) to run the lifespan."""
    return TestClient(create_app(settings.model_copy(update=changes) if changes else settings))


def upload(client: Any, filename: str, content: bytes, *, headers: dict[str, str] | None = None, **form: str):
    """POST /v1/datasets with `content` as the multipart field `file` and `form` as the other fields."""
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=form, headers=headers)


def submit(client: Any, spec: dict[str, Any] | None = None, **changes: Any):
    """POST /v1/jobs with `spec` (DIGITS_3_5 by default), top-level fields replaced by `changes`."""
    return client.post("/v1/jobs", json={**(spec or DIGITS_3_5), **changes})


def submit_id(client: Any, spec: dict[str, Any] | None = None, **changes: Any) -> str:
    """submit(...), checked to be accepted; returns the job's id."""
    response = submit(client, spec, **changes)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def read_stream(client: Any, job_id: str, **headers: str) -> list[dict]:
    """Every event of the job's event stream (until the server ends it) as {"id", "event", "data"}."""
    events, current = [], {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value
    return events


# -------------------------------------------------------------------------------------- assertions


def assert_names(response, status: int, *fragments: str) -> list[dict]:
    """The response has `status` and an error entry whose text contains every fragment."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    text = json.dumps(detail)
    for fragment in fragments:
        assert fragment in text, (fragment, detail)
    return detail


def relative_error(S: Any, R: Any) -> float:
    """max |S − R| over max |R| of two arrays of one shape (a relative error that a few near-zero
    entries of R do not blow up)."""
    return float(np.abs(S - R).max() / np.abs(R).max())


# -------------------------------------------------------------------------------------- similarity


def output_of(z: torch.Tensor, loss: str) -> torch.Tensor:
    """The prediction f whose change the similarity measures: sigmoid(z) under the bce loss, z under mse."""
    import torch

    return torch.sigmoid(z) if loss == "bce" else z


def example_loss(z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The training loss of outputs z against labels y (one shape): Σ (z − y)² under mse, the mean
    binary cross-entropy of sigmoid(z) under bce."""
    import torch

    if loss == "mse":
        return ((z - y) ** 2).sum()
    return torch.nn.functional.binary_cross_entropy(torch.sigmoid(z), y)


def normalised_row(df: torch.Tensor, i: int, f_i: torch.Tensor, eta: float, loss: str, kind: str) -> torch.Tensor:
    """Row i of S from df [n] = f(x_j; θ_i) − f(x_j; θ), θ_i one SGD step of size `eta` on (x_i, 1) and
    f_i = f(x_i; θ): |df| / |df_i| for the relative kind, else df / (−eta ∂L/∂f at (f_i, 1))."""
    if kind == "relative":
        return df.abs() / df[i].abs()
    dl_df = 2 * (f_i - 1) if loss == "mse" else (f_i - 1) / (f_i * (1 - f_i))
    return df / (-eta * dl_df)


def one_step_reference(
    model: torch.nn.Module, X: torch.Tensor, eta: float, loss: str, kind: str, dtype: torch.dtype | None = None
) -> np.ndarray:
    """S [n, n] of the examples X [n, ...] by a per-example loop on the CPU in `dtype` (float64 unless
    given): restore θ, one SGD step of size `eta` via autograd on (x_i, 1), predict every example again.
    The model is copied, never changed."""
    import copy

    import torch

    dtype = dtype or torch.float64
    m = copy.deepcopy(model).cpu().to(dtype)
    X = X.cpu().to(dtype)
    theta = copy.deepcopy(m.state_dict())
    with torch.no_grad():
        f0 = output_of(m(X), loss)
    rows = []
    for i in range(X.shape[0]):
        m.load_state_dict(theta)
        m.zero_grad()
        example_loss(m(X[i : i + 1]), torch.ones(1, dtype=dtype), loss).backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= eta * p.grad
            rows.append(normalised_row(output_of(m(X), loss) - f0, i, f0[i], eta, loss, kind))
    return torch.stack(rows).numpy()


# ------------------------------------------------------------------------------------ command line


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings} - {"-h", "--help"}


# --------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_uvicorn(config: uvicorn.Config) -> Iterator[None]:
    """uvicorn serving `config` in a thread: started (or failed) on entry, stopped on exit."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextlib.contextmanager
def live_api(settings: Settings, **uvicorn_options: Any) -> Iterator[int]:
    """create_app(settings) under a real uvicorn in a thread, on a free port; yields the port."""
    port = free_port()
    with running_uvicorn(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, lifespan="on", **uvicorn_options)
    ):
        yield port


def worker_env(settings: Settings, **variables: str) -> dict[str, str]:
    """The environment of a worker process on `settings`: this process's LELASTIC_* variables left out,
    the settings a worker reads set from `settings`, one torch thread on the CPU; `variables` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")}
    env.update(
        LELASTIC_REDIS_URL=str(settings.redis_url),
        LELASTIC_DATA_DIR=str(settings.data_dir),
        LELASTIC_QUEUE=settings.queue,
        LELASTIC_DEVICE="cpu",
        LELASTIC_TORCH_THREADS="1",
        LELASTIC_JOB_TIMEOUT=str(settings.job_timeout),
        LELASTIC_JOB_RETRIES=str(settings.job_retries),
        LELASTIC_WORKER_HEARTBEAT_SECONDS=str(settings.worker_heartbeat_seconds),
        LELASTIC_MAINTENANCE_INTERVAL=str(settings.maintenance_interval),
        LELASTIC_REDIS_SOCKET_TIMEOUT=str(settings.redis_socket_timeout),
    )
    if settings.tile_queue:
        env["LELASTIC_TILE_QUEUE"] = settings.tile_queue
    env["LELASTIC_EXACT_CLUSTERING_MAX_N"] = str(settings.exact_clustering_max_n)
    env["LELASTIC_NYSTROM_LANDMARKS"] = str(settings.nystrom_landmarks)
    env.update(variables)
    return env


def stop_worker(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL; its work-horse dies with it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def worker_log(process: subprocess.Popen) -> str:
    """The end of the log of a worker from the `start_worker` fixture."""
    with contextlib.suppress(OSError, AttributeError):
        return Path(process.log_path).read_text(errors="replace")[-4000:]  # type: ignore[attr-defined]
    return ""


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, message: str = "") -> Any:
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_status(conn: redis.Redis, job_id: str, statuses: tuple[str, ...], timeout: float) -> records.JobRecord:
    """Poll the job's record until its status is one of `statuses`; returns the record."""
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


def worker_and_horses(conn: redis.Redis, job_id: str, timeout: float = 60.0) -> tuple[int, list[int]]:
    """(pid, work-horse pids) of the live RQ worker running `job_id`, once it has a work-horse; fails when
    no worker runs the job within `timeout` seconds or its work-horse has not started 10 s later."""
    pid, _ = wait_for(lambda: worker_running(conn, job_id), timeout, message=f"no worker runs {job_id}")
    horses = wait_for(lambda: descendants(pid), 10, message="the worker has no work-horse")
    return pid, horses


def kill_work_horse(conn: redis.Redis, job_id: str) -> int:
    """Once job `job_id` is `running`, SIGKILL the one work-horse running it (what the kernel's OOM killer
    sends) and leave its worker alive; returns the worker's pid."""
    wait_status(conn, job_id, ("running",), timeout=60)
    pid, (horse,) = worker_and_horses(conn, job_id, timeout=30)
    os.kill(horse, signal.SIGKILL)
    return pid


def status_events(conn: redis.Redis, job_id: str) -> list[str]:
    """The statuses of the job's `status` events, in order."""
    return [data["status"] for _, event, data in records.read_events(conn, job_id) if event == "status"]


def start_lelastic_up(
    data_dir: Path, *, port: int, workers: int, env: dict[str, str], log: IO[bytes], **popen: Any
) -> subprocess.Popen[bytes]:
    """`python -m service.cli up` (the `lelastic up` stack) serving on `port` with `workers` worker
    processes over `data_dir`, run from the repository root in the environment `env`, its stdout and
    stderr both written to `log`; `popen` is passed on to subprocess.Popen. benchmarks/load.py starts
    its stack with it too."""
    argv = ["--port", str(port), "--workers", str(workers), "--data-dir", str(data_dir)]
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        **popen,
    )


class RunningStack:
    """`python -m service.cli up` in a subprocess; its output goes to a log file in the data dir."""

    def __init__(self, data_dir: Path, *, workers: int, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"up-{self.port}.log"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")}, **(env or {})}
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = start_lelastic_up(data_dir, port=self.port, workers=workers, env=env, log=self.log)

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


def assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], "processes outlived `lelastic up`"
