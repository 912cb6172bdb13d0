"""The OpenAPI document: an example on every model, a description on every field, links between operations."""

from __future__ import annotations

import functools

from service.api.app import create_app
from service.contract.settings import Settings


@functools.cache
def openapi_document() -> dict:
    return create_app(Settings(redis_url="redis://unused")).openapi()


def test_every_model_has_an_example_and_every_field_a_description():
    document = openapi_document()
    components = document["components"]["schemas"]
    assert "HTTPValidationError" not in components, "every 422 is documented as ErrorOut"
    missing_examples = sorted(name for name, schema in components.items() if not schema.get("examples"))
    missing_descriptions = sorted(
        f"{name}.{field}"
        for name, schema in components.items()
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    )
    assert (missing_examples, missing_descriptions) == ([], [])


def test_creating_operations_link_to_the_operations_on_what_they_created():
    paths = openapi_document()["paths"]
    operation_ids = {op["operationId"] for item in paths.values() for op in item.values() if "operationId" in op}
    job_links = paths["/v1/jobs"]["post"]["responses"]["202"]["links"]
    dataset_links = paths["/v1/datasets"]["post"]["responses"]["201"]["links"]
    assert set(job_links) == {"GetJob", "GetJobResult", "GetJobArtifact", "FollowJobEvents", "CancelJob"}
    assert set(dataset_links) == {"GetDataset", "DeleteDataset"}
    for link in (*job_links.values(), *dataset_links.values()):
        assert link["operationId"] in operation_ids
        assert "$response.body#/id" in link["parameters"].values()


def test_the_result_documents_its_include_parameter():
    parameters = openapi_document()["paths"]["/v1/jobs/{job_id}/result"]["get"]["parameters"]
    assert "include" in [parameter["name"] for parameter in parameters]
