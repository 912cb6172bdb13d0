"""Finishing touches on the generated OpenAPI document: the named job examples as written, and links.

FastAPI drops every null from the document, so an example such as `"clustering": null` would lose its
meaning; the job examples are put back verbatim. Links say which operations take the id a creating
operation returns (`POST /v1/datasets` → the dataset's routes, `POST /v1/jobs` → the job's), so clients
and stateful fuzzers can follow them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.contract.examples import EXAMPLES

#: (creating path, method, status) → {link name: (path, method, {parameter: value})}; a value that starts
#: with `$` is a runtime expression on the creating response.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("/v1/datasets", "post", "201"): {
        "GetDataset": ("/v1/datasets/{dataset_id}", "get", {"dataset_id": "$response.body#/id"}),
        "DeleteDataset": ("/v1/datasets/{dataset_id}", "delete", {"dataset_id": "$response.body#/id"}),
    },
    ("/v1/jobs", "post", "202"): {
        "GetJob": ("/v1/jobs/{job_id}", "get", {"job_id": "$response.body#/id"}),
        "GetJobResult": ("/v1/jobs/{job_id}/result", "get", {"job_id": "$response.body#/id"}),
        "GetJobArtifact": (
            "/v1/jobs/{job_id}/artifacts/{name}",
            "get",
            {"job_id": "$response.body#/id", "name": "similarity.npy"},
        ),
        "FollowJobEvents": ("/v1/jobs/{job_id}/events", "get", {"job_id": "$response.body#/id"}),
        "CancelJob": ("/v1/jobs/{job_id}", "delete", {"job_id": "$response.body#/id"}),
    },
}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the finished document (built once, then cached as FastAPI does)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            finish(generate())
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def finish(schema: dict[str, Any]) -> dict[str, Any]:
    """Restore the job examples, add the links and document every 422 as the one error shape, in place;
    returns `schema`."""
    paths = schema.get("paths", {})
    _one_error_shape(schema)
    body = paths.get("/v1/jobs", {}).get("post", {}).get("requestBody", {})
    examples = body.get("content", {}).get("application/json", {}).get("examples", {})
    for name, example in examples.items():
        if name in EXAMPLES:
            example["value"] = EXAMPLES[name]["spec"]
    for (path, method, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        response["links"] = {
            name: {"operationId": paths[target][verb]["operationId"], "parameters": parameters}
            for name, (target, verb, parameters) in links.items()
            if "operationId" in paths.get(target, {}).get(verb, {})
        }
    return schema


def _one_error_shape(schema: dict[str, Any]) -> None:
    """FastAPI's default 422 schema (`HTTPValidationError`) replaced by `ErrorOut`, the shape every error has."""
    components = schema.get("components", {}).get("schemas", {})
    if "ErrorOut" not in components:
        return
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for response in (operation.get("responses") or {}).values():
                content = response.get("content", {}).get("application/json", {})
                if content.get("schema", {}).get("$ref") == "#/components/schemas/HTTPValidationError":
                    content["schema"] = {"$ref": "#/components/schemas/ErrorOut"}
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
