"""The request log: an ASGI middleware that gives each request an id (X-Request-ID in, the same out),
binds the caller's tenant to every line logged while handling it, and writes one access line."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from service.api.deps import key_from_headers, tenant_for_key
from service.contract.logs import bind

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_log = logging.getLogger("lelastic.access")


def request_id_from(value: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    if value and _REQUEST_ID_PATTERN.match(value):
        return value
    return uuid.uuid4().hex


class QueryStringFilter(logging.Filter):
    """Cuts the query string off the path of uvicorn's access lines (args: client, method, path, version,
    status), whatever their level: query strings never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], record.args[2].split("?", 1)[0], *record.args[3:])
        return True


def keep_query_strings_out_of_logs() -> None:
    """Install QueryStringFilter on uvicorn's access logger (once)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QueryStringFilter) for f in logger.filters):
        logger.addFilter(QueryStringFilter())


class RequestContextMiddleware:
    """ASGI middleware: request id (X-Request-ID in, the same out), tenant, and one access line.

    The tenant is resolved from the API key the same way the routes do (`service.api.deps`), so that lines
    logged while handling the request carry it; the key itself is never stored or logged.
    """

    def __init__(self, app: Any, settings: Any = None) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = request_id_from(headers.get("x-request-id"))
        tenant = self._tenant(scope, headers)
        status = {"code": 500}
        started = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"],
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        with bind(request_id=request_id, tenant=tenant):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                access_log.info(
                    "%s %s %d",
                    scope.get("method", ""),
                    scope.get("path", ""),
                    status["code"],
                    extra={
                        "method": scope.get("method", ""),
                        "path": scope.get("path", ""),
                        "status": status["code"],
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )

    def _tenant(self, scope: dict, headers: dict[str, str]) -> str | None:
        """The caller's tenant, or None when the key is missing or unknown (the route answers 401)."""
        settings = self.settings
        if settings is None:
            app = scope.get("app")
            settings = getattr(getattr(app, "state", None), "settings", None)
        if settings is None:
            return None
        try:
            return tenant_for_key(settings.api_keys_file, key_from_headers(headers))
        except Exception:  # a broken keys file is the route's error to report, not the logger's
            return None
