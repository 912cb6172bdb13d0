"""/healthz, /readyz, /metrics, and the API's import boundary."""

from __future__ import annotations

import json
import subprocess
import sys

from rq import Worker
from rq.serializers import JSONSerializer

from tests.factories import REPO_ROOT, submit


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_503_naming_the_missing_workers_then_200_with_one(client, redis_conn, settings):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["workers"] and settings.queue in body["checks"]["workers"]
    assert body["checks"]["redis"] == "ok" and body["checks"]["data_dir"] == "ok"
    worker = Worker([settings.queue], connection=redis_conn, serializer=JSONSerializer)
    worker.register_birth()
    try:
        response = client.get("/readyz")
        assert response.status_code == 200 and response.json()["status"] == "ready"
    finally:
        worker.register_death()


def test_metrics_text_has_every_metric(client):
    submit(client)
    job = submit(client).json()
    client.delete(f"/v1/jobs/{job['id']}")
    client.get("/v1/jobs/nope")
    text = client.get("/metrics").text
    for name in (
        "lelastic_queue_depth",
        "lelastic_workers",
        "lelastic_jobs",
        "lelastic_job_duration_seconds_sum",
        "lelastic_http_requests_total",
        "lelastic_http_request_duration_seconds_bucket",
    ):
        assert f"# TYPE {name.removesuffix('_sum').removesuffix('_bucket')} " in text, name
    assert 'lelastic_jobs{status="queued"} 1' in text and 'lelastic_jobs{status="canceled"} 1' in text
    assert "lelastic_queue_depth{" in text and text.count("lelastic_queue_depth{") == 1
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert 'lelastic_http_requests_total{method="POST",route="/v1/jobs",status="202"} 2' in text


def test_openapi_documents_the_routes_with_examples(client):
    schema = client.get("/openapi.json").json()
    post_jobs = schema["paths"]["/v1/jobs"]["post"]
    assert "digits" in json.dumps(post_jobs["requestBody"]) and {"202", "422"} <= set(post_jobs["responses"])
    upload = schema["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(upload["schema"]["properties"]) == {"file", "label_column"}
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary"), (method, path)


def test_the_api_never_imports_torch_sklearn_or_workers():
    code = (
        "import sys, service.api.app; "
        "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'workers', 'scipy')])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
