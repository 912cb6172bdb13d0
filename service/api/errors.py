"""Errors the API answers with, and the handlers that turn them into JSON.

Every error body has FastAPI's shape, so a client parses one format::

    {"detail": [{"loc": ["body", "primary", "labels"], "msg": "...", "input": [3, 7]}, ...]}

`loc` names the field (or header, path or query parameter), `msg` says what is wrong and what is
allowed, `input` echoes the bad value (at most a 200-character prefix of it). Request-validation errors
from pydantic keep FastAPI's 422 format (with `type` and `ctx`), only made safe for values JSON cannot
carry (NaN, ±Inf).

The tree (catch at the level you care about)::

    ServiceError                    500 unless a subclass says otherwise
    ├── Unauthorized                401  no API key, or one the keys file does not know
    ├── InvalidInput                422  the request is well-formed but its content is not acceptable
    ├── NotFound                    404  no such dataset / job / artifact (for this tenant)
    ├── Conflict                    409  the resource is in a state that forbids the operation
    ├── PayloadTooLarge             413  the upload is larger than `max_upload_bytes`
    ├── TooManyRequests             429  a per-tenant limit (rate, active jobs); has `Retry-After`
    └── Unavailable                 503  Redis (or another dependency) cannot be reached
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Self

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lelastic.api")

Loc = Sequence[str | int]


def issue(loc: Loc, msg: str, value: Any = None) -> dict[str, Any]:
    """One entry of an error body's `detail` list."""
    return {"loc": list(loc), "msg": msg, "input": value}


class ServiceError(Exception):
    """Base of every error the API raises on purpose. Carries the `detail` entries of the body."""

    status_code = 500
    headers: dict[str, str] = {}

    def __init__(
        self,
        issues: list[dict[str, Any]],
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in issues))
        self.issues = issues
        self.extra = extra or {}
        self.headers = {**type(self).headers, **(headers or {})}

    @classmethod
    def at(cls, loc: Loc, msg: str, value: Any = None, **extra: Any) -> Self:
        """The error with a single entry (`extra` goes beside `detail` in the body)."""
        return cls([issue(loc, msg, value)], extra=extra)


class Unauthorized(ServiceError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}

    def __init__(self, msg: str) -> None:
        super().__init__(
            [issue(["header", "Authorization"], f"{msg}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")]
        )


class InvalidInput(ServiceError):
    status_code = 422


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PayloadTooLarge(ServiceError):
    status_code = 413


class TooManyRequests(ServiceError):
    """A per-tenant limit was reached; `Retry-After` says when to try again (whole seconds)."""

    status_code = 429

    def __init__(self, issues: list[dict[str, Any]], *, retry_after: int, extra: dict[str, Any] | None = None) -> None:
        retry_after = max(1, int(retry_after))
        extra = {"retry_after": retry_after, **(extra or {})}
        super().__init__(issues, extra=extra, headers={"Retry-After": str(retry_after)})


class Unavailable(ServiceError):
    status_code = 503


def replace_non_finite(value: Any, replacement: Callable[[float], Any]) -> Any:
    """`value` with every NaN/±Inf float, at any depth of its lists and dicts, replaced by `replacement(number)`.

    JSON has no such numbers: error bodies spell them out (`repr`), results send them as null.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return replacement(value)
    if isinstance(value, list):
        return [replace_non_finite(v, replacement) for v in value]
    if isinstance(value, dict):
        return {k: replace_non_finite(v, replacement) for k, v in value.items()}
    return value


def json_safe(value: Any) -> Any:
    """`value` made JSON-encodable: NaN/±Inf become the strings "nan"/"inf"/"-inf", and a lone surrogate in
    a string (valid in a JSON escape, not in UTF-8) its escape, e.g. "\\ud800"."""
    return _utf8_safe(replace_non_finite(jsonable_encoder(value), repr))


def _utf8_text(text: str) -> str:
    """`text` with every lone surrogate (which UTF-8 cannot encode) written as its escape, e.g. "\\ud800"."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _utf8_safe(value: Any) -> Any:
    if isinstance(value, str):
        return _utf8_text(value)
    if isinstance(value, list):
        return [_utf8_safe(v) for v in value]
    if isinstance(value, dict):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in value.items()}
    return value


#: Longest echo of a bad value in an error body; a longer one is cut to a prefix of its JSON text.
MAX_INPUT_ECHO_CHARS = 200


def short_input(value: Any) -> Any:
    """`value`, or the first MAX_INPUT_ECHO_CHARS characters of its JSON text and "…" when it is longer."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= MAX_INPUT_ECHO_CHARS:
        return value
    return text[:MAX_INPUT_ECHO_CHARS] + "…"


def error_response(status_code: int, issues: list[dict[str, Any]], **extra: Any) -> JSONResponse:
    safe = json_safe(issues)
    for entry in safe:
        if isinstance(entry, dict) and "input" in entry:
            entry["input"] = short_input(entry["input"])
    return JSONResponse(status_code=status_code, content=json_safe({"detail": safe, **extra}))


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    response = error_response(exc.status_code, exc.issues, **exc.extra)
    response.headers.update(exc.headers)
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    from service.api.messages import friendly_errors

    errors = friendly_errors(list(exc.errors()), exc.body, content_type=request.headers.get("content-type"))
    return error_response(422, errors)


#: What FastAPI's 400 says when a body could not be decoded at all (not UTF-8, or nested too deeply).
UNPARSED_BODY = "There was an error parsing the body"


def _unparsed_body(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """422 for a body that is not JSON text FastAPI could decode, naming why and what is allowed."""
    if isinstance(exc.__cause__, RecursionError):
        why = "it nests arrays or objects too deeply"
    elif isinstance(exc.__cause__, UnicodeError):
        why = "it is not UTF-8 text"
    else:
        why = "it is not JSON text"
    msg = f"the body cannot be read as JSON: {why}; send the job spec as a JSON object (UTF-8, uncompressed)"
    encoding = request.headers.get("content-encoding")
    if encoding and encoding.strip().lower() != "identity":
        msg += f"; Content-Encoding {encoding!r} is not supported"
    entry = issue(["body"], msg, None)
    entry["type"] = "json_invalid"
    return error_response(422, [entry])


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == UNPARSED_BODY:
        return _unparsed_body(request, exc)
    msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        msg = f"no route {request.url.path!r}; the API lives under /v1 (see /docs)"
    elif exc.status_code == 405:
        msg = f"method {request.method} is not allowed on this path (see the Allow header)"
    response = error_response(exc.status_code, [issue(["path"], msg, request.url.path)])
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


#: Redis errors that mean the server cannot be reached (503); any other (a ResponseError: a command the
#: server refused) is a bug of ours and answers 500.
REDIS_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, REDIS_UNREACHABLE):
        return await _unexpected_error(request, exc)
    log.warning("redis error on %s %s: %r", request.method, request.url.path, exc)
    return error_response(503, [issue(["redis"], f"the job store is unreachable right now: {exc}", None)])


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    msg = "unexpected server error; it has been logged (this is a bug: please report it)"
    return error_response(500, [issue(["server"], msg, None)])


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from errors to JSON responses."""
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.RedisError, _redis_error)
