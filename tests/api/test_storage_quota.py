"""The per-tenant storage quota holds under concurrent uploads: an upload in progress reserves its bytes
(`service.api.quota`) before it looks at what is stored, and releases them once recorded or failed.
Real Valkey; a real uvicorn where uploads must run at the same time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from service.api import auth, quota, uploads
from service.contract import keys, records
from service.contract.storage import DataDir
from tests.factories import app_client, assert_names, live_api, npz_bytes, upload

DATA = npz_bytes(X=np.ones((64, 8), dtype=np.float32))  # stored as it is: 2304 bytes, 2048 of them X


def reservations(redis_conn, tenant: str) -> dict[str, str]:
    return {records.text(k): records.text(v) for k, v in redis_conn.hgetall(keys.storage_reservations(tenant)).items()}


def test_a_reservation_of_an_upload_in_progress_counts(settings, redis_conn, tmp_path):
    keys_file = tmp_path / "keys"
    alice = {"X-API-Key": auth.create_key(keys_file, "alice")}
    with app_client(settings, api_keys_file=keys_file, max_tenant_storage_bytes=5000) as client:
        assert quota.reserve(redis_conn, "alice", "in-flight", 4000, 3600) == 0
        detail = assert_names(
            upload(client, "a.npz", DATA, headers=alice),
            413,
            "max_tenant_storage_bytes = 5000",
            "0 bytes are stored now and 4000 bytes are reserved by uploads in progress",
            "delete datasets",
        )
        assert detail[0]["ctx"]["env"] == "LELASTIC_MAX_TENANT_STORAGE_BYTES"
        assert reservations(redis_conn, "alice").keys() == {"in-flight"}  # the refused upload's went
        quota.release(redis_conn, "alice", "in-flight")
        assert redis_conn.exists(keys.storage_reservations("alice")) == 0
        assert upload(client, "a.npz", DATA, headers=alice).status_code == 201


def test_lapsed_reservations_do_not_count_and_are_dropped(redis_conn):
    now = time.time()
    assert quota.reserve(redis_conn, "alice", "old", 4000, 60, now=now - 120) == 0
    assert quota.reserve(redis_conn, "alice", "live", 1000, 60, now=now) == 0  # "old" lapsed at now - 60
    assert reservations(redis_conn, "alice").keys() == {"live"}
    assert quota.reserve(redis_conn, "alice", "other", 500, 60, now=now) == 1000
    size, expiry = reservations(redis_conn, "alice")["other"].split()
    assert size == "500" and float(expiry) == pytest.approx(now + 60, abs=0.01)
    assert 0 < redis_conn.ttl(keys.storage_reservations("alice")) <= 60
    assert quota.reserve(redis_conn, "alice", "other", 700, 60, now=now) == 1000  # replaces its own
    assert quota.reserve(redis_conn, "alice", "live", 1000, 60, now=now + 61) == 0  # both lapsed by then
    assert reservations(redis_conn, "alice").keys() == {"live"}


def test_reservations_are_released_after_success_refusal_and_failure(client, redis_conn, settings):
    tenant = records.DEFAULT_TENANT
    key = keys.storage_reservations(tenant)
    for filename, content, status in [
        ("ok.npz", DATA, 201),
        ("bad.npz", b"not a zip file at all", 422),
        ("w.safetensors", b"\x00" * 64, 422),
    ]:
        # A lapsed reservation left behind: the upload drops it when it reserves (so it did reserve).
        quota.reserve(redis_conn, tenant, "lapsed", 10, 60, now=time.time() - 3600)
        response = upload(client, filename, content)
        assert response.status_code == status, response.text
        assert redis_conn.exists(key) == 0, (filename, reservations(redis_conn, tenant))
    used = quota.tenant_storage_bytes(redis_conn, DataDir(settings.data_dir), tenant)
    assert used == len(DATA)
    with app_client(settings, max_tenant_storage_bytes=len(DATA) + 1024) as small:
        assert_names(upload(small, "big.npz", DATA), 413, f"{len(DATA)} bytes are stored now")
        assert redis_conn.exists(key) == 0


def test_concurrent_uploads_stay_within_the_quota(settings, redis_conn, monkeypatch):
    """Six uploads at once, room for two: the parse is slowed down so that they all overlap."""
    read_npz = uploads.read_npz

    def slow_read_npz(*args: Any, **kwargs: Any) -> uploads.ParsedDataset:
        time.sleep(0.2)
        return read_npz(*args, **kwargs)

    monkeypatch.setattr(uploads, "read_npz", slow_read_npz)
    allowed = 2 * len(DATA)
    start = threading.Barrier(6)

    def send(port: int) -> int:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            start.wait(timeout=10)
            return upload(http, "d.npz", DATA).status_code

    app_settings = settings.model_copy(update={"max_tenant_storage_bytes": allowed, "max_uploads_per_tenant": 6})
    with live_api(app_settings, log_level="warning") as port, ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(send, [port] * 6))
    assert 1 <= statuses.count(201) <= 2 and set(statuses) <= {201, 413}, statuses
    stored = quota.tenant_storage_bytes(redis_conn, DataDir(settings.data_dir), records.DEFAULT_TENANT)
    assert stored == statuses.count(201) * len(DATA) <= allowed
    assert redis_conn.exists(keys.storage_reservations(records.DEFAULT_TENANT)) == 0


def test_tenants_reserve_independently(settings, redis_conn, tmp_path):
    keys_file = tmp_path / "keys"
    alice = {"X-API-Key": auth.create_key(keys_file, "alice")}
    with app_client(settings, api_keys_file=keys_file, max_tenant_storage_bytes=5000) as client:
        assert quota.reserve(redis_conn, "bob", "bobs-upload", 4000, 3600) == 0
        assert quota.reserve(redis_conn, "alice", "alices-upload", 1000, 3600) == 0  # bob's is not alice's
        assert upload(client, "a.npz", DATA, headers=alice).status_code == 201  # 1000 + 2304 fit in 5000
        assert reservations(redis_conn, "bob").keys() == {"bobs-upload"}
        assert reservations(redis_conn, "alice").keys() == {"alices-upload"}
