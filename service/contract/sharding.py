"""Sharded jobs: one similarity job cut into tiles that any number of workers run (RQ glue and rules).

A sharded job runs in three steps, all on the RQ queue the workers already listen on:

1. The job itself (`workers.tasks.run_job`) loads the data, measures θ once (training or uploaded
   weights, written as `weights.safetensors`), writes the rows and columns it compares, plans the tiles
   and queues every tile in one Redis pipeline (an RQ `Group` named after the job).
2. Each tile (`TILE_TASK`, args `(job id, I, J)`) computes the blocks (I, J) and, for a square job,
   (J, I) of the matrix, writes them in place into the matrix file and its rows' partial top-k lists,
   folds those into the running lists of its row blocks (under `acquire_fold`'s lock; a busy row block
   is left to the next tile or the reduce step), then adds its name to the job's tile set
   (`keys.job_tiles`, the counter barrier). The tile that completes the set queues the reduce step
   under a fixed id (`unique=True`: exactly once).
3. The reduce step (`REDUCE_TASK`) folds what is left, checks that every row block's list covers every
   column block, renames the matrix into place, clusters and marks the job succeeded.

A tile whose worker is lost runs again once (RQ `Retry(max=1)`); when it cannot, `on_tile_failure`
fails the job. This module imports no torch: the API resolves a job's mode with it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import redis
from rq import Queue, Retry
from rq.exceptions import AbandonedJobError, DuplicateJobError
from rq.group import Group
from rq.job import Callback, Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from service.contract import jobstate, keys, queue
from service.contract.settings import CommonSettings
from service.contract.spec import JobSpec

TILE_TASK = "workers.shards.run_tile"
REDUCE_TASK = "workers.shards.reduce_job"
#: RQ failure callback of tiles and of the reduce step (allowed by the workers' callback allowlist).
ON_TILE_FAILURE = "service.contract.sharding.on_tile_failure"
Mode = Literal["single", "sharded"]
log = logging.getLogger(__name__)


def resolve_mode(spec: JobSpec, n_rows: int | None, settings: CommonSettings) -> Mode:
    """The mode a job runs in: the spec's, or for `auto` sharded when n_rows exceeds `shard_above_n`
    (and the spec can run sharded at all)."""
    mode = spec.execution.mode
    if mode != "auto":
        return mode
    if n_rows is None or n_rows <= settings.shard_above_n or refusals(spec):
        return "single"
    return "sharded"


def refusals(spec: JobSpec) -> list[tuple[list[str], str, Any]]:
    """(loc, message, input) of every part of `spec` that cannot run sharded, with the reason."""
    found: list[tuple[list[str], str, Any]] = []
    sim = spec.similarity
    if sim.schedule == "trajectory":
        found.append(
            (
                ["body", "similarity", "schedule"],
                "schedule 'trajectory' is sequential (each SGD step starts from the θ the previous one left), "
                "so it cannot be cut into tiles; use schedule 'fixed' or execution.mode 'single'",
                sim.schedule,
            )
        )
    if sim.repeats > 1:
        found.append(
            (
                ["body", "similarity", "repeats"],
                "a sharded job measures θ once (one model seed); use repeats 1 or execution.mode 'single'",
                sim.repeats,
            )
        )
    return found


def plan(n_rows: int, n_cols: int, block: int, *, square: bool) -> list[tuple[int, int]]:
    """The tiles (I, J) of an n_rows × n_cols matrix in blocks of `block`: for a square job (rows and
    columns the same examples) only I ≤ J, each tile writing (I, J) and (J, I); otherwise every tile."""
    row_blocks, col_blocks = math.ceil(n_rows / block), math.ceil(n_cols / block)
    if square:
        return [(i, j) for i in range(row_blocks) for j in range(i, row_blocks)]
    return [(i, j) for i in range(row_blocks) for j in range(col_blocks)]


def tile_name(i: int, j: int) -> str:
    return f"{i}-{j}"


def tile_job_id(job_id: str, i: int, j: int) -> str:
    """The RQ job id of tile (I, J) of lelastic job `job_id`."""
    return f"{job_id}-t{i}-{j}"


def reduce_job_id(job_id: str) -> str:
    """The RQ job id of the reduce step of lelastic job `job_id` (fixed: queued once)."""
    return f"{job_id}-reduce"


def tile_queue_name(settings: CommonSettings) -> str:
    return settings.tile_queue or settings.queue


def _queue(conn: redis.Redis, settings: CommonSettings) -> Queue:
    return Queue(
        tile_queue_name(settings), connection=conn, serializer=JSONSerializer, default_timeout=settings.job_timeout
    )


def _step_options(settings: CommonSettings, *, result_ttl: int) -> dict[str, Any]:
    """The RQ options shared by every step a sharded job queues (its tiles and its reduce step): the job
    time limit, its result and its failure kept `result_ttl` seconds, one retry, then `on_tile_failure`."""
    return {
        "timeout": settings.job_timeout,
        "result_ttl": result_ttl,
        "failure_ttl": result_ttl,
        "retry": Retry(max=1),
        "on_failure": Callback(ON_TILE_FAILURE),
    }


def enqueue_tiles(
    conn: redis.Redis, settings: CommonSettings, job_id: str, tiles: Sequence[tuple[int, int]], *, result_ttl: int
) -> None:
    """Queue every tile of job `job_id` in one Redis pipeline (an RQ group named after the job)."""
    tile_queue = _queue(conn, settings)
    datas = [
        Queue.prepare_data(
            TILE_TASK,
            args=(job_id, i, j),
            job_id=tile_job_id(job_id, i, j),
            description=f"lelastic job {job_id} tile {tile_name(i, j)}",
            **_step_options(settings, result_ttl=result_ttl),
        )
        for i, j in tiles
    ]
    group = Group.create(connection=conn, name=job_id)
    for start in range(0, len(datas), 1000):  # one pipeline per thousand tiles bounds the request size
        with conn.pipeline() as pipe:
            group.enqueue_many(tile_queue, datas[start : start + 1000], pipeline=pipe)
            pipe.execute()


def tile_done(conn: redis.Redis, job_id: str, name: str, *, ttl: int) -> int:
    """Record tile `name` of the job as written; returns how many distinct tiles are written now
    (idempotent: a tile run twice counts once)."""
    with conn.pipeline() as pipe:
        pipe.sadd(keys.job_tiles(job_id), name)
        pipe.scard(keys.job_tiles(job_id))
        pipe.expire(keys.job_tiles(job_id), ttl)
        _, count, _ = pipe.execute()
    return int(count)


def tiles_written(conn: redis.Redis, job_id: str) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else str(m) for m in conn.smembers(keys.job_tiles(job_id))}


def forget_tiles(conn: redis.Redis, job_id: str) -> None:
    conn.delete(keys.job_tiles(job_id))


#: Seconds a fold lock lives when its holder dies (a fold takes milliseconds: it reads and writes one
#: row block's [block, k] lists).
FOLD_LOCK_SECONDS = 60
_RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def acquire_fold(conn: redis.Redis, job_id: str, row_block: int, *, wait: float = 0.0) -> str | None:
    """A token once this process holds the lock of the job's row block `row_block`; None when another
    process still holds it after `wait` seconds."""
    key, token = keys.job_fold_lock(job_id, row_block), uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while not conn.set(key, token, nx=True, ex=FOLD_LOCK_SECONDS):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    return token


def holds_fold(conn: redis.Redis, job_id: str, row_block: int, token: str) -> bool:
    """Whether `token` still holds the row block's lock (it expires after FOLD_LOCK_SECONDS)."""
    return conn.get(keys.job_fold_lock(job_id, row_block)) == token.encode()


def release_fold(conn: redis.Redis, job_id: str, row_block: int, token: str) -> None:
    """Release the row block's lock if `token` still holds it."""
    conn.eval(_RELEASE_IF_HELD, 1, keys.job_fold_lock(job_id, row_block), token)


def enqueue_reduce(conn: redis.Redis, settings: CommonSettings, job_id: str, *, result_ttl: int) -> bool:
    """Queue the reduce step of the job, once: False when it was queued already."""
    try:
        _queue(conn, settings).enqueue_call(
            REDUCE_TASK,
            args=(job_id,),
            job_id=reduce_job_id(job_id),
            description=f"lelastic job {job_id} reduce",
            unique=True,
            **_step_options(settings, result_ttl=result_ttl),
        )
    except DuplicateJobError:
        return False
    return True


# Delete each of KEYS (RQ job hashes) whose status is still `queued`; returns how many. A worker that
# pops such a job's id from the queue finds no job and moves on (RQ skips ids without a hash), so no
# work-horse starts for it. Ids already popped and started keep their hash and stop by their watchdog.
_DROP_QUEUED = """
local dropped = 0
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'status') == 'queued' then
    redis.call('DEL', KEYS[i])
    dropped = dropped + 1
  end
end
return dropped
"""
#: RQ jobs looked at by one call of the drop script (bounds how long one call holds the server).
DROP_CHUNK = 1000


def drop_queued(conn: redis.Redis, job_id: str, plan_info: dict[str, Any]) -> int:
    """Delete the RQ jobs of job `job_id`'s tiles and reduce step that no worker has started (a canceled
    job's tiles never start); returns how many there were. Costs O(tiles), never a scan of the queue:
    the ids left in the queue are skipped by workers at no cost."""
    tiles = plan(
        int(plan_info["n_rows"]), int(plan_info["n_cols"]), int(plan_info["block"]), square=bool(plan_info["square"])
    )
    ids = [tile_job_id(job_id, i, j) for i, j in tiles] + [reduce_job_id(job_id)]
    dropped = 0
    for start in range(0, len(ids), DROP_CHUNK):
        chunk = [Job.key_for(rq_id) for rq_id in ids[start : start + DROP_CHUNK]]
        dropped += int(conn.eval(_DROP_QUEUED, len(chunk), *chunk))
    conn.delete(Group.get_key(job_id))
    return dropped


def write_plan(conn: redis.Redis, job_id: str, info: dict[str, Any]) -> None:
    """Store the sharded run's plan (tiles, block, shape, fan-out time) in the job record's `sharding`."""
    conn.hset(keys.job(job_id), "sharding", json.dumps(info))


def read_plan(conn: redis.Redis, job_id: str) -> dict[str, Any] | None:
    raw = conn.hget(keys.job(job_id), "sharding")
    return json.loads(raw) if raw else None


def tile_progress(done: int, total: int, started_at: float, now: float | None = None) -> tuple[dict[str, Any], str]:
    """({done, total, per_second, eta_seconds}, message) of `done` of `total` tiles since `started_at`
    (eta_seconds null until a tile is done)."""
    elapsed = max(1e-6, (now or time.time()) - started_at)
    rate = done / elapsed
    left = (total - done) / rate if rate > 0 else None
    eta = f"about {left:.0f} s left" if left is not None else "time left unknown"
    tiles = {
        "done": done,
        "total": total,
        "per_second": round(rate, 4),
        "eta_seconds": round(left, 1) if left is not None else None,
    }
    return tiles, f"tiles {done}/{total} done, {rate:.2f} tiles/s, {eta}"


def on_tile_failure(
    job: Job,
    connection: redis.Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """RQ failure callback of a tile or reduce step: with no retry left, the lelastic job fails with
    the reason; a retry is left to RQ. Never raises (it runs inside RQ's bookkeeping)."""
    try:
        if job.retries_left and job.retries_left > 0:
            queue.note_requeued(job)
            return
        job_id = str(job.args[0])
        if exc_type is not None and issubclass(exc_type, AbandonedJobError):
            why = "worker lost twice (killed, crashed or cut off from Redis)"
        elif exc_type is not None and issubclass(exc_type, JobTimeoutException):
            why = "timeout: it ran past the job time limit"
        else:
            why = f"{getattr(exc_type, '__name__', 'error')}: {exc_value}"
        part = "reduce step" if job.id == reduce_job_id(job_id) else f"tile {tile_name(*job.args[1:3])}"
        jobstate.mark_failed(connection, job_id, f"{part} failed: {why}")
    except Exception:  # noqa: BLE001 - a callback error must not stop RQ's bookkeeping
        log.exception("tile %s: could not update the job after an RQ failure", getattr(job, "id", "?"))
