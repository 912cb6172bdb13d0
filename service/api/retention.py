"""Retention: what has expired is removed from Redis and from disk.

    sweep(conn, data_dir, settings)         one pass; returns what it removed
    sweep_locked(...)                       the same, under a Redis lock (None when another holds it)
    start_sweeper / stop_sweeper            the API's background task: a locked sweep every
                                            retention_sweep_seconds, the blocking work in a thread

One pass removes

* finished jobs (succeeded, failed, canceled) whose `finished_at` is older than
  `job_retention_seconds`: the record, its event stream, its index entry, the RQ job and
  `jobs/<id>/`;
* uploads (datasets and weights) older than `dataset_retention_seconds`, unless a queued or running
  job names them (its spec's `dataset`, or `weights.weights` for uploaded weights): the record, its
  index entry and `datasets/<id>/`;
* orphans: folders under `datasets/` and `jobs/` with no record, and `.upload-*.tmp` files left in
  the data dir by an interrupted upload, once they are older than ORPHAN_AGE (so that an upload or a
  job being written right now is never taken);
* index entries whose record no longer exists.

Only the API process sweeps periodically; `SET NX EX` on LOCK_KEY makes sure one sweep runs at a
time across API processes (and `lelastic gc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from service.contract import records
from service.contract.storage import DataDir

log = logging.getLogger("lelastic.retention")

LOCK_KEY = f"{records.PREFIX}retention:lock"
#: Seconds a folder or temp file without a record must have existed before it counts as an orphan.
ORPHAN_AGE = 3600.0
ACTIVE_STATUSES = ("queued", "running")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record_ids(conn: redis.Redis, key_for: Any) -> list[str]:
    """Ids of every record whose key is `key_for(id)` (so `lelastic:job:<id>`, not its `:events`)."""
    prefix = key_for("")
    out = []
    for key in conn.scan_iter(match=f"{prefix}*", count=1000):
        rest = _text(key)[len(prefix) :]
        if rest and ":" not in rest:
            out.append(rest)
    return out


def _job_ids(conn: redis.Redis) -> list[str]:
    return _record_ids(conn, records.job_key)


def _dataset_ids(conn: redis.Redis) -> list[str]:
    return _record_ids(conn, records.dataset_key)


def _uploads_named(spec_json: str | None) -> set[str]:
    """Upload ids a job spec uses: its dataset (when not a builtin) and its uploaded weights."""
    try:
        spec = json.loads(spec_json or "{}")
    except ValueError:
        return set()
    out = set()
    if isinstance(spec.get("dataset"), str):
        out.add(spec["dataset"])
    weights = spec.get("weights")
    if isinstance(weights, dict) and weights.get("source") == "upload":
        if isinstance(weights.get("weights"), str):
            out.add(weights["weights"])
    return out


def uploads_in_use(conn: redis.Redis) -> set[str]:
    """Upload ids named by queued or running jobs."""
    used: set[str] = set()
    for job_id in _job_ids(conn):
        status, spec = conn.hmget(records.job_key(job_id), "status", "spec")
        if status is not None and _text(status) in ACTIVE_STATUSES:
            used |= _uploads_named(_text(spec) if spec is not None else None)
    return used


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove_tree(path: Path) -> bool:
    if not path.exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _delete_rq_job(conn: redis.Redis, job_id: str) -> bool:
    from service.contract.queue import fetch_rq_job

    try:
        rq_job = fetch_rq_job(conn, job_id)
        if rq_job is None:
            return False
        rq_job.delete(remove_from_queue=True)
        return True
    except Exception as exc:  # a corrupt RQ hash must not stop the sweep; drop its key directly
        log.warning("could not delete RQ job %s cleanly (%s); deleting its key", job_id, exc)
        return bool(conn.delete(f"rq:job:{job_id}"))


def sweep(
    conn: redis.Redis,
    data_dir: DataDir | str | os.PathLike[str],
    settings: Any,
    now: float | None = None,
    *,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """One retention pass (see the module doc). Returns the ids and paths it removed.

    `now` (seconds since the epoch) defaults to the current time; `stop`, when set, ends the pass early.
    """
    data_dir = data_dir if isinstance(data_dir, DataDir) else DataDir(data_dir)
    now = time.time() if now is None else now
    job_cutoff = now - settings.job_retention_seconds
    dataset_cutoff = now - settings.dataset_retention_seconds
    removed: dict[str, Any] = {
        "jobs": [],
        "datasets": [],
        "orphan_job_dirs": [],
        "orphan_dataset_dirs": [],
        "temp_files": [],
        "index_entries": 0,
    }

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    # -- jobs
    for job_id in _job_ids(conn):
        if stopping():
            return removed
        status, finished_at, tenant = conn.hmget(records.job_key(job_id), "status", "finished_at", "tenant")
        if status is None or _text(status) not in records.FINAL_STATUSES:
            continue
        try:
            finished = float(_text(finished_at)) if finished_at else None
        except ValueError:
            finished = None
        if finished is None or finished >= job_cutoff:
            continue
        tenant = _text(tenant) if tenant is not None else records.DEFAULT_TENANT
        _delete_rq_job(conn, job_id)
        records.delete_job_record(conn, job_id, tenant)
        data_dir.remove_job(job_id)
        removed["jobs"].append(job_id)
        log.info(
            "removed job %s (%s, finished %.0f s ago)",
            job_id,
            _text(status),
            now - finished,
            extra={"removed_job": job_id},
        )

    # -- uploads (datasets and weights)
    candidates = []
    for dataset_id in _dataset_ids(conn):
        created_at, tenant = conn.hmget(records.dataset_key(dataset_id), "created_at", "tenant")
        try:
            created = float(_text(created_at)) if created_at else None
        except ValueError:
            created = None
        if created is not None and created < dataset_cutoff:
            owner = _text(tenant) if tenant is not None else records.DEFAULT_TENANT
            candidates.append((dataset_id, owner, created))
    if candidates:
        # Read the jobs' specs only now, after the candidates: a job queued meanwhile is seen.
        in_use = uploads_in_use(conn)
        for dataset_id, tenant, created in candidates:
            if stopping():
                return removed
            if dataset_id in in_use:
                continue
            records.delete_dataset_record(conn, dataset_id, tenant)
            data_dir.remove_dataset(dataset_id)
            removed["datasets"].append(dataset_id)
            log.info("removed upload %s (created %.0f s ago)", dataset_id, now - created)

    # -- index entries whose record is gone
    for index_prefix, key_of in (
        (records.jobs_index_key(""), records.job_key),
        (records.datasets_index_key(""), records.dataset_key),
    ):
        for index in conn.scan_iter(match=f"{index_prefix}*", count=1000):
            members = [_text(m) for m in conn.zrange(index, 0, -1)]
            pipe = conn.pipeline(transaction=False)
            for member in members:
                pipe.exists(key_of(member))
            dangling = [m for m, exists in zip(members, pipe.execute(), strict=True) if not exists]
            if dangling:
                removed["index_entries"] += conn.zrem(index, *dangling)

    # -- orphans on disk
    for sub, key_of, bucket in (
        ("jobs", records.job_key, "orphan_job_dirs"),
        ("datasets", records.dataset_key, "orphan_dataset_dirs"),
    ):
        with contextlib.suppress(FileNotFoundError):
            for entry in (data_dir.root / sub).iterdir():
                if stopping():
                    return removed
                if not entry.is_dir() or _age(entry, now) < ORPHAN_AGE or conn.exists(key_of(entry.name)):
                    continue
                if _remove_tree(entry):
                    removed[bucket].append(entry.name)
                    log.info("removed orphan folder %s/%s", sub, entry.name)
    for temp in data_dir.root.glob(".upload-*.tmp"):
        if _age(temp, now) >= ORPHAN_AGE:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                removed["temp_files"].append(temp.name)
    return removed


def summary(removed: dict[str, Any]) -> str:
    """`2 jobs, 1 upload, 0 orphan folders, ...` for logs and `lelastic gc`."""
    orphans = len(removed["orphan_job_dirs"]) + len(removed["orphan_dataset_dirs"])
    return (
        f"{len(removed['jobs'])} jobs, {len(removed['datasets'])} uploads, {orphans} orphan folders, "
        f"{len(removed['temp_files'])} temp files, {removed['index_entries']} index entries"
    )


def sweep_locked(
    conn: redis.Redis,
    data_dir: DataDir | str | os.PathLike[str],
    settings: Any,
    now: float | None = None,
    *,
    stop: threading.Event | None = None,
    lock_seconds: int | None = None,
) -> dict[str, Any] | None:
    """`sweep` while holding LOCK_KEY (SET NX EX); None when another process holds it."""
    token = uuid.uuid4().hex
    ttl = lock_seconds or max(60, 2 * int(settings.retention_sweep_seconds))
    if not conn.set(LOCK_KEY, token, nx=True, ex=ttl):
        return None
    try:
        return sweep(conn, data_dir, settings, now, stop=stop)
    finally:
        with contextlib.suppress(redis.RedisError):
            conn.eval(_RELEASE, 1, LOCK_KEY, token)


class Sweeper:
    """The API's periodic sweep: an asyncio task that runs `sweep_locked` in a thread."""

    def __init__(self, conn: redis.Redis, data_dir: DataDir, settings: Any) -> None:
        self.conn, self.data_dir, self.settings = conn, data_dir, settings
        self.stop_event = threading.Event()
        self.task: asyncio.Task | None = None

    async def _loop(self) -> None:
        interval = float(self.settings.retention_sweep_seconds)
        while not self.stop_event.is_set():
            await asyncio.sleep(interval)
            try:
                removed = await asyncio.to_thread(
                    sweep_locked, self.conn, self.data_dir, self.settings, stop=self.stop_event
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed; trying again in %.0f s", interval)
                continue
            if removed is None:
                log.debug("retention sweep skipped: another process holds the lock")
            elif any(removed[k] for k in removed):
                log.info("retention sweep removed %s", summary(removed))

    def start(self) -> Sweeper:
        self.task = asyncio.create_task(self._loop(), name="lelastic-retention")
        return self

    async def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.task is None:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self.task, timeout)


def start_sweeper(conn: redis.Redis, data_dir: DataDir, settings: Any) -> Sweeper:
    """Start the periodic sweep on the running event loop (call from the lifespan)."""
    return Sweeper(conn, data_dir, settings).start()


async def stop_sweeper(sweeper: Sweeper | None) -> None:
    if sweeper is not None:
        await sweeper.stop()
