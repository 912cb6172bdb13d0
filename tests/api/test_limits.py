"""Limits: upload size (413), dataset and job sizes (422), active jobs and request rate (429).

Every refusal names the limit, its LELASTIC_* setting, the bad value and the allowed one.
"""

from __future__ import annotations

import numpy as np
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from service.api import limits
from service.contract import jobstate, keys, records
from tests.factories import DIGITS_3_5, app_client, assert_names, csv_bytes, npy_bytes, npz_bytes, submit, upload

# ------------------------------------------------------------------------------------- uploads


def test_oversize_upload_names_max_upload_bytes_and_its_setting(settings):
    with app_client(settings, max_upload_bytes=4096) as client:
        response = upload(client, "big.npy", npy_bytes(np.zeros((600, 1))))
        detail = assert_names(response, 413, "max_upload_bytes = 4096", "LELASTIC_MAX_UPLOAD_BYTES")
        assert detail[0]["loc"] == ["body", "file"]
        assert detail[0]["ctx"] == {
            "limit": "max_upload_bytes",
            "allowed": 4096,
            "env": "LELASTIC_MAX_UPLOAD_BYTES",
        }


def test_declared_content_length_far_over_the_limit_is_refused_before_reading(settings):
    with app_client(settings, max_upload_bytes=4096) as client:
        body = npy_bytes(np.zeros((20_000, 1)))  # 160 kB > 4096 + 64 KiB of slack
        response = upload(client, "big.npy", body)
        assert_names(response, 413, "max_upload_bytes = 4096")
        assert not list((settings.data_dir).glob(".upload-*"))


def test_upload_with_too_many_examples_is_422_naming_max_dataset_examples(settings):
    with app_client(settings, max_dataset_examples=10, max_examples=5) as client:
        response = upload(client, "x.npz", npz_bytes(X=np.zeros((11, 2), dtype=np.float32)))
        detail = assert_names(response, 422, "n = 11 exceeds max_dataset_examples = 10 (LELASTIC_MAX_DATASET_EXAMPLES)")
        assert detail[0]["loc"] == ["body", "file", "X"] and detail[0]["input"] == 11
        assert client.get("/v1/datasets").json()["count"] == 0
        # Above max_examples a dataset is still stored: a sharded job may use every row of it.
        assert upload(client, "x.npz", npz_bytes(X=np.zeros((10, 2)))).status_code == 201


def test_upload_with_too_many_features_is_422_naming_max_features(settings):
    with app_client(settings, max_features=10) as client:
        response = upload(client, "x.npy", npy_bytes(np.zeros((4, 3, 4))))
        assert_names(response, 422, "features per example = 12 exceeds max_features = 10 (LELASTIC_MAX_FEATURES)")
        response = upload(client, "x.csv", csv_bytes([[1, 2, 3]] * 4, header=["a", "b", "c"]))
        assert response.status_code == 201, response.text


def test_upload_with_more_distinct_labels_than_a_selection_can_name_is_422(client):
    many = limits.MAX_CLASSES + 1
    response = upload(client, "x.npz", npz_bytes(X=np.zeros((many, 1)), y=np.arange(many)))
    assert_names(response, 422, '"y"', f"{many} distinct labels", f"at most {limits.MAX_CLASSES}", "indices")
    response = upload(client, "x.csv", csv_bytes([[0, f"c{i}"] for i in range(many)], header=["a", "label"]))
    assert_names(response, 422, f"{many} distinct labels")
    assert client.get("/v1/datasets").json()["count"] == 0
    response = upload(client, "x.npz", npz_bytes(X=np.zeros((many, 1)), y=np.arange(many) % limits.MAX_CLASSES))
    assert response.status_code == 201, response.text
    assert len(response.json()["classes"]) == limits.MAX_CLASSES


# ------------------------------------------------------------------------------------------ jobs


@pytest.mark.parametrize(
    ("limit", "changes", "loc", "message"),
    [
        (
            {"max_examples": 500},
            {"dataset": {"builtin": "two_cosines", "n": 1000}, "primary": None},
            ["body", "primary"],
            "n = 1000 exceeds max_examples = 500 (LELASTIC_MAX_EXAMPLES)",
        ),
        (
            {"max_parameters": 10_000},
            {"model": {"arch": "mlp", "width": 1000}},
            ["body", "model"],
            "= 66001 exceeds max_parameters = 10000 (LELASTIC_MAX_PARAMETERS)",
        ),
        (
            {"max_epochs": 10},
            {"weights": {"source": "trained", "epochs": 50}},
            ["body", "weights", "epochs"],
            "epochs = 50 exceeds max_epochs = 10 (LELASTIC_MAX_EPOCHS)",
        ),
        (
            {"max_clusters": 3},
            {"clustering": {"k": 5}},
            ["body", "clustering", "k"],
            "k = 5 exceeds max_clusters = 3 (LELASTIC_MAX_CLUSTERS)",
        ),
        (
            {"max_matrix_bytes": 100_000},
            {"dataset": {"builtin": "two_cosines", "n": 200}, "primary": None},
            ["body", "primary"],
            "n = 200, = 160000 bytes exceeds max_matrix_bytes = 100000 bytes (LELASTIC_MAX_MATRIX_BYTES)",
        ),
    ],
)
def test_job_over_a_limit_is_422_naming_field_limit_and_setting(settings, limit, changes, loc, message):
    with app_client(settings, **limit) as client:
        response = submit(client, **changes)
        detail = assert_names(response, 422, message)
        assert [d["loc"] for d in detail] == [loc]
        assert detail[0]["ctx"]["limit"] == next(iter(limit))


def test_job_limits_count_the_primary_selection_not_the_dataset(settings):
    # digits has 1797 examples; classes 3 and 5 select 183 + 182 of them.
    with app_client(settings, max_examples=1000) as client:
        assert submit(client).status_code == 202
        assert_names(submit(client, primary=None), 422, "n = 1797 exceeds max_examples = 1000")


# ----------------------------------------------------------------------------------- active jobs


def test_active_jobs_limit_is_429_with_retry_after_until_one_ends(settings, redis_conn):
    with app_client(settings, max_active_jobs=2) as client:
        ids = [submit(client).json()["id"] for _ in range(2)]
        refused = submit(client)
        detail = assert_names(refused, 429, "active jobs = 2", "max_active_jobs = 2 (LELASTIC_MAX_ACTIVE_JOBS)")
        assert detail[0]["ctx"]["limit"] == "max_active_jobs"
        assert int(refused.headers["retry-after"]) >= 1
        assert client.get("/v1/jobs").json()["count"] == 2, "a refused job leaves no record"

        assert client.delete(f"/v1/jobs/{ids[0]}").status_code == 200  # canceled: no longer active
        assert submit(client).status_code == 202
        assert submit(client).status_code == 429


def test_active_set_is_pruned_of_jobs_a_worker_finished_or_that_were_purged(settings, redis_conn):
    with app_client(settings, max_active_jobs=2) as client:
        first, second = (submit(client).json()["id"] for _ in range(2))
        # A worker ends a job without touching the active set.
        jobstate.mark_running(redis_conn, first)
        jobstate.mark_succeeded(redis_conn, first, {})
        assert submit(client).status_code == 202
        # A record that disappears (purged, expired) stops counting too.
        records.delete_job_record(redis_conn, second, records.DEFAULT_TENANT)
        assert submit(client).status_code == 202
        assert redis_conn.zcard(keys.active_jobs(records.DEFAULT_TENANT)) == 2


def test_a_running_job_whose_worker_vanished_is_reconciled_and_stops_counting(settings, redis_conn):
    with app_client(settings, max_active_jobs=1) as client:
        job_id = submit(client).json()["id"]
        jobstate.mark_running(redis_conn, job_id)
        assert submit(client).status_code == 429
        Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer).delete()  # RQ forgot it
        assert submit(client).status_code == 202
        assert records.get_job(redis_conn, job_id).status == "failed"


def test_active_jobs_are_counted_per_tenant(settings, redis_conn):
    limits.admit_job(redis_conn, settings.model_copy(update={"max_active_jobs": 1}), "alice", "a1")
    records.create_job(redis_conn, spec=DIGITS_3_5, tenant="alice", job_id="a1")
    with app_client(settings, max_active_jobs=1) as client:  # the open service's `default` tenant
        assert submit(client).status_code == 202


# ------------------------------------------------------------------------------------------ rate


def test_request_rate_is_429_with_retry_after_on_v1_only(settings):
    with app_client(settings, rate_limit_per_minute=3) as client:
        for _ in range(3):
            assert client.get("/v1/datasets").status_code == 200
        refused = client.get("/v1/jobs")
        detail = assert_names(
            refused,
            429,
            "requests this minute = 4",
            "rate_limit_per_minute = 3 (LELASTIC_RATE_LIMIT_PER_MINUTE)",
        )
        assert detail[0]["ctx"]["limit"] == "rate_limit_per_minute"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path
        assert client.get("/readyz").status_code in (200, 503)


def test_rate_windows_are_per_tenant_and_per_minute(redis_conn):
    t0 = 1_000_040.0  # 20 s into a window (they start at multiples of 60 s)
    limits.count_request(redis_conn, "alice", 1, now=t0)
    limits.count_request(redis_conn, "bob", 1, now=t0)
    with pytest.raises(limits.TooManyRequests) as refused:
        limits.count_request(redis_conn, "alice", 1, now=t0 + 1)
    assert refused.value.headers["Retry-After"] == "39"
    limits.count_request(redis_conn, "alice", 1, now=t0 + 40)  # the next window
    assert 0 < redis_conn.ttl(keys.rate("alice", int(t0 // 60))) <= 120
