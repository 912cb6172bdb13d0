"""POST/GET/DELETE /v1/jobs: spec checks, queueing, listing, cancel/purge, results and artifacts."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.contract import jobstate, keys, records
from service.contract.storage import DataDir
from tests.factories import app_client, assert_names, blobs, npz_bytes, safetensors_bytes, submit, upload


def test_create_queues_a_record_and_an_rq_job_by_dotted_name_with_json(client, redis_conn, settings):
    response = submit(client)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"]["stage"] == "queued"
    assert job["spec"]["similarity"] == {
        "kind": "kernelized",
        "step": 0.0,
        "schedule": "fixed",
        "symmetrize": True,
        "normalize": False,
        "repeats": 1,
    }
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert records.get_job(redis_conn, job["id"]).status == "queued"
    assert Queue(settings.queue, connection=redis_conn).job_ids == [job["id"]]
    rq_job = Job.fetch(job["id"], connection=redis_conn, serializer=JSONSerializer)
    assert rq_job.func_name == "workers.tasks.run_job" and rq_job.args == [job["id"]]
    raw = redis_conn.hget(f"rq:job:{job['id']}", "data")
    assert json.loads(zlib.decompress(raw))[0] == "workers.tasks.run_job", "payload must be JSON, not pickle"


@pytest.mark.parametrize(
    ("changes", "loc", "fragments"),
    [
        ({"primary": {"labels": [3, 42]}}, ["body", "primary", "labels"], ["[42]", "allowed", "[0, 1, 2"]),
        ({"primary": {"indices": [0, 5000]}}, ["body", "primary", "indices"], ["5000", "0 to 1796"]),
        (
            {"weights": {"source": "trained"}, "auxiliary": {"labels": [5, 8]}},
            ["body", "auxiliary", "labels"],
            ["[5]", "overlap"],
        ),
        (
            {
                "primary": {"indices": [0, 1, 2]},
                "auxiliary": {"indices": [2, 3]},
                "weights": {"source": "trained"},
            },
            ["body", "auxiliary"],
            ["[2]", "overlap"],
        ),
        (
            {"primary": {"indices": [0, 1, 2]}, "clustering": {"k": 5}},
            ["body", "primary"],
            ["3 examples", "k = 5"],
        ),
        ({"auxiliary": {"labels": [8]}}, ["body", "auxiliary"], ["'init'", "trained"]),
        ({"dataset": "0123abcd"}, ["body", "dataset"], ["0123abcd", "builtin"]),
        (
            {"dataset": {"builtin": "torus"}, "model": {"arch": "cnn"}, "primary": None},
            ["body", "model", "arch"],
            ["image-shaped", "[3]"],
        ),
        ({"colour": "red"}, ["body", "colour"], ["colour", "unknown field", "allowed"]),
        ({"clustering": {"k": 1}}, ["body", "clustering", "k"], ["greater than or equal to 2"]),
    ],
    ids=[
        "unknown-label",
        "index-range",
        "label-overlap",
        "index-overlap",
        "too-few-for-k",
        "unused-auxiliary",
        "unknown-dataset",
        "cnn-shape",
        "extra-field",
        "k-bound",
    ],
)
def test_bad_specs_are_422_naming_the_field(client, redis_conn, changes, loc, fragments):
    detail = assert_names(submit(client, **changes), 422, *fragments)
    assert loc in [entry["loc"] for entry in detail], detail
    assert redis_conn.zcard(keys.jobs_index("default")) == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_learning_rate_is_422_not_500(client, literal):
    body = f'{{"dataset": {{"builtin": "digits"}}, "weights": {{"source": "trained", "lr": {literal}}}}}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    detail = assert_names(response, 422, "lr", literal.lower().replace("infinity", "inf"))
    assert ["body", "weights", "lr"] in [entry["loc"] for entry in detail]


def test_labels_need_a_labelled_dataset(client):
    dataset = upload(client, "x.npz", npz_bytes(X=blobs()[0])).json()
    detail = assert_names(submit(client, dataset=dataset["id"], primary={"labels": [0]}), 422, "no labels")
    assert detail[0]["loc"] == ["body", "primary", "labels"]


def test_uploaded_weights_must_match_the_model_and_every_mismatch_is_listed(client):
    wrong = safetensors_bytes(
        {"layers.0.weight": ("F32", [8, 63]), "layers.0.bias": ("F32", [8]), "extra": ("F32", [1])}
    )
    weights = upload(client, "w.safetensors", wrong).json()
    detail = assert_names(submit(client, weights={"source": "upload", "weights": weights["id"]}), 422)
    named = {entry["loc"][-1]: entry["msg"] for entry in detail}
    assert set(named) == {"layers.0.weight", "layers.1.weight", "layers.1.bias", "extra"}
    assert "[8, 63]" in named["layers.0.weight"] and "[8, 64]" in named["layers.0.weight"]
    right = safetensors_bytes(
        {
            "layers.0.weight": ("F32", [8, 64]),
            "layers.0.bias": ("F32", [8]),
            "layers.1.weight": ("F32", [1, 8]),
            "layers.1.bias": ("F32", [1]),
        }
    )
    weights = upload(client, "w.safetensors", right).json()
    assert submit(client, weights={"source": "upload", "weights": weights["id"]}).status_code == 202
    dataset = upload(client, "d.npz", npz_bytes(X=blobs()[0])).json()
    assert_names(submit(client, weights={"source": "upload", "weights": dataset["id"]}), 422, "not weights")


def test_get_job_and_404(client):
    job = submit(client).json()
    assert client.get(f"/v1/jobs/{job['id']}").json() == job
    assert_names(client.get("/v1/jobs/nope"), 404, "job_id", "nope")


def test_list_filters_by_status_and_pages_with_a_cursor(client):
    ids = [submit(client).json()["id"] for _ in range(7)]
    for job_id in ids[1:3]:
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    seen, cursor, pages = [], None, 0
    while True:
        page = client.get("/v1/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["data"]]
        assert page["count"] == len(page["data"]) <= 3
        pages, cursor = pages + 1, page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    canceled = client.get("/v1/jobs", params={"status": "canceled"}).json()
    assert [job["id"] for job in canceled["data"]] == ids[2:0:-1]
    assert_names(client.get("/v1/jobs", params={"status": "done"}), 422, "status", "done", "queued")
    assert_names(client.get("/v1/jobs", params={"cursor": "abc"}), 422, "cursor", "abc")
    assert_names(client.get("/v1/jobs", params={"limit": 0}), 422, "limit")


def test_cancel_a_queued_job_then_a_worker_runs_nothing(client, redis_conn, settings):
    job = submit(client).json()
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert response.json()["finished_at"] is not None
    rq_job = Job.fetch(job["id"], connection=redis_conn, serializer=JSONSerializer)
    assert rq_job.get_status() == JobStatus.CANCELED
    worker = Worker([settings.queue], connection=redis_conn, serializer=JSONSerializer)
    assert worker.work(burst=True) is False
    assert records.get_job(redis_conn, job["id"]).status == "canceled"
    detail = assert_names(client.delete(f"/v1/jobs/{job['id']}"), 409, "already canceled", "?purge=true")
    assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "canceled" and detail


def test_purge_only_final_jobs(client, redis_conn):
    job = submit(client).json()
    assert_names(client.delete(f"/v1/jobs/{job['id']}", params={"purge": True}), 409, "queued", "cancel")
    client.delete(f"/v1/jobs/{job['id']}")
    assert client.delete(f"/v1/jobs/{job['id']}", params={"purge": True}).status_code == 204
    assert_names(client.get(f"/v1/jobs/{job['id']}"), 404, "job_id")
    assert Job.exists(job["id"], connection=redis_conn) is False


def test_result_is_409_with_the_status_before_success(client):
    job = submit(client).json()
    response = client.get(f"/v1/jobs/{job['id']}/result")
    assert_names(response, 409, "queued", "succeeded")
    assert response.json()["status"] == "queued"


def finish_job(redis_conn, settings, job_id: str, matrix: np.ndarray) -> None:
    """Play the worker: write artifacts, then record success with a result."""
    jobstate.mark_running(redis_conn, job_id)
    job_dir = DataDir(settings.data_dir).job_dir(job_id)
    job_dir.mkdir(parents=True)
    np.save(job_dir / "similarity.npy", matrix)
    result = {
        "n": len(matrix),
        "clusters": [0, 1, 1],
        "metrics": {"ari": 1.0},
        "baselines": {},
        "timings": {
            "train_seconds": 0,
            "similarity_seconds": 0.1,
            "clustering_seconds": 0.1,
            "total_seconds": 0.2,
        },
        "device": "cpu",
        "artifacts": ["similarity.npy", "result.json"],
        "spec": {},
        "versions": {"torch": "x"},
    }
    (job_dir / "result.json").write_text(json.dumps(result))
    jobstate.mark_succeeded(redis_conn, job_id, result)


def test_result_has_artifact_urls_and_the_inline_matrix(client, redis_conn, settings):
    job = submit(client).json()
    matrix = np.arange(9, dtype=np.float32).reshape(3, 3)
    finish_job(redis_conn, settings, job["id"], matrix)
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["similarity"] is None and result["similarity_inline"] is False
    assert "include=similarity" in result["similarity_omitted"]
    result = client.get(f"/v1/jobs/{job['id']}/result?include=similarity").json()
    base = f"/v1/jobs/{job['id']}/artifacts"
    assert result["artifacts"] == {
        "similarity.npy": f"{base}/similarity.npy",
        "result.json": f"{base}/result.json",
    }
    assert result["similarity"] == matrix.tolist() and result["similarity_inline"] is True
    assert result["timings"]["total_seconds"] == 0.2 and result["metrics"] == {"ari": 1.0}
    download = client.get(result["artifacts"]["similarity.npy"])
    assert download.status_code == 200 and download.content == (
        DataDir(settings.data_dir).artifact(job["id"], "similarity.npy").read_bytes()
    )
    part = client.get(result["artifacts"]["similarity.npy"], headers={"Range": "bytes=0-5"})
    assert part.status_code == 206 and part.content == b"\x93NUMPY"
    assert client.get(f"{base}/result.json").headers["content-type"].startswith("application/json")
    with app_client(settings, inline_matrix_max_n=2) as small:
        result = small.get(f"/v1/jobs/{job['id']}/result", params={"include": "similarity"}).json()
        assert result["similarity"] is None and result["similarity_inline"] is False
        assert "LELASTIC_INLINE_MATRIX_MAX_N" in result["similarity_omitted"]


@pytest.mark.parametrize("name", ["secrets.txt", "..%2F..%2F..%2Fetc%2Fpasswd", "..%2Fresult.json", "heatmap.png"])
def test_artifacts_outside_the_list_or_not_written_are_404(client, redis_conn, settings, name):
    job = submit(client).json()
    finish_job(redis_conn, settings, job["id"], np.eye(3))
    (settings.data_dir / "jobs" / "secrets.txt").write_text("no")
    response = client.get(f"/v1/jobs/{job['id']}/artifacts/{name}")
    assert response.status_code == 404, response.text
    assert "no" != response.text
    assert client.get("/v1/jobs/..%2F..%2Fdatasets/artifacts/result.json").status_code == 404


def test_unknown_routes_are_404_json(client):
    response = client.get("/v2/nothing")
    assert response.status_code == 404 and response.json()["detail"][0]["input"] == "/v2/nothing"
