"""Readiness: whether this API process can do useful work (Redis answers, the data dir is writable,
a worker listens on the queue). Asynchronous: it runs on the event loop, never waiting for a thread of
the pool that a flood of blocking requests may hold."""

from __future__ import annotations

import redis
import redis.asyncio

from service.api.schemas import ReadyOut
from service.contract import queue
from service.contract.settings import Settings
from service.contract.storage import DataDir


async def check_readiness(aconn: redis.asyncio.Redis, data_dir: DataDir, settings: Settings) -> ReadyOut:
    """Each check's outcome ('ok' or why it failed) and the names of the failed ones."""
    checks = {"redis": await _redis_check(aconn)}
    checks["data_dir"] = "ok" if data_dir.is_writable() else f"cannot create a file in {data_dir.root}"
    checks["workers"] = (
        await _workers_check(aconn, settings) if checks["redis"] == "ok" else "unknown: Redis is unreachable"
    )
    failed = [name for name, outcome in checks.items() if outcome != "ok"]
    return ReadyOut(status="unavailable" if failed else "ready", checks=checks, failed=failed)


async def _redis_check(aconn: redis.asyncio.Redis) -> str:
    try:
        await aconn.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"no answer to PING: {exc}"
    return "ok"


async def _workers_check(aconn: redis.asyncio.Redis, settings: Settings) -> str:
    try:
        workers = await queue.live_workers_async(aconn, settings)
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"could not list workers: {exc}"
    return "ok" if workers else f"no live worker listens on queue {settings.queue!r}"
