"""Execution modes at submission: auto resolves by size, the record shows the mode, what cannot run
sharded is refused naming the field; rows of the matrix and one row's neighbours over HTTP."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.factories import app_client, assert_names, submit, tiny_spec


def test_auto_runs_single_up_to_the_threshold_and_sharded_above(settings):
    with app_client(settings, shard_above_n=40) as client:
        small = submit(client, tiny_spec(rows=40)).json()
        big = submit(client, tiny_spec(rows=41)).json()
        assert small["spec"]["execution"]["mode"] == "single" and small["spec"]["output"]["matrix"] is True
        assert big["spec"]["execution"] == {"mode": "sharded", "block": 4096}
        assert client.get(f"/v1/jobs/{big['id']}").json()["spec"]["execution"]["mode"] == "sharded"


def test_auto_keeps_a_job_that_cannot_shard_single(settings):
    spec = tiny_spec(rows=50, similarity={"kind": "kernelized", "step": 0.1, "schedule": "trajectory"})
    with app_client(settings, shard_above_n=10) as client:
        assert submit(client, spec).json()["spec"]["execution"]["mode"] == "single"


@pytest.mark.parametrize(
    ("similarity", "field", "fragment"),
    [
        ({"kind": "kernelized", "step": 0.1, "schedule": "trajectory"}, "schedule", "sequential"),
        ({"kind": "kernelized", "step": 0, "repeats": 3}, "repeats", "one model seed"),
    ],
)
def test_what_cannot_shard_is_refused_naming_the_field(client, similarity, field, fragment):
    spec = {**tiny_spec(similarity=similarity), "execution": {"mode": "sharded"}}
    detail = assert_names(submit(client, spec), 422, fragment, "execution.mode 'single'")
    assert any(entry["loc"] == ["body", "similarity", field] for entry in detail)


def test_observed_columns_refuse_what_tiles_cannot_compute(client):
    spec = {**tiny_spec(similarity={"kind": "kernelized", "step": 0.1, "schedule": "trajectory"})}
    spec.update(observed={"indices": [100, 101]}, execution={"mode": "single"})
    detail = assert_names(submit(client, spec), 422, "with observed columns", "drop 'observed'")
    assert detail[0]["loc"] == ["body", "similarity", "schedule"]


@pytest.mark.worker
def test_a_single_job_with_observed_columns_runs_its_tiles_in_one_worker(client, settings, run_worker_burst):
    spec = {**tiny_spec(rows=20, clustering={"k": 2}), "observed": {"indices": list(range(100, 112))}}
    job = submit(client, {**spec, "execution": {"mode": "single", "block": 8}}).json()
    assert job["spec"]["execution"]["mode"] == "single"
    assert run_worker_burst(settings).returncode == 0
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["execution"]["mode"] == "single" and result["execution"]["tiles"] == 3 * 2
    assert result["clustering"]["method"] is None and "observed" in result["clustering"]["skipped"]
    S = np.load(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/artifacts/similarity.npy").content))
    assert S.shape == (20, 12)
    got = client.get(f"/v1/jobs/{job['id']}/neighbors", params={"row": 4}).json()
    expected = sorted(range(12), key=lambda j: (-S[4, j], j))[:12]
    assert [n["column"] for n in got["neighbors"]] == expected  # k = 32 capped at the 12 columns
    assert [n["dataset_row"] for n in got["neighbors"]] == [100 + j for j in expected]


def test_observed_indices_out_of_range_are_refused(client):
    spec = {**tiny_spec(), "observed": {"indices": [5000]}, "execution": {"mode": "sharded"}}
    assert_names(submit(client, spec), 422, "indices [5000] are out of range", "0 to 1796")


def test_sharded_limits_name_their_settings(settings):
    spec = {**tiny_spec(rows=100), "execution": {"mode": "sharded", "block": 8}, "output": {"matrix": True}}
    with app_client(settings, max_tiles=10, max_sharded_matrix_bytes=1024, max_sharded_examples=99) as client:
        detail = assert_names(
            submit(client, spec), 422, "exceeds max_tiles = 10 (LELASTIC_MAX_TILES)", "max_sharded_matrix_bytes"
        )
        assert_names(submit(client, spec), 422, "n = 100 exceeds max_sharded_examples = 99")
    assert {tuple(e["loc"]) for e in detail} >= {("body", "execution", "block"), ("body", "output", "matrix")}


def test_a_sharded_job_above_the_single_limits_is_accepted(settings):
    spec = {**tiny_spec(rows=100), "execution": {"mode": "sharded"}}
    with app_client(settings, max_examples=50, max_matrix_bytes=1024) as client:
        response = submit(client, spec)
        assert response.status_code == 202, response.text
        assert response.json()["spec"]["output"]["matrix"] is True
        assert_names(submit(client, {**spec, "execution": {"mode": "single"}}), 422, "max_examples = 50")


@pytest.mark.worker
def test_rows_and_neighbors_of_a_single_job(client, settings, run_worker_burst):
    job_id = submit(client, tiny_spec(rows=30, output={"neighbors": 4})).json()["id"]
    assert_names(client.get(f"/v1/jobs/{job_id}/neighbors", params={"row": 0}), 409, "queued")
    assert run_worker_burst(settings).returncode == 0
    S = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/artifacts/similarity.npy").content))
    # The README's promise: a 128-byte header, so rows A..B-1 are one HTTP Range.
    ranged = client.get(
        f"/v1/jobs/{job_id}/artifacts/similarity.npy",
        headers={"Range": f"bytes={128 + 4 * 30 * 5}-{128 + 4 * 30 * 7 - 1}"},
    )
    assert ranged.status_code == 206
    assert np.array_equal(np.frombuffer(ranged.content, dtype="<f4").reshape(2, 30), S[5:7])
    rows = client.get(f"/v1/jobs/{job_id}/similarity", params={"rows": "3:9"})
    assert rows.status_code == 200 and np.array_equal(np.load(io.BytesIO(rows.content)), S[3:9])
    got = client.get(f"/v1/jobs/{job_id}/neighbors", params={"row": 2}).json()
    expected = sorted((j for j in range(30) if j != 2), key=lambda j: (-S[2, j], j))[:4]
    assert got["row"] == 2 and got["dataset_row"] == 2
    assert [n["column"] for n in got["neighbors"]] == expected
    assert [n["value"] for n in got["neighbors"]] == pytest.approx([float(S[2, j]) for j in expected])
    for bad in ("9:3", "0:31", "x", "1:"):
        assert_names(client.get(f"/v1/jobs/{job_id}/similarity", params={"rows": bad}), 422, "A:B")
    assert_names(client.get(f"/v1/jobs/{job_id}/neighbors", params={"row": 30}), 422, "from 0 to 29")
    with app_client(settings, max_slice_bytes=1024) as small:
        assert_names(small.get(f"/v1/jobs/{job_id}/similarity", params={"rows": "0:30"}), 422, "at most 8 rows")
