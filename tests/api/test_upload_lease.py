"""A tenant may have `max_uploads_per_tenant` uploads in progress at once (a lease in Redis, held from the
first byte of the body to the answer, given back however the upload ends; 429 naming the setting beyond).
Real Valkey; a real uvicorn where an upload must be in progress while another arrives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np

from service.api import auth, limits
from service.contract import keys, records
from tests.factories import app_client, assert_names, live_api, npz_bytes, upload

DATA = npz_bytes(X=np.ones((64, 8), dtype=np.float32))


def leases(redis_conn, tenant: str) -> list[str]:
    return [records.text(token) for token in redis_conn.zrange(keys.uploads_in_progress(tenant), 0, -1)]


def test_uploads_beyond_the_limit_get_429_naming_it_and_other_tenants_are_not_held(settings, redis_conn, tmp_path):
    keys_file = tmp_path / "keys"
    alice = {"X-API-Key": auth.create_key(keys_file, "alice")}
    bob = {"X-API-Key": auth.create_key(keys_file, "bob")}
    app_settings = settings.model_copy(update={"api_keys_file": keys_file, "max_uploads_per_tenant": 2})
    with app_client(app_settings) as client:
        held = [limits.open_upload(redis_conn, app_settings, "alice") for _ in range(2)]
        response = upload(client, "a.npz", DATA, headers=alice)
        detail = assert_names(
            response,
            429,
            "uploads in progress = 2 reached max_uploads_per_tenant = 2",
            "LELASTIC_MAX_UPLOADS_PER_TENANT",
        )
        assert detail[0]["ctx"] == {
            "limit": "max_uploads_per_tenant",
            "allowed": 2,
            "env": "LELASTIC_MAX_UPLOADS_PER_TENANT",
        }
        assert int(response.headers["Retry-After"]) > 0
        assert upload(client, "b.npz", DATA, headers=bob).status_code == 201  # alice's leases are hers
        limits.close_upload(redis_conn, "alice", held[0])
        assert upload(client, "a.npz", DATA, headers=alice).status_code == 201
        assert leases(redis_conn, "alice") == [held[1]]  # the upload gave its own lease back
        assert leases(redis_conn, "bob") == []


def test_the_lease_is_given_back_after_success_refusal_and_failure(settings, redis_conn):
    tenant = records.DEFAULT_TENANT
    with app_client(settings, max_uploads_per_tenant=1, max_upload_bytes=4096) as client:
        for filename, content, status in [
            ("ok.npz", DATA, 201),
            ("bad.npz", b"not a zip file at all", 422),
            ("big.npz", b"\x00" * 8192, 413),
            ("notes.txt", b"x", 422),
        ]:
            response = upload(client, filename, content)
            assert response.status_code == status, response.text
            assert leases(redis_conn, tenant) == [], filename
        # with one slot, three uploads in turn all got it: each gave it back
        assert upload(client, "again.npz", DATA).status_code == 201


def test_a_lapsed_lease_does_not_count(settings, redis_conn):
    tenant = records.DEFAULT_TENANT
    redis_conn.zadd(keys.uploads_in_progress(tenant), {"from-a-dead-process": time.time() - 1})
    with app_client(settings, max_uploads_per_tenant=1) as client:
        assert upload(client, "d.npz", DATA).status_code == 201
    assert leases(redis_conn, tenant) == []


def test_an_upload_holds_its_lease_while_its_body_arrives(settings, redis_conn):
    """With one slot: an upload whose body is still arriving makes a second one 429; once it ends, the next
    upload goes through."""
    tenant = records.DEFAULT_TENANT
    boundary = "lease-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    halfway = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield head + DATA[:100]
        halfway.set()
        time.sleep(1.5)
        yield DATA[100:] + tail

    app_settings = settings.model_copy(update={"max_uploads_per_tenant": 1})
    with live_api(app_settings, log_level="warning") as port:
        base = f"http://127.0.0.1:{port}"
        result: dict[str, int] = {}

        def send_slowly() -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
                result["slow"] = http.post("/v1/datasets", content=slow_body(), headers=headers).status_code

        sender = threading.Thread(target=send_slowly)
        sender.start()
        assert halfway.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not leases(redis_conn, tenant):
            assert time.monotonic() < deadline, "the slow upload took no lease"
            time.sleep(0.02)
        with httpx.Client(base_url=base, timeout=30) as http:
            assert_names(upload(http, "second.npz", DATA), 429, "max_uploads_per_tenant = 1")
            sender.join(timeout=30)
            assert result == {"slow": 201}
            assert upload(http, "third.npz", DATA).status_code == 201
    assert leases(redis_conn, tenant) == []
