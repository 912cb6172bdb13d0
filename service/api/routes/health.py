"""/healthz (the process answers) and /readyz (it can do useful work).

Both run on the event loop (no hop to the thread pool), so they answer while blocking routes are busy.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import AsyncRedisDep, DataDirDep, SettingsDep
from service.api.schemas import HealthOut, ReadyOut
from service.api.usecases.readiness import check_readiness

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthOut,
    summary="Liveness",
    description="200 whenever the process can answer; checks nothing else.",
)
async def read_health() -> HealthOut:
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness",
    description="200 when Redis answers PING, the data dir is writable and at least one worker listens on "
    "the queue; otherwise 503 with the failed checks named in `failed`.",
    responses={503: {"model": ReadyOut, "description": "A check failed."}},
)
async def read_ready(aconn: AsyncRedisDep, data_dir: DataDirDep, settings: SettingsDep) -> JSONResponse:
    body = await check_readiness(aconn, data_dir, settings)
    return JSONResponse(body.model_dump(), status_code=503 if body.failed else 200)
