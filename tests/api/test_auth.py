"""API keys and tenant isolation: real keys file, real Valkey, HTTP through the app."""

from __future__ import annotations

import pytest

from service.api import auth
from tests.factories import app_client, blobs_npz


def test_keys_file_stores_only_hashes_and_maps_keys_to_tenants(tmp_path):
    keys_file = tmp_path / "keys"
    key = auth.create_key(keys_file, "team-a")
    text = keys_file.read_text()
    assert key not in text and auth.hash_key(key) in text
    assert (keys_file.stat().st_mode & 0o777) == 0o600
    entries = auth.load_keys(keys_file)
    assert auth.tenant_for(key, entries) == "team-a"
    assert auth.tenant_for(key + "x", entries) is None


def test_malformed_keys_file_names_the_line(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nteam-a not-a-hash\n")
    with pytest.raises(auth.KeyFileError, match=":2:"):
        auth.load_keys(keys_file)


def test_missing_or_unknown_key_is_401_and_open_endpoints_stay_open(keyed):
    client, alice, _, _ = keyed
    assert client.get("/v1/jobs").status_code == 401
    response = client.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "unknown API key" in response.json()["detail"][0]["msg"]
    assert client.get("/v1/jobs", headers={"X-API-Key": alice}).status_code == 200
    for path in ("/healthz", "/docs", "/openapi.json", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_another_tenant_gets_404_and_does_not_see_it_in_lists(keyed):
    client, alice, bob, _ = keyed
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"X-API-Key": bob}
    created = client.post("/v1/datasets", files={"file": ("d.npz", blobs_npz())}, headers=as_alice)
    assert created.status_code == 201
    dataset_id = created.json()["id"]
    assert client.get(f"/v1/datasets/{dataset_id}", headers=as_bob).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=as_bob).status_code == 404
    assert client.get("/v1/datasets", headers=as_bob).json()["count"] == 0
    spec = {"dataset": dataset_id, "model": {"arch": "mlp", "width": 8}, "weights": {"source": "init"}}
    assert client.post("/v1/jobs", json=spec, headers=as_bob).status_code == 422  # bob cannot use it
    job = client.post("/v1/jobs", json=spec, headers=as_alice)
    assert job.status_code == 202
    job_id = job.json()["id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/events"):
        assert client.get(path, headers=as_bob).status_code == 404, path
    assert client.delete(f"/v1/jobs/{job_id}", headers=as_bob).status_code == 404
    assert client.get("/v1/jobs", headers=as_bob).json()["data"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=as_alice).json()["data"]] == [job_id]


def test_a_key_added_while_running_is_accepted(keyed):
    client, _, _, keys_file = keyed
    carol = auth.create_key(keys_file, "carol")
    assert client.get("/v1/datasets", headers={"X-API-Key": carol}).status_code == 200


def test_a_keys_file_not_created_yet_refuses_everyone(settings, tmp_path, redis_conn):
    with app_client(settings, api_keys_file=tmp_path / "absent") as client:
        assert client.get("/v1/jobs", headers={"X-API-Key": "anything"}).status_code == 401
        assert client.get("/healthz").status_code == 200
