"""The FastAPI application: `create_app()` wires settings, Redis, the data dir, routers and errors.

Run it with `uvicorn --factory service.api.app:create_app`. This module (and everything it imports) must
never import torch, scikit-learn or the `workers` package: jobs are enqueued by dotted name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI

from service.api import edge, events, limits, openapi, queryparams, requestlog, retention, ui
from service.api.errors import install_error_handlers
from service.api.routes import dataset_rows, datasets, health, jobs, matrix, metrics
from service.api.schemas import ErrorOut
from service.contract import jobstate, logs, records
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
    app.state.aredis = records.connect_async(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
    # Records written before the status index existed are indexed once (idempotent; see jobstate).
    await anyio.to_thread.run_sync(jobstate.ensure_indexed, app.state.redis)
    app.state.data_dir = DataDir(settings.data_dir)
    if not logs.is_configured():
        logs.configure_logging(settings)
    sweeper = retention.start_sweeper(app.state.redis, app.state.data_dir, settings)
    app.state.event_hub = events.EventHub(app.state.aredis).start()
    try:
        yield
    finally:
        await app.state.event_hub.stop()
        await retention.stop_sweeper(sweeper)
        await app.state.aredis.aclose()
        app.state.redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for `settings` (default: the process settings from the environment)."""
    app = FastAPI(
        title="lelastic",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served by service.api.ui from vendored files
        redoc_url=None,
        responses={500: {"model": ErrorOut, "description": "Unexpected server error."}},
    )
    app.state.settings = settings or get_settings()
    requestlog.keep_query_strings_out_of_logs()
    app.state.http_metrics = metrics.HttpMetrics()
    app.add_middleware(edge.EdgeMiddleware, settings=app.state.settings)  # key, then a bounded body
    app.add_middleware(metrics.HttpMetricsMiddleware, http_metrics=app.state.http_metrics)
    install_error_handlers(app)
    app.add_middleware(edge.HeadMiddleware)  # HEAD runs as GET without a body
    app.add_middleware(requestlog.RequestContextMiddleware, settings=app.state.settings)  # outermost: request ids
    # /v1 is rate limited per tenant; health, metrics and the docs are not.
    too_many: dict[int | str, dict[str, Any]] = {
        429: {"model": ErrorOut, "description": "Too many requests this minute; see Retry-After."}
    }
    for router in (datasets.router, dataset_rows.router, jobs.router, matrix.router):
        checks = [Depends(limits.rate_limit), Depends(queryparams.check_query_parameters)]
        app.include_router(router, dependencies=checks, responses=too_many)
    for router in (health.router, metrics.router):
        app.include_router(router)
    ui.install(app)
    openapi.install(app)
    return app
