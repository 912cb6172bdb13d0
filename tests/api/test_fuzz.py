"""Property-based fuzzing of the live OpenAPI schema with schemathesis: no request may get a 5xx.

The API runs under uvicorn in a thread on a free port, against the test Valkey server (the fixtures
`api_url`, `api_schema` and `seeded` of tests/api/conftest.py), and schemathesis
generates requests for every operation from /openapi.json (valid and invalid bodies, parameters and
headers). The run is short and deterministic (derandomized); `make fuzz` runs it longer:

    LELASTIC_FUZZ_EXAMPLES=500 pytest tests/api/test_fuzz.py
"""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from service.api.app import create_app
from service.contract.settings import Settings
from tests.factories import npz_bytes

EXAMPLES = int(os.environ.get("LELASTIC_FUZZ_EXAMPLES", "30"))
#: Seconds a request may take; an event stream of a job that never ends is cut off after this.
REQUEST_TIMEOUT = 5


def _runs() -> list[pytest.param]:
    """(method, path, mode, existing) of every run, from the app's schema (building it needs no server).

    Negative runs only where there is an input to make invalid; `existing` runs only where the path
    has an id to fix.
    """
    paths = create_app(Settings(redis_url="redis://unused")).openapi()["paths"]
    runs = []
    for path, item in paths.items():
        for method, operation in item.items():
            has_inputs = any(operation.get(k) for k in ("parameters", "requestBody", "security"))
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for existing in (False, True) if "{" in path else (False,):
                    if mode is GenerationMode.NEGATIVE and not has_inputs:
                        continue
                    label = f"{method.upper()} {path} {mode.value}{' existing' if existing else ''}"
                    runs.append(pytest.param(method, path, mode, existing, id=label))
    return sorted(runs, key=lambda run: run.values[0] == "delete")  # deletes last: they remove the seeds


# schemathesis.pytest.from_fixture would do this, but it reads a pytest internal that pytest 9 dropped;
# so each operation is a parametrized test that runs its own hypothesis search. `existing` fixes the
# path parameters to seeded resources (else they are random ids: mostly 404s).
@pytest.mark.timeout(max(120, 2 * EXAMPLES))
@pytest.mark.parametrize(("method", "path", "mode", "existing"), _runs())
def test_no_operation_answers_with_a_server_error(
    api_schema: schemathesis.BaseSchema,
    seeded: dict[str, str],
    method: str,
    path: str,
    mode: GenerationMode,
    existing: bool,
) -> None:
    operation = api_schema[path][method]
    fixed = {name: seeded[name] for name in ("dataset_id", "job_id") if existing and "{" + name + "}" in path}
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        if path == "/readyz":  # 503 is its documented answer while no worker listens
            assert case.call(timeout=REQUEST_TIMEOUT).status_code in (200, 503)
        else:
            case.call_and_validate(checks=[not_a_server_error], timeout=REQUEST_TIMEOUT)

    run()


# Random bytes never get past the upload's format checks, so the parsers get files of their own formats
# with odd contents: dtypes (object, complex, datetime, structured), shapes, CSV text, safetensors headers.
DTYPES = ["f4", "f8", "f2", "i1", "u8", "?", "c8", "M8[s]", "m8[s]", "U3", "S2", "V4", "O", "i4,f4"]
CSV_CHARACTERS = list('0123456789.,-e \n"naif\t#')
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@st.composite
def odd_files(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["npy", "npz", "csv", "safetensors"]))
    if kind == "csv":
        text = draw(st.text(alphabet=st.sampled_from(CSV_CHARACTERS), max_size=200))
        form = draw(st.sampled_from([{}, {"label_column": "0"}, {"label_column": "1"}, {"label_column": "a"}]))
        return "x.csv", text.encode(), form
    if kind == "safetensors":
        leaves = st.none() | st.integers() | st.text(max_size=5)
        header = draw(
            st.recursive(
                leaves,
                lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                max_leaves=8,
            )
        )
        raw = json.dumps(header).encode()
        return "w.safetensors", len(raw).to_bytes(8, "little") + raw + draw(st.binary(max_size=16)), {}
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    X = np.zeros(draw(SHAPES), dtype=dtype)
    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, X, allow_pickle=True)
        return "x.npy", buffer.getvalue(), {}
    arrays = {"X": X}
    if draw(st.booleans()):
        arrays["y"] = np.zeros(draw(SHAPES), dtype=np.dtype(draw(st.sampled_from(DTYPES))))
    return "x.npz", npz_bytes(**arrays), {}


def test_upload_parsers_answer_odd_files_without_a_server_error(api_url: str) -> None:
    with httpx.Client(base_url=api_url, timeout=REQUEST_TIMEOUT) as http:

        @given(upload=odd_files())
        @settings(max_examples=EXAMPLES * 3, derandomize=True, deadline=None, database=None)
        def run(upload: tuple[str, bytes, dict[str, str]]) -> None:
            name, content, form = upload
            response = http.post("/v1/datasets", files={"file": (name, content)}, data=form)
            assert response.status_code < 500, (name, response.text)
            assert response.status_code in (201, 422), response.text

        run()


def test_following_the_openapi_links_never_gets_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    """The stateful phase: chains of calls that follow the document's links (create a dataset or a job,
    then read, follow, fetch and cancel or delete it with the id the creating call returned)."""
    base = api_schema.as_state_machine()

    class LinkedCalls(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"timeout": REQUEST_TIMEOUT}

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:  # type: ignore[no-untyped-def]
            case.validate_response(response, checks=[not_a_server_error], transport_kwargs=kwargs or None)

    LinkedCalls.run(
        settings=settings(
            max_examples=max(5, EXAMPLES // 3),
            stateful_step_count=6,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
