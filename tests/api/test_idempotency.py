"""Idempotency-Key on POST /v1/jobs and POST /v1/datasets: replay, mismatch, scope, concurrency."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from rq import Queue

from service.api import auth, idempotency
from service.contract import keys, records
from tests.factories import DIGITS_3_5, app_client, assert_names, blobs, npz_bytes, upload

KEY = "2f1c3c2e-6a44-4a38-9d36-0d1a7e0c1b5a"


def post_job(client, spec=None, key=KEY, **headers):
    return client.post("/v1/jobs", json=spec or DIGITS_3_5, headers={"Idempotency-Key": key, **headers})


def post_dataset(client, content: bytes, key=KEY, filename="x.npz", **form):
    return upload(client, filename, content, headers={"Idempotency-Key": key}, **form)


def data(seed: int = 0) -> bytes:
    X, y = blobs()
    return npz_bytes(X=X + seed, y=y)


# ---------------------------------------------------------------------------------------- header


@pytest.mark.parametrize("value", ["", "k" * 256, "tab\there", b"caf\xc3\xa9"])
def test_malformed_key_is_422_naming_the_header(client, value):
    response = client.post("/v1/jobs", json=DIGITS_3_5, headers={"Idempotency-Key": value})
    detail = assert_names(response, 422, "1 to 255 printable ASCII characters")
    assert detail[0]["loc"] == ["header", "Idempotency-Key"]
    response = client.post("/v1/datasets", files={"file": ("x.npz", data())}, headers={"Idempotency-Key": value})
    assert_names(response, 422, "Idempotency-Key")
    assert client.get("/v1/jobs").json()["count"] == 0 and client.get("/v1/datasets").json()["count"] == 0


def test_key_of_255_printable_characters_is_accepted(client):
    assert post_job(client, key="~ !" + "k" * 252).status_code == 202


# ------------------------------------------------------------------------------------------ jobs


def test_retried_job_returns_the_original_job_and_queues_one(client, redis_conn, settings):
    first = post_job(client)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = post_job(client)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert client.get("/v1/jobs").json()["count"] == 1
    assert len(Queue(settings.queue, connection=redis_conn).job_ids) == 1
    assert post_job(client, key="another key").json()["id"] != first.json()["id"]


def test_replay_shows_the_job_as_it_is_now_and_the_original_once_purged(client):
    job = post_job(client).json()
    client.delete(f"/v1/jobs/{job['id']}")
    replay = post_job(client)
    assert replay.status_code == 202 and replay.json()["status"] == "canceled"
    assert client.delete(f"/v1/jobs/{job['id']}", params={"purge": True}).status_code == 204
    replay = post_job(client)
    assert replay.status_code == 202 and replay.json() == job


def test_same_key_with_a_different_body_is_422_naming_the_header(client):
    assert post_job(client).status_code == 202
    other = {**DIGITS_3_5, "seed": 1}
    detail = assert_names(post_job(client, other), 422, "different request body")
    assert detail[0]["loc"] == ["header", "Idempotency-Key"] and detail[0]["input"] == KEY
    assert client.get("/v1/jobs").json()["count"] == 1


def test_a_refused_request_does_not_use_up_the_key(client):
    bad = {**DIGITS_3_5, "primary": {"labels": [3, 42]}}
    assert post_job(client, bad).status_code == 422
    assert post_job(client).status_code == 202
    assert "idempotent-replayed" not in post_job(client, bad).headers  # now a mismatch, not a replay
    assert post_job(client, bad).status_code == 422


def test_keys_are_scoped_by_route_and_tenant(settings, tmp_path, redis_conn):
    keys_file = tmp_path / "keys"
    alice, bob = auth.create_key(keys_file, "alice"), auth.create_key(keys_file, "bob")
    with app_client(settings, api_keys_file=keys_file) as client:
        a = post_job(client, **{"X-API-Key": alice})
        b = post_job(client, **{"X-API-Key": bob})
        assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]
        assert "idempotent-replayed" not in b.headers
        upload = client.post(
            "/v1/datasets",
            files={"file": ("x.npz", data())},
            headers={"Idempotency-Key": KEY, "X-API-Key": alice},
        )
        assert upload.status_code == 201, upload.text


def test_concurrent_duplicates_create_exactly_one_job(client, redis_conn, settings):
    start = threading.Barrier(8)

    def send(_):
        start.wait()
        return post_job(client)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert client.get("/v1/jobs").json()["count"] == 1
    assert len(Queue(settings.queue, connection=redis_conn).job_ids) == 1


def test_a_duplicate_waits_for_the_request_in_progress(client, redis_conn):
    fingerprint = idempotency.hashlib.sha256(json.dumps(DIGITS_3_5).encode()).hexdigest()
    claim = idempotency.begin(redis_conn, tenant=records.DEFAULT_TENANT, route="jobs", key=KEY, fingerprint=fingerprint)
    assert isinstance(claim, idempotency.Claim)
    body = {"id": "0" * 32, "status": "queued"}
    finisher = threading.Timer(0.5, lambda: claim.complete(202, "0" * 32, "/v1/jobs/" + "0" * 32, body))
    finisher.start()
    began = time.monotonic()
    response = client.post(
        "/v1/jobs",
        content=json.dumps(DIGITS_3_5),
        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"},
    )
    assert time.monotonic() - began >= 0.4
    assert response.status_code == 202 and response.json() == body  # purged since: the stored body


def test_a_duplicate_of_a_request_still_in_progress_gets_409(client, redis_conn, monkeypatch):
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.3)
    fingerprint = idempotency.hashlib.sha256(json.dumps(DIGITS_3_5).encode()).hexdigest()
    idempotency.begin(redis_conn, tenant=records.DEFAULT_TENANT, route="jobs", key=KEY, fingerprint=fingerprint)
    response = client.post(
        "/v1/jobs",
        content=json.dumps(DIGITS_3_5),
        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"},
    )
    detail = assert_names(response, 409, "still in progress")
    assert detail[0]["loc"] == ["header", "Idempotency-Key"] and response.headers["retry-after"] == "1"
    assert client.get("/v1/jobs").json()["count"] == 0
    ttl = redis_conn.ttl(keys.idempotency(records.DEFAULT_TENANT, "jobs", KEY))
    assert 0 < ttl <= idempotency.IN_PROGRESS_TTL


def test_stored_responses_expire_after_a_day(client, redis_conn):
    post_job(client)
    ttl = redis_conn.ttl(keys.idempotency(records.DEFAULT_TENANT, "jobs", KEY))
    assert idempotency.STORE_TTL - 5 <= ttl <= idempotency.STORE_TTL == 24 * 3600


# -------------------------------------------------------------------------------------- datasets


def test_retried_upload_returns_the_original_dataset(client, settings):
    first = post_dataset(client, data())
    assert first.status_code == 201, first.text
    again = post_dataset(client, data())
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert client.get("/v1/datasets").json()["count"] == 1
    assert not list(settings.data_dir.glob(".upload-*")), "the retry's temp file is removed"


def test_upload_with_another_file_name_or_field_is_a_different_request(client):
    csv = b"a,b,label\n1,2,0\n3,4,1\n5,6,0\n"
    assert post_dataset(client, csv, filename="x.csv", label_column="label").status_code == 201
    for changed in (
        post_dataset(client, csv, filename="x.csv", label_column="a"),
        post_dataset(client, csv, filename="y.csv", label_column="label"),
        post_dataset(client, csv + b"7,8,1\n", filename="x.csv", label_column="label"),
    ):
        assert_names(changed, 422, "different request body")
    assert client.get("/v1/datasets").json()["count"] == 1


def test_concurrent_duplicate_uploads_create_exactly_one_dataset(settings):
    start = threading.Barrier(6)
    content = npz_bytes(X=np.random.default_rng(0).normal(size=(2000, 20)))

    with app_client(settings, max_uploads_per_tenant=6) as client:  # a duplicate is an upload in progress too

        def send(_):
            start.wait()
            return post_dataset(client, content)

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(send, range(6)))
        assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert client.get("/v1/datasets").json()["count"] == 1


def test_begin_scopes_keys_by_tenant_and_route(redis_conn):
    claims = [
        idempotency.begin(redis_conn, tenant=tenant, route=route, key=KEY, fingerprint=fp)
        for tenant, route, fp in (("alice", "jobs", "1"), ("bob", "jobs", "2"), ("alice", "datasets", "3"))
    ]
    assert all(isinstance(c, idempotency.Claim) for c in claims)
    claims[0].release()
    assert isinstance(
        idempotency.begin(redis_conn, tenant="alice", route="jobs", key=KEY, fingerprint="4"),
        idempotency.Claim,
    )
