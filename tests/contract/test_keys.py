"""Redis key names: each is what it has always been (stored data depends on it), every key the service
writes is one of them, and only `service/contract/keys.py` spells the `lelastic:` prefix.

This file pins the key strings, so it is the one other place that spells them."""

from __future__ import annotations

import hashlib
import io
import re
import time
from pathlib import Path

import numpy as np

from service.api import limits, retention
from service.contract import keys

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("service", "workers", "benchmarks", "tests")
THIS_FILE = Path(__file__).resolve()


def test_every_key_is_the_known_string():
    assert keys.PREFIX == "lelastic:"
    assert keys.job("ab12") == "lelastic:job:ab12"
    assert keys.job_events("ab12") == "lelastic:job:ab12:events"
    assert keys.jobs_index("alice") == "lelastic:jobs:alice"
    assert keys.dataset("cd34") == "lelastic:dataset:cd34"
    assert keys.datasets_index("alice") == "lelastic:datasets:alice"
    assert keys.storage_reservations("alice") == "lelastic:storage-reservations:alice"
    assert keys.active_jobs("alice") == "lelastic:active:alice"
    assert keys.rate("alice", 29_000_000) == "lelastic:rate:alice:29000000"
    digest = hashlib.sha256(b"my-key").hexdigest()
    assert keys.idempotency("alice", "jobs", "my-key") == f"lelastic:idempotency:alice:jobs:{digest}"
    assert keys.RETENTION_LOCK == "lelastic:retention:lock"
    assert keys.status_index("running", "alice") == "lelastic:jobs-by-status:running:alice"
    assert keys.status_index("running", "alice").startswith(keys.STATUS_INDEX_PREFIX)
    assert keys.JOB_COUNTS == "lelastic:job-counts"
    assert keys.JOB_DURATIONS == "lelastic:job-durations"
    assert keys.STATUS_INDEX_READY == "lelastic:status-index:ready"
    assert keys.event_streams("alice") == "lelastic:streams:alice"
    assert keys.job_fold_lock("ab12", 7) == "lelastic:job:ab12:fold:7"


def test_scan_patterns_and_ids():
    assert keys.pattern(keys.job) == "lelastic:job:*"
    assert keys.pattern(keys.jobs_index) == "lelastic:jobs:*"
    assert keys.id_in("lelastic:job:ab12", keys.job) == "ab12"
    assert keys.id_in("lelastic:job:ab12:events", keys.job) is None
    assert keys.id_in(keys.job_fold_lock("ab12", 7), keys.job) is None
    assert keys.id_in("lelastic:jobs:alice", keys.job) is None
    assert keys.id_in("lelastic:job:", keys.job) is None
    assert keys.id_in("lelastic:datasets:alice", keys.datasets_index) == "alice"
    assert keys.id_in("lelastic:storage-reservations:alice", keys.storage_reservations) == "alice"


def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.arange(12, dtype=np.float32).reshape(6, 2), y=np.array([0, 1, 0, 1, 0, 1]))
    return buffer.getvalue()


def test_every_key_the_service_writes_is_built_by_keys(client, redis_conn, settings):
    """Upload, submit (with an Idempotency-Key), cancel and sweep: each key in Redis is a known one."""
    first_window = int(time.time() // limits.RATE_WINDOW_SECONDS)
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    spec = {"dataset": {"builtin": "digits"}, "primary": {"labels": [3, 5]}, "weights": {"source": "init"}}
    job = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"}).json()
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
    redis_conn.set(keys.RETENTION_LOCK, "held by another process", ex=60)
    assert retention.sweep_locked(redis_conn, settings.data_dir, settings) is None
    last_window = int(time.time() // limits.RATE_WINDOW_SECONDS)
    tenant = "default"
    rate_counters = {keys.rate(tenant, window) for window in range(first_window, last_window + 1)}
    known = {
        keys.job(job["id"]),
        keys.job_events(job["id"]),
        keys.jobs_index(tenant),
        keys.dataset(dataset["id"]),
        keys.datasets_index(tenant),
        keys.active_jobs(tenant),
        keys.idempotency(tenant, "jobs", "k-1"),
        keys.RETENTION_LOCK,
        keys.status_index("canceled", tenant),
        keys.JOB_COUNTS,
        keys.STATUS_INDEX_READY,
    }
    stored = {key.decode() for key in redis_conn.keys("*") if not key.startswith(b"rq:")}
    assert stored & rate_counters, "no request was counted"
    assert stored - rate_counters == known


LITERAL_PREFIX = re.compile(r"lelastic:")


def test_no_module_but_keys_spells_the_prefix():
    allowed = {ROOT / "service" / "contract" / "keys.py", THIS_FILE}
    found = {
        str(path.relative_to(ROOT)): len(LITERAL_PREFIX.findall(path.read_text()))
        for directory in SOURCE_DIRS
        for path in sorted((ROOT / directory).rglob("*.py"))
        if path not in allowed and LITERAL_PREFIX.search(path.read_text())
    }
    assert found == {}, f"build Redis keys with service.contract.keys: {found}"
