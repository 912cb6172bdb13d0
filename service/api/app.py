"""The FastAPI application: `create_app()` wires settings, Redis, the data dir, routers and errors.

Run it with `uvicorn --factory service.api.app:create_app`. This module (and everything it imports) must
never import torch, scikit-learn or the `workers` package: jobs are enqueued by dotted name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from service.api import limits, requestlog, retention
from service.api.errors import install_error_handlers
from service.api.routes import datasets, health, jobs, metrics
from service.api.schemas import ErrorOut
from service.contract import logs, records
from service.contract.settings import Settings, get_settings
from service.contract.storage import DataDir

DESCRIPTION = """
Local-elasticity similarity service. Upload a dataset (or use a builtin), submit a job spec, follow
its progress (poll or Server-Sent Events), then fetch the similarity matrix, the clusterings and the
baselines. Every error body is `{"detail": [{"loc": [...], "msg": "...", "input": ...}]}`.

Limits (each refusal names the limit and its `LELASTIC_*` setting): upload size (413), examples,
features, model parameters, epochs, clusters and similarity-matrix bytes (422), and per tenant the
request rate and the queued + running jobs (429 with `Retry-After`). `POST /v1/jobs` and
`POST /v1/datasets` accept an `Idempotency-Key` header that makes a retry return the original resource.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.redis_url:
        raise RuntimeError("LELASTIC_REDIS_URL is not set: the API needs the Redis/Valkey server's URL")
    app.state.redis = records.connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
    app.state.data_dir = DataDir(settings.data_dir)
    if not logs.is_configured():
        logs.configure_logging(settings)
    sweeper = retention.start_sweeper(app.state.redis, app.state.data_dir, settings)
    try:
        yield
    finally:
        await retention.stop_sweeper(sweeper)
        app.state.redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for `settings` (default: the process settings from the environment)."""
    app = FastAPI(
        title="lelastic",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={500: {"model": ErrorOut, "description": "Unexpected server error."}},
    )
    app.state.settings = settings or get_settings()
    app.state.http_metrics = metrics.HttpMetrics()
    app.add_middleware(metrics.HttpMetricsMiddleware, http_metrics=app.state.http_metrics)
    install_error_handlers(app)
    app.add_middleware(requestlog.RequestContextMiddleware, settings=app.state.settings)  # outermost: request ids
    # /v1 is rate limited per tenant; health, metrics and the docs are not.
    too_many: dict[int | str, dict[str, Any]] = {
        429: {"model": ErrorOut, "description": "Too many requests this minute; see Retry-After."}
    }
    for router in (datasets.router, jobs.router):
        app.include_router(router, dependencies=[Depends(limits.rate_limit)], responses=too_many)
    for router in (health.router, metrics.router):
        app.include_router(router)
    return app
