"""The API's edge: an ASGI middleware that refuses a request before its body costs anything.

* Under /v1 the API key is checked first: a missing or unknown key gets 401 without a byte of the body
  being read (a large body then costs the server nothing).
* Every body but an upload's (POST /v1/datasets streams to disk under `max_upload_bytes`) is read here,
  counting bytes as they arrive, and refused with 413 once it passes `max_json_body_bytes`, whatever the
  Content-Length says. The accepted body is handed on to the app from memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.api.deps import key_from_headers, tenant_for_key
from service.api.errors import Unauthorized, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1/"
#: Routes whose body streams elsewhere under its own cap: (method, path).
STREAMED_BODIES = {("POST", "/v1/datasets")}


def body_too_large(max_bytes: int, received: int | None) -> Any:
    """413 naming `max_json_body_bytes`."""
    msg = (
        f"the request body is larger than max_json_body_bytes = {max_bytes} bytes "
        "(LELASTIC_MAX_JSON_BODY_BYTES); send a smaller body"
    )
    issue: dict[str, Any] = {"loc": ["body"], "msg": msg, "input": received}
    issue["ctx"] = {"limit": "max_json_body_bytes", "allowed": max_bytes, "env": "LELASTIC_MAX_JSON_BODY_BYTES"}
    return error_response(413, [issue])


class EdgeMiddleware:
    """Key first, then a bounded body (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Any) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path + "/").startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = key_from_headers(headers)
        if tenant_for_key(self.settings.api_keys_file, key) is None:
            error = Unauthorized("missing API key" if not key else "unknown API key")
            response = error_response(error.status_code, error.issues)
            response.headers.update(error.headers)
            await response(scope, receive, send)
            return
        if (scope.get("method", ""), path.rstrip("/")) in STREAMED_BODIES:
            await self.app(scope, receive, send)
            return
        limit = int(self.settings.max_json_body_bytes)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await body_too_large(limit, int(declared))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await body_too_large(limit, None)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)


class _HeadDone(Exception):
    """Raised from `send` once a HEAD response's headers went out: the body is not produced."""


class HeadMiddleware:
    """HEAD wherever GET exists: the request runs as GET, its status and headers go out, no body.

    The app is stopped at its first body message, so a HEAD on a stream or a large file costs no more
    than its headers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        started = False

        async def headers_only(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                await send(message)
            elif message["type"] == "http.response.body":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                raise _HeadDone
            else:
                await send(message)

        try:
            await self.app({**scope, "method": "GET"}, receive, headers_only)
        except _HeadDone:
            return
        except BaseException as error:  # a task group may wrap it
            if started and _holds_head_done(error):  # what else broke was stopped by it (a stream's tasks)
                return
            raise


def _holds_head_done(error: BaseException) -> bool:
    if isinstance(error, _HeadDone):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_holds_head_done(inner) for inner in error.exceptions)
    return False
