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

Only the API process sweeps periodically; `SET NX EX` on `keys.RETENTION_LOCK` makes sure one sweep
runs at a time across API processes (and `lelastic gc`).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rq.job import Job

from service.contract import keys, records
from service.contract.jobstate import ACTIVE, FINAL
from service.contract.storage import DataDir

log = logging.getLogger("lelastic.retention")

#: Seconds a folder or temp file without a record must have existed before it counts as an orphan.
ORPHAN_AGE = 3600.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record_ids(conn: redis.Redis, key_for: keys.KeyFor) -> list[str]:
    """Ids of every record whose key is `key_for(id)` (so a job's hash, not its event stream)."""
    out = []
    for key in conn.scan_iter(match=keys.pattern(key_for), count=1000):
        record_id = keys.id_in(_text(key), key_for)
        if record_id is not None:
            out.append(record_id)
    return out


def _job_ids(conn: redis.Redis) -> list[str]:
    return _record_ids(conn, keys.job)


def _dataset_ids(conn: redis.Redis) -> list[str]:
    return _record_ids(conn, keys.dataset)


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


def active_jobs_by_upload(conn: redis.Redis, tenant: str | None = None) -> dict[str, list[str]]:
    """Upload id → ids of the queued or running jobs that name it.

    Looks at the tenant's jobs (in the order of its jobs index), or at every job when `tenant` is None
    (then in id order: a key scan has none of its own).
    """
    if tenant is None:
        job_ids = sorted(_job_ids(conn))
    else:
        job_ids = [_text(member) for member in conn.zrange(keys.jobs_index(tenant), 0, -1)]
    pipe = conn.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), "status", "spec")
    users: dict[str, list[str]] = {}
    for job_id, (status, spec) in zip(job_ids, pipe.execute(), strict=True):
        if status is not None and _text(status) in ACTIVE:
            for upload_id in _uploads_named(_text(spec) if spec is not None else None):
                users.setdefault(upload_id, []).append(job_id)
    return users


#: Attempts of `delete_upload_if_unused` while jobs keep being created meanwhile.
DELETE_ATTEMPTS = 20


def delete_upload_if_unused(
    conn: redis.Redis, dataset_id: str, tenant: str, active_users: Callable[[], list[str]]
) -> list[str] | None:
    """Delete the upload's record unless `active_users()` names a job; returns those jobs ([] once
    deleted, None when jobs kept being created through every attempt).

    Atomic against a job created meanwhile: the tenant's jobs index and the record are WATCHed while
    the users are read, so a job recorded in between makes the delete start over (and then see it). A
    job submitted after the delete re-checks its uploads once recorded (`uploads_exist`).
    """
    for _ in range(DELETE_ATTEMPTS):
        with conn.pipeline() as pipe:
            try:
                pipe.watch(keys.jobs_index(tenant), keys.dataset(dataset_id))
                users = active_users()
                if users:
                    pipe.unwatch()
                    return users
                pipe.multi()
                pipe.delete(keys.dataset(dataset_id))
                pipe.zrem(keys.datasets_index(tenant), dataset_id)
                pipe.execute()
                return []
            except redis.WatchError:
                continue
    return None


def uploads_exist(conn: redis.Redis, spec: dict[str, Any]) -> bool:
    """Whether every upload a job spec names still has its record."""
    return all(conn.exists(keys.dataset(upload_id)) for upload_id in _uploads_named(json.dumps(spec)))


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
        return bool(conn.delete(Job.key_for(job_id)))


def _timestamp(value: Any) -> float | None:
    """A record's seconds-since-the-epoch field, or None when it is missing or not a number."""
    try:
        return float(_text(value)) if value else None
    except ValueError:
        return None


def _tenant(value: Any) -> str:
    return _text(value) if value is not None else records.DEFAULT_TENANT


def _empty_removal() -> dict[str, Any]:
    return {
        "jobs": [],
        "datasets": [],
        "orphan_job_dirs": [],
        "orphan_dataset_dirs": [],
        "temp_files": [],
        "index_entries": 0,
    }


@dataclass
class _Pass:
    """One retention pass: its cutoffs, its stop signal and what it has removed so far."""

    conn: redis.Redis
    data_dir: DataDir
    now: float
    job_cutoff: float
    dataset_cutoff: float
    stop: threading.Event | None
    removed: dict[str, Any] = field(default_factory=_empty_removal)

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()


def _finished_job(conn: redis.Redis, job_id: str) -> tuple[str, float, str] | None:
    """(status, finished_at, tenant) of a final job; None for an active job or one without a finish time."""
    status, finished_at, tenant = conn.hmget(keys.job(job_id), "status", "finished_at", "tenant")
    if status is None or _text(status) not in FINAL:
        return None
    finished = _timestamp(finished_at)
    if finished is None:
        return None
    return _text(status), finished, _tenant(tenant)


def _remove_expired_jobs(sweep_pass: _Pass) -> bool:
    """Finished jobs older than the job cutoff: record, events, index entry, RQ job and folder."""
    conn = sweep_pass.conn
    for job_id in _job_ids(conn):
        if sweep_pass.stopping():
            return False
        finished_job = _finished_job(conn, job_id)
        if finished_job is None or finished_job[1] >= sweep_pass.job_cutoff:
            continue
        status, finished, tenant = finished_job
        _delete_rq_job(conn, job_id)
        records.delete_job_record(conn, job_id, tenant)
        sweep_pass.data_dir.remove_job(job_id)
        sweep_pass.removed["jobs"].append(job_id)
        log.info(
            "removed job %s (%s, finished %.0f s ago)",
            job_id,
            status,
            sweep_pass.now - finished,
            extra={"removed_job": job_id},
        )
    return True


def _expired_uploads(sweep_pass: _Pass) -> list[tuple[str, str, float]]:
    """(id, tenant, created_at) of every upload created before the dataset cutoff."""
    expired = []
    for dataset_id in _dataset_ids(sweep_pass.conn):
        created_at, tenant = sweep_pass.conn.hmget(keys.dataset(dataset_id), "created_at", "tenant")
        created = _timestamp(created_at)
        if created is not None and created < sweep_pass.dataset_cutoff:
            expired.append((dataset_id, _tenant(tenant), created))
    return expired


def _remove_expired_uploads(sweep_pass: _Pass) -> bool:
    """Uploads older than the dataset cutoff that no queued or running job names: record, index entry, folder."""
    expired = _expired_uploads(sweep_pass)
    if not expired:
        return True
    # Read the jobs' specs only now, after the candidates: a job queued meanwhile is seen.
    in_use = active_jobs_by_upload(sweep_pass.conn)
    for dataset_id, tenant, created in expired:
        if sweep_pass.stopping():
            return False
        if dataset_id in in_use:
            continue

        def users(dataset_id: str = dataset_id, tenant: str = tenant) -> list[str]:
            return active_jobs_by_upload(sweep_pass.conn, tenant).get(dataset_id, [])

        if delete_upload_if_unused(sweep_pass.conn, dataset_id, tenant, users) != []:
            continue
        sweep_pass.data_dir.remove_dataset(dataset_id)
        sweep_pass.removed["datasets"].append(dataset_id)
        log.info("removed upload %s (created %.0f s ago)", dataset_id, sweep_pass.now - created)
    return True


def _drop_dangling_members(conn: redis.Redis, index: Any, key_of: Callable[[str], str]) -> int:
    """Remove the members of one index whose record `key_of(member)` is gone; returns how many."""
    members = [_text(m) for m in conn.zrange(index, 0, -1)]
    pipe = conn.pipeline(transaction=False)
    for member in members:
        pipe.exists(key_of(member))
    dangling = [m for m, exists in zip(members, pipe.execute(), strict=True) if not exists]
    return conn.zrem(index, *dangling) if dangling else 0


def _remove_dangling_index_entries(sweep_pass: _Pass) -> bool:
    """Index entries (jobs and datasets of every tenant) whose record no longer exists."""
    conn = sweep_pass.conn
    for index_for, key_of in ((keys.jobs_index, keys.job), (keys.datasets_index, keys.dataset)):
        for index in conn.scan_iter(match=keys.pattern(index_for), count=1000):
            sweep_pass.removed["index_entries"] += _drop_dangling_members(conn, index, key_of)
    return True


def _remove_orphan_folders(sweep_pass: _Pass) -> bool:
    """Folders under `jobs/` and `datasets/` older than ORPHAN_AGE whose record does not exist."""
    for sub, key_of, bucket in (
        ("jobs", keys.job, "orphan_job_dirs"),
        ("datasets", keys.dataset, "orphan_dataset_dirs"),
    ):
        with contextlib.suppress(FileNotFoundError):
            for entry in (sweep_pass.data_dir.root / sub).iterdir():
                if sweep_pass.stopping():
                    return False
                if (
                    not entry.is_dir()
                    or _age(entry, sweep_pass.now) < ORPHAN_AGE
                    or sweep_pass.conn.exists(key_of(entry.name))
                ):
                    continue
                if _remove_tree(entry):
                    sweep_pass.removed[bucket].append(entry.name)
                    log.info("removed orphan folder %s/%s", sub, entry.name)
    return True


def _remove_temp_files(sweep_pass: _Pass) -> bool:
    """`.upload-*.tmp` files of interrupted uploads, once they are older than ORPHAN_AGE."""
    for temp in sweep_pass.data_dir.root.glob(".upload-*.tmp"):
        if _age(temp, sweep_pass.now) >= ORPHAN_AGE:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                sweep_pass.removed["temp_files"].append(temp.name)
    return True


#: The steps of a pass, in order; each returns False when it saw the stop signal (the pass ends there).
_STEPS: tuple[Callable[[_Pass], bool], ...] = (
    _remove_expired_jobs,
    _remove_expired_uploads,
    _remove_dangling_index_entries,
    _remove_orphan_folders,
    _remove_temp_files,
)


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
    now = time.time() if now is None else now
    sweep_pass = _Pass(
        conn=conn,
        data_dir=data_dir if isinstance(data_dir, DataDir) else DataDir(data_dir),
        now=now,
        job_cutoff=now - settings.job_retention_seconds,
        dataset_cutoff=now - settings.dataset_retention_seconds,
        stop=stop,
    )
    for step in _STEPS:
        if not step(sweep_pass):
            break
    return sweep_pass.removed


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
    """`sweep` while holding `keys.RETENTION_LOCK` (SET NX EX); None when another process holds it."""
    token = uuid.uuid4().hex
    ttl = lock_seconds or max(60, 2 * int(settings.retention_sweep_seconds))
    if not conn.set(keys.RETENTION_LOCK, token, nx=True, ex=ttl):
        return None
    try:
        return sweep(conn, data_dir, settings, now, stop=stop)
    finally:
        with contextlib.suppress(redis.RedisError):
            conn.eval(_RELEASE, 1, keys.RETENTION_LOCK, token)


class Sweeper:
    """The API's periodic sweep: an asyncio task that runs `sweep_locked` in a thread."""

    def __init__(self, conn: redis.Redis, data_dir: DataDir, settings: Any) -> None:
        self.conn, self.data_dir, self.settings = conn, data_dir, settings
        self.stop_event = threading.Event()
        self.task: asyncio.Task[None] | None = None

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
