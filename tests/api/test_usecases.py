"""The use cases behind the routes, called directly: behaviour the HTTP tests cannot reach easily."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import redis

from service.api import idempotency
from service.api.errors import Conflict, json_safe, replace_non_finite
from service.api.retention import active_jobs_by_upload
from service.api.schemas import JobOut
from service.api.usecases import datasets, results, submit
from service.contract import jobstate, records
from service.contract.spec import JobSpec
from service.contract.storage import DataDir
from tests.factories import DIGITS_3_5


def job_naming(conn: redis.Redis, upload_id: str, *, as_weights: bool = False, tenant: str = "default") -> str:
    """A queued job record whose spec names `upload_id` as its dataset, or as its uploaded weights."""
    spec: dict[str, Any] = {"dataset": {"builtin": "digits"}, "weights": {"source": "upload", "weights": upload_id}}
    if not as_weights:
        spec = {"dataset": upload_id, "weights": {"source": "init"}}
    return records.create_job(conn, spec=spec, tenant=tenant).id


def test_non_finite_numbers_become_null_in_a_result_and_strings_in_an_error_body():
    value = {"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "text"}
    assert replace_non_finite(value, lambda _: None) == {"a": [1.0, None], "b": {"c": None}, "d": "text"}
    assert json_safe(value) == {"a": [1.0, "nan"], "b": {"c": "inf"}, "d": "text"}


def test_a_result_with_nan_metrics_and_matrix_entries_is_json_with_nulls(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    job = submit.submit_job(redis_conn, data_dir, settings, JobSpec.model_validate(DIGITS_3_5), "default")
    assert isinstance(job, JobOut)
    job_dir = data_dir.job_dir(job.id)
    job_dir.mkdir(parents=True)
    np.save(job_dir / "similarity.npy", np.array([[1.0, np.nan], [np.inf, 1.0]], dtype=np.float32))
    jobstate.mark_running(redis_conn, job.id)
    result = {"n": 2, "metrics": {"ari": float("nan")}, "artifacts": ["similarity.npy", "unknown.bin"]}
    jobstate.mark_succeeded(redis_conn, job.id, result)
    body = json.loads(
        "".join(results.read_result(redis_conn, data_dir, settings, job.id, "default", include_similarity=True))
    )
    assert body["metrics"] == {"ari": None}
    assert body["similarity"] == [[1.0, None], [None, 1.0]] and body["similarity_inline"] is True
    assert body["artifacts"] == {"similarity.npy": f"/v1/jobs/{job.id}/artifacts/similarity.npy"}


def test_active_jobs_by_upload_maps_datasets_and_weights_to_their_queued_or_running_jobs(redis_conn):
    by_dataset = job_naming(redis_conn, "upload-a")
    by_weights = job_naming(redis_conn, "upload-a", as_weights=True)
    other_tenant = job_naming(redis_conn, "upload-b", tenant="other")
    finished = job_naming(redis_conn, "upload-c")
    jobstate.mark_canceled(redis_conn, finished)
    assert active_jobs_by_upload(redis_conn, "default") == {"upload-a": [by_dataset, by_weights]}
    assert active_jobs_by_upload(redis_conn) == {
        "upload-a": sorted([by_dataset, by_weights]),
        "upload-b": [other_tenant],
    }


def test_deleting_uploaded_weights_is_refused_while_a_job_measures_at_them(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    weights = records.create_dataset(redis_conn, kind="weights", name="w.safetensors", meta={"tensors": {}})
    job_id = job_naming(redis_conn, weights["id"], as_weights=True)
    with pytest.raises(Conflict) as refused:
        datasets.delete_dataset(redis_conn, data_dir, weights["id"], "default")
    assert refused.value.extra == {"jobs": [job_id]}
    jobstate.mark_canceled(redis_conn, job_id)
    datasets.delete_dataset(redis_conn, data_dir, weights["id"], "default")
    assert records.get_dataset(redis_conn, weights["id"]) is None


def test_a_running_job_whose_worker_is_gone_does_not_hold_its_dataset(redis_conn, settings):
    dataset = records.create_dataset(redis_conn, kind="dataset", name="d.npz", meta={"n": 4})
    job_id = job_naming(redis_conn, dataset["id"])
    jobstate.mark_running(redis_conn, job_id)  # and no RQ job: its worker was lost
    datasets.delete_dataset(redis_conn, DataDir(settings.data_dir), dataset["id"], "default")
    job = records.get_job(redis_conn, job_id)
    assert job is not None and job.status == "failed" and "worker lost" in (job.error or "")


class Made:
    def __init__(self, resource_id: str) -> None:
        self.id = resource_id

    def model_dump(self, *, mode: str) -> dict[str, Any]:
        return {"id": self.id}


def test_create_once_releases_its_key_when_creation_fails_and_replays_after_success(redis_conn):
    calls: list[str] = []

    def create(outcome: str) -> Made:
        calls.append(outcome)
        if outcome == "fails":
            raise RuntimeError("creation failed")
        return Made("r1")

    def once(outcome: str) -> Made | idempotency.Stored:
        return idempotency.create_once(
            redis_conn,
            tenant="default",
            route="jobs",
            key="key-1",
            fingerprint="body-1",
            status_code=202,
            create=lambda: create(outcome),
            location=lambda resource_id: f"/v1/jobs/{resource_id}",
            current=lambda resource_id: {"id": resource_id, "now": True},
        )

    with pytest.raises(RuntimeError):
        once("fails")
    made = once("succeeds")
    assert isinstance(made, Made) and made.id == "r1"
    replay = once("succeeds")
    assert isinstance(replay, idempotency.Stored) and calls == ["fails", "succeeds"]
    assert (replay.status_code, replay.location, replay.body) == (202, "/v1/jobs/r1", {"id": "r1", "now": True})


def test_a_job_that_cannot_be_queued_ends_failed_with_the_reason(redis_conn, settings, monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("queue unreachable")

    monkeypatch.setattr(submit.queue, "enqueue", refuse)
    data_dir = DataDir(settings.data_dir)
    with pytest.raises(redis.ConnectionError):
        submit.submit_job(redis_conn, data_dir, settings, JobSpec.model_validate(DIGITS_3_5), "default")
    (job,), _ = records.list_jobs(redis_conn, tenant="default")
    assert job.status == "failed" and job.error == "could not be queued: queue unreachable"
