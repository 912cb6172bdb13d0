"""Request-validation errors: one clear entry per mistake, in the user's own path, with suggestions."""

from __future__ import annotations

import json

from tests.factories import DIGITS_3_5, assert_names


def errors(client, body, **kwargs):
    response = (
        client.post("/v1/jobs", json=body, **kwargs) if "content" not in kwargs else client.post("/v1/jobs", **kwargs)
    )
    assert response.status_code == 422, response.text
    return response.json()["detail"]


def test_a_builtin_typo_is_one_error_with_a_suggestion(client):
    [entry] = errors(client, {"dataset": {"builtin": "digit"}})
    assert entry["loc"] == ["body", "dataset", "builtin"]
    assert "did you mean 'digits'?" in entry["msg"] and "valid string" not in entry["msg"]
    assert entry["input"] == "digit" and entry["type"] == "literal_error"


def test_an_unknown_field_inside_a_model_is_located_where_the_user_wrote_it(client):
    [entry] = errors(client, {**DIGITS_3_5, "model": {"arch": "mlp", "widht": 64}})
    assert entry["loc"] == ["body", "model", "widht"]
    assert "did you mean 'width'?" in entry["msg"] and "'depth'" in entry["msg"]


def test_an_unknown_top_level_field_gets_a_suggestion(client):
    [entry] = errors(client, {**DIGITS_3_5, "clustring": {"k": 2}})
    assert entry["loc"] == ["body", "clustring"] and "did you mean 'clustering'?" in entry["msg"]


def test_an_unknown_architecture_gets_a_suggestion(client):
    [entry] = errors(client, {**DIGITS_3_5, "model": {"arch": "mpl"}})
    assert entry["loc"] == ["body", "model"] and "did you mean 'mlp'?" in entry["msg"]


def test_messages_have_no_pydantic_prefix(client):
    body = {**DIGITS_3_5, "similarity": {"kind": "kernelized", "schedule": "trajectory"}}
    [entry] = errors(client, body)
    assert entry["loc"] == ["body", "similarity"] and entry["msg"].startswith("schedule 'trajectory' needs")


def test_a_wrong_type_for_a_union_is_one_error_naming_both_forms(client):
    [entry] = errors(client, {"dataset": 3})
    assert entry["loc"] == ["body", "dataset"]
    assert "valid string" in entry["msg"] and "dictionary" in entry["msg"] and "BuiltinDataset" not in entry["msg"]
    [label] = errors(client, {**DIGITS_3_5, "primary": {"labels": [3.5]}})
    assert label["loc"] == ["body", "primary", "labels", 0]


def test_weights_without_a_source_are_trained_weights(client):
    response = client.post("/v1/jobs", json={**DIGITS_3_5, "weights": {"epochs": 3}})
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["weights"]["source"] == "trained"


def test_a_body_sent_without_a_json_content_type_says_so(client):
    [entry] = errors(client, None, content=json.dumps(DIGITS_3_5), headers={"Content-Type": "text/plain"})
    assert entry["loc"] == ["header", "content-type"] and "application/json" in entry["msg"]
    assert entry["input"] == "text/plain"


def test_a_bad_status_filter_names_the_statuses_as_a_client_writes_them(client):
    response = client.get("/v1/jobs", params={"status": "queud"})
    detail = assert_names(response, 422, "query", "status", "'queued'", "'canceled'", "did you mean 'queued'?")
    assert "JobStatus" not in response.text and "<" not in response.text, detail


def test_an_unknown_query_parameter_is_named_with_what_the_route_takes(client):
    detail = assert_names(
        client.get("/v1/jobs?stauts=failed&limit=5"),
        422,
        "unknown query parameter 'stauts'",
        "this route takes: cursor, limit, status",
        "did you mean 'status'?",
    )
    assert [entry["loc"] for entry in detail] == [["query", "stauts"]]
    assert detail[0]["input"] == "failed"
    assert_names(client.get("/v1/datasets?limt=3"), 422, "'limt'", "did you mean 'limit'?")
    assert_names(client.get("/v1/jobs/abc/result?x=1"), 422, "'x'", "this route takes: include")
    assert_names(client.get("/v1/datasets/abc?x=1"), 422, "this route takes: none")
    assert client.get("/v1/jobs?status=failed&limit=5").status_code == 200
    assert client.get("/healthz?probe=1").status_code == 200  # only the /v1 routes are checked


def test_a_single_valued_query_parameter_given_twice_is_refused(client):
    detail = assert_names(client.get("/v1/jobs?limit=5&limit=500"), 422, "given 2 times; give it once")
    assert detail[0]["loc"] == ["query", "limit"] and detail[0]["input"] == ["5", "500"]
