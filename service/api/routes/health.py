"""/healthz (the process answers) and /readyz (it can do useful work)."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import DataDirDep, RedisDep, SettingsDep
from service.api.schemas import HealthOut, ReadyOut
from service.contract import queue

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthOut,
    summary="Liveness",
    description="200 whenever the process can answer; checks nothing else.",
)
def read_health() -> HealthOut:
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness",
    description="200 when Redis answers PING, the data dir is writable and at least one worker listens on "
    "the queue; otherwise 503 with the failed checks named in `failed`.",
    responses={503: {"model": ReadyOut, "description": "A check failed."}},
)
def read_ready(conn: RedisDep, data_dir: DataDirDep, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        conn.ping()
        checks["redis"] = "ok"
    except redis.exceptions.RedisError as exc:
        checks["redis"] = f"no answer to PING: {exc}"
    checks["data_dir"] = "ok" if data_dir.is_writable() else f"cannot create a file in {data_dir.root}"
    if checks["redis"] != "ok":
        checks["workers"] = "unknown: Redis is unreachable"
    else:
        try:
            workers = queue.live_workers(conn, settings)
            checks["workers"] = "ok" if workers else f"no live worker listens on queue {settings.queue!r}"
        except redis.exceptions.RedisError as exc:
            checks["workers"] = f"could not list workers: {exc}"
    failed = [name for name, outcome in checks.items() if outcome != "ok"]
    body = ReadyOut(status="unavailable" if failed else "ready", checks=checks, failed=failed)
    return JSONResponse(body.model_dump(), status_code=503 if failed else 200)
