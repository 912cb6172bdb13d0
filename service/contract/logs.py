"""Logging for every lelastic process: one JSON object per line (or plain text), with job/request context.

    configure_logging(settings)     root handler on stderr; LELASTIC_LOG_FORMAT json (default) or text
    job_context(job_id, tenant)     binds job_id / tenant for the duration of a job (the worker task)
    RequestContextMiddleware        binds request_id (and tenant) per HTTP request, echoes X-Request-ID,
                                    and writes one access line per request

A JSON line looks like::

    {"ts": "2025-01-02T03:04:05.678Z", "level": "INFO", "logger": "lelastic.worker", "msg": "job started",
     "job_id": "…", "tenant": "alice", "request_id": "…"}

`job_id`, `tenant` and `request_id` appear when known (a filter copies them from context variables into
every record); `exc_info` holds the formatted traceback; extra fields passed with `extra=` are kept.
Headers and bodies are never logged: the access line names the method, the path (no query string), the
status and the duration only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

job_id_var: ContextVar[str | None] = ContextVar("lelastic_job_id", default=None)
tenant_var: ContextVar[str | None] = ContextVar("lelastic_tenant", default=None)
request_id_var: ContextVar[str | None] = ContextVar("lelastic_request_id", default=None)

CONTEXT_FIELDS = {"job_id": job_id_var, "tenant": tenant_var, "request_id": request_id_var}
#: The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    *CONTEXT_FIELDS,
}
_HANDLER_MARK = "_lelastic_handler"


class ContextFilter(logging.Filter):
    """Copies job_id / tenant / request_id from the context variables onto each record (when set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in CONTEXT_FIELDS.items():
            value = var.get()
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, msg, context, extras, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        ts = ts.replace("+00:00", "Z")
        out: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and not name.startswith("_") and name not in out:
                out[name] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        # One line whatever the message holds: json.dumps escapes newlines.
        return json.dumps(out, ensure_ascii=False, default=repr)


class TextFormatter(logging.Formatter):
    """`2025-01-02 03:04:05,678 INFO lelastic.worker [job=… tenant=…] message` for humans."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None)]
        setattr(record, "context", f" [{' '.join(parts)}]" if parts else "")  # noqa: B010 - read by the format
        try:
            return super().format(record)
        finally:
            delattr(record, "context")


def configure_logging(settings: Any = None, *, stream: IO[str] | None = None) -> logging.Handler:
    """Install the lelastic handler on the root logger (replacing one installed before); returns it.

    `settings` needs `log_format` ("auto" | "json" | "text") and `log_level`; None reads the process
    settings. "auto" writes text to a terminal and JSON lines anywhere else (files, pipes, collectors).
    """
    if settings is None:
        from service.contract.settings import get_settings

        settings = get_settings()
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    log_format = settings.log_format
    if log_format == "auto":
        log_format = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(str(settings.log_level).upper())
    logging.captureWarnings(True)  # warnings become log lines too, not raw text on stderr
    # uvicorn's own access line would duplicate ours (and carries the query string): keep it quiet.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Libraries that log every HTTP call at INFO: only their warnings.
    for name in ("httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def is_configured() -> bool:
    """True when configure_logging has installed its handler in this process."""
    return any(getattr(h, _HANDLER_MARK, False) for h in logging.getLogger().handlers)


@contextlib.contextmanager
def bind(**values: str | None) -> Iterator[None]:
    """Set context fields (job_id, tenant, request_id) for the body of the `with`, then restore them."""
    tokens = [(CONTEXT_FIELDS[name], CONTEXT_FIELDS[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def job_context(job_id: str, tenant: str | None) -> contextlib.AbstractContextManager[None]:
    """Bind a job's id and tenant: every record logged inside carries them."""
    return bind(job_id=job_id, tenant=tenant)
