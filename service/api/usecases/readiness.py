"""Readiness: whether this API process can do useful work (Redis answers, the data dir is writable,
a worker listens on the queue)."""

from __future__ import annotations

import redis

from service.api.schemas import ReadyOut
from service.contract import queue
from service.contract.settings import Settings
from service.contract.storage import DataDir


def check_readiness(conn: redis.Redis, data_dir: DataDir, settings: Settings) -> ReadyOut:
    """Each check's outcome ('ok' or why it failed) and the names of the failed ones."""
    checks = {"redis": _redis_check(conn)}
    checks["data_dir"] = "ok" if data_dir.is_writable() else f"cannot create a file in {data_dir.root}"
    checks["workers"] = _workers_check(conn, settings) if checks["redis"] == "ok" else "unknown: Redis is unreachable"
    failed = [name for name, outcome in checks.items() if outcome != "ok"]
    return ReadyOut(status="unavailable" if failed else "ready", checks=checks, failed=failed)


def _redis_check(conn: redis.Redis) -> str:
    try:
        conn.ping()
    except redis.exceptions.RedisError as exc:
        return f"no answer to PING: {exc}"
    return "ok"


def _workers_check(conn: redis.Redis, settings: Settings) -> str:
    try:
        workers = queue.live_workers(conn, settings)
    except redis.exceptions.RedisError as exc:
        return f"could not list workers: {exc}"
    return "ok" if workers else f"no live worker listens on queue {settings.queue!r}"
