"""Fixtures of the API tests (the shared ones are in tests/conftest.py).

keyed       function: (client, alice's key, bob's key, keys file) of an app that requires API keys
api_url     module: the API under uvicorn in a thread, on a free port (the fuzz tests)
api_schema  module: schemathesis' schema of that API, its cache in a temp dir
seeded      module: ids of a dataset and a canceled job that exist on that API
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import CacheConfig, SchemathesisConfig

from service.api import auth
from service.contract.settings import Settings
from tests.factories import DIGITS_3_5, app_client, live_api, npz_bytes


@pytest.fixture
def keyed(settings: Settings, tmp_path: Path, redis_conn) -> Iterator[tuple[TestClient, str, str, Path]]:
    keys_file = tmp_path / "keys"
    alice, bob = auth.create_key(keys_file, "alice"), auth.create_key(keys_file, "bob")
    with app_client(settings, api_keys_file=keys_file) as client:
        yield client, alice, bob, keys_file


@pytest.fixture(scope="module")
def api_url(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API under uvicorn in a thread; the rate limit is out of the way so handlers get exercised."""
    app_settings = Settings(
        redis_url=valkey_url,
        data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        queue=f"fuzz-{uuid.uuid4().hex[:12]}",
        rate_limit_per_minute=1_000_000,
        max_upload_bytes=1024**2,
    )
    with live_api(app_settings, log_level="warning") as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def api_schema(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    """The live /openapi.json; schemathesis keeps its cache in a temp dir, not in `.schemathesis/` here."""
    cache = CacheConfig(directory=str(tmp_path_factory.mktemp("schemathesis")))
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=SchemathesisConfig(cache=cache))


@pytest.fixture(scope="module")
def seeded(api_url: str) -> dict[str, str]:
    """Path parameters of resources that exist: a dataset and a canceled job (its event stream ends)."""
    with httpx.Client(base_url=api_url) as http:
        dataset = http.post("/v1/datasets", files={"file": ("x.npz", npz_bytes(X=np.eye(4), y=np.arange(4) % 2))})
        job = http.post("/v1/jobs", json=DIGITS_3_5)
        assert dataset.status_code == 201 and job.status_code == 202, (dataset.text, job.text)
        assert http.delete(f"/v1/jobs/{job.json()['id']}").status_code == 200
    return {"dataset_id": dataset.json()["id"], "job_id": job.json()["id"]}
