"""The paper's experiments in examples/*.json: the same as the API's named examples, each accepted by
POST /v1/jobs, the quick one run end to end; and the training defaults of the synthetic builtins."""

from __future__ import annotations

import json

import pytest

from service.contract.examples import EXAMPLES
from service.contract.spec import JobSpec
from tests.factories import REPO_ROOT

EXAMPLE_FILES = sorted((REPO_ROOT / "examples").glob("*.json"))
#: Examples that finish in seconds on a CPU; the others take minutes and are only validated here.
QUICK = ("digits-quick",)


def test_every_example_file_is_a_named_example_of_the_api():
    assert {path.stem for path in EXAMPLE_FILES} == set(EXAMPLES)
    for path in EXAMPLE_FILES:
        assert json.loads(path.read_text()) == EXAMPLES[path.stem]["spec"], path.name


def test_the_openapi_offers_every_example_by_name(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == set(EXAMPLES)
    assert examples["torus-relu"]["value"] == EXAMPLES["torus-relu"]["spec"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.stem)
def test_every_example_is_accepted_by_the_api(client, path):
    response = client.post("/v1/jobs", json=json.loads(path.read_text()))
    assert response.status_code == 202, response.text
    assert client.delete(f"/v1/jobs/{response.json()['id']}").status_code == 200


@pytest.mark.worker
@pytest.mark.parametrize("name", QUICK)
def test_the_quick_examples_run_end_to_end(client, settings, run_worker_burst, name):
    job = client.post("/v1/jobs", json=EXAMPLES[name]["spec"]).json()
    assert run_worker_burst(settings).returncode == 0
    record = client.get(f"/v1/jobs/{job['id']}").json()
    assert record["status"] == "succeeded", record["error"]
    assert client.get(f"/v1/jobs/{job['id']}/result").json()["metrics"]["accuracy"] > 0.8


def test_a_synthetic_builtin_trains_full_batch_at_a_small_rate_by_default():
    weights = JobSpec.model_validate({"dataset": {"builtin": "torus", "n": 50}}).weights
    assert (weights.source, weights.epochs, weights.lr, weights.batch_size) == ("trained", 500, 1e-4, 50)
    chosen = JobSpec.model_validate({"dataset": {"builtin": "torus"}, "weights": {"lr": 0.01, "epochs": 3}}).weights
    assert (chosen.lr, chosen.epochs, chosen.batch_size) == (0.01, 3, 200)
    assert (
        JobSpec.model_validate({"dataset": {"builtin": "torus"}, "weights": {"source": "init"}}).weights.source
        == "init"
    )
    assert JobSpec.model_validate({"dataset": {"builtin": "digits"}}).weights.lr == 0.003
