"""Fixtures of the fault tests.

start_worker  function: start_worker(settings, log_dir, name="worker") -> the Popen of a long-running
              (not burst) worker; every worker still running is stopped after the test
two_workers   function: two such workers on `settings` (logs in tmp_path/logs), for sharded jobs
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.cli.supervisor import Child
from service.contract.settings import Settings
from tests.factories import stop_worker, worker_env


@pytest.fixture
def start_worker() -> Iterator[Callable[..., subprocess.Popen]]:
    """A real `run_worker()` process, started as the supervisor starts its children (own session, SIGTERM
    when this process dies); its output goes to `<log_dir>/<name>-<n>.log` (see factories.worker_log).
    After the test, what is left of each one is stopped and killed, work-horses included."""
    started: list[Child] = []

    def start(settings: Settings, log_dir: Path, name: str = "worker") -> subprocess.Popen:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-c", "from workers.main import run_worker; run_worker()"]
        child = Child(name, argv, worker_env(settings, LELASTIC_LOG_FORMAT="text"))
        with open(log_path, "wb") as log:
            child.start(log)
        assert child.process is not None
        child.process.log_path = log_path  # type: ignore[attr-defined]
        started.append(child)
        return child.process

    yield start
    for child in started:
        if child.process is not None:
            stop_worker(child.process)
        child.kill_all()


@pytest.fixture
def two_workers(settings: Settings, tmp_path: Path, start_worker: Callable[..., subprocess.Popen]) -> list:
    """Two real workers on `settings` (stopped after the test by `start_worker`)."""
    return [start_worker(settings, tmp_path / "logs", name=f"w{n}") for n in range(2)]
