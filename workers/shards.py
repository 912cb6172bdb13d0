"""Sharded jobs on the worker side: fan-out (`start`), the tiles (`run_tile`) and the fan-in (`reduce_job`).

`workers.tasks.run_job` calls `start` for a job whose spec says `execution.mode: sharded`; the rules, the
queue glue and the counter barrier are in `service.contract.sharding`. Files, in the job's folder::

    weights.safetensors       θ, measured once by `start`; every tile loads it
    primary_index.npy         dataset rows of the matrix's rows; observed_index.npy those of its columns
    shards/rows.npy           the rows' examples (float32 [n_rows, ...]); shards/cols.npy the columns'
                              (rectangular jobs only); tiles read their blocks memory-mapped
    shards/train.json         the training report of θ (null when θ was not trained)
    .similarity.npy.partial   the full matrix (float32 [n_rows, n_cols], .npy) while tiles write into it
    shards/part-I-J.npz       a tile's partial top-k lists of rows I over columns J (and part-J-I.npz,
                              square jobs), folded into shards/list-I.npz as tiles complete (folds.py)
    shards/land-I-J.npy       with Nyström landmarks: rows I at the landmark columns in block J
    similarity.npy            the full matrix, renamed into place by the reduce step once complete
    neighbors_index.npy       int32 [n_rows, k]: the columns of each row's k nearest neighbours
    neighbors_value.npy       float32 [n_rows, k]: their similarities (sorted, ties by the lower column)

A tile never creates a folder: once a canceled or failed job's folder is removed, a tile still running
fails to write and finds the job's status, so nothing is left on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import redis
import torch

from service.contract import jobstate, keys, logs, records, sharding
from service.contract.jobstate import JobStatus
from service.contract.settings import Settings, get_settings
from service.contract.spec import JobSpec
from service.contract.storage import DataDir, atomic_open
from workers import folds, pipeline
from workers.compute import bigcluster, clustering, metrics, models, tiles
from workers.data import resolve, select
from workers.errors import JobCanceled, JobFailure

log = logging.getLogger("lelastic.worker")

SHARDS = "shards"
PARTIAL_MATRIX = ".similarity.npy.partial"
#: Seconds between two status reads of a running tile's watchdog.
WATCH_INTERVAL = 0.5


# ----------------------------------------------------------------------------------------- fan-out


def start(
    conn: redis.Redis,
    settings: Settings,
    spec: JobSpec,
    *,
    job_id: str,
    data_dir: DataDir,
    report: pipeline.Progress,
    fan_out: bool = True,
) -> dict[str, Any]:
    """Measure θ, write what the tiles read, plan the tiles and queue them all; returns the plan.

    The job stays `running`: the tile that completes the barrier queues the reduce step, which ends it.
    Without `fan_out` nothing is queued (`run_inline` runs the tiles itself).
    """
    existing = sharding.read_plan(conn, job_id)
    if fan_out and existing is not None and existing.get("fanned_out"):  # a re-run after its worker was lost
        return existing
    progress = pipeline.StageProgress(report)
    progress("load", 0.0, "loading the dataset")
    device = pipeline.pick_device(settings.device)
    data = resolve(spec, data_dir)
    observed = select(spec.observed, data.y, data.X.shape[0], field="observed", default_all=False)
    square = spec.observed is None or np.array_equal(observed, data.primary)
    columns = data.primary if square else observed
    n_rows, n_cols = int(data.primary.size), int(columns.size)
    block = spec.execution.block
    plan = sharding.plan(n_rows, n_cols, block, square=square)
    if len(plan) > settings.max_tiles:
        raise JobFailure(
            f"{len(plan)} tiles of {block} × {block} exceed max_tiles = {settings.max_tiles} "
            "(LELASTIC_MAX_TILES); use a larger execution.block"
        )
    model, training = pipeline.measure_theta(
        spec, data, seed=spec.seed, device=device, data_dir=data_dir, progress=progress.within("train")
    )
    job_dir = data_dir.job_dir(job_id)
    shard_dir = job_dir / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    progress("similarity", 0.0, "writing θ and the examples for the tiles")
    _save_weights(job_dir, model, spec, list(data.X.shape[1:]))
    _save_npy(job_dir / "primary_index.npy", data.primary.astype(np.int64))
    _save_npy(shard_dir / "rows.npy", data.X[data.primary])
    if not square:
        _save_npy(job_dir / "observed_index.npy", columns.astype(np.int64))
        _save_npy(shard_dir / "cols.npy", data.X[columns])
    with atomic_open(shard_dir / "train.json", "w") as handle:
        json.dump(training, handle)
    matrix = wants_matrix(spec, n_rows, n_cols, settings)
    landmarks = square and big_clustering(spec, n_rows, matrix, settings) == "nystrom_kernel_kmeans"
    if landmarks:
        count = settings.nystrom_landmarks
        _save_npy(shard_dir / "landmarks.npy", bigcluster.choose_landmarks(n_rows, count, spec.seed))
    if matrix:
        np.lib.format.open_memmap(job_dir / PARTIAL_MATRIX, mode="w+", dtype=np.float32, shape=(n_rows, n_cols)).flush()
    info = {
        "tiles": len(plan),
        "block": block,
        "n_rows": n_rows,
        "n_cols": n_cols,
        "square": bool(square),
        "matrix": matrix,
        "landmarks": landmarks,
        "k": min(spec.output.neighbors, n_cols - 1 if square else n_cols),
        "started_at": time.time(),
        "fanout_at": time.time(),
    }
    sharding.forget_tiles(conn, job_id)
    sharding.write_plan(conn, job_id, info)
    if not fan_out:
        return info
    progress("similarity", 0.0, f"queueing {len(plan)} tiles")
    sharding.enqueue_tiles(conn, settings, job_id, plan, result_ttl=settings.result_ttl)
    info["fanned_out"] = True
    sharding.write_plan(conn, job_id, info)
    progress_tiles, message = sharding.tile_progress(0, len(plan), info["fanout_at"])
    records.set_progress(
        conn, job_id, fraction=_fraction(0, len(plan)), stage="tiles", message=message, tiles=progress_tiles
    )
    return info


def run_inline(
    conn: redis.Redis,
    settings: Settings,
    spec: JobSpec,
    *,
    job_id: str,
    data_dir: DataDir,
    report: pipeline.Progress,
) -> dict[str, Any]:
    """A single job over tiles (observed columns): θ, every tile and the reduce step in this process, with
    progress (and cancellation) through `report`. Returns the result."""
    info = start(conn, settings, spec, job_id=job_id, data_dir=data_dir, report=report, fan_out=False)
    tiles_planned = sharding.plan(info["n_rows"], info["n_cols"], info["block"], square=info["square"])
    progress = pipeline.StageProgress(report)
    job_dir = data_dir.job_dir(job_id)
    for done, (i, j) in enumerate(tiles_planned):
        progress("similarity", done / len(tiles_planned), f"tiles {done}/{len(tiles_planned)} done")
        _compute_tile(conn, job_id, spec, info, job_dir, i, j, settings)
    progress("cluster", 0.0, "merging the tiles")
    return _reduce(conn, spec, info, job_id, data_dir, settings, mode="single")


def big_clustering(spec: JobSpec, n_rows: int, matrix: bool, settings: Settings) -> str | None:
    """The clustering method of a square sharded job that the exact methods cannot cluster (too many rows,
    or no full matrix): nystrom_kernel_kmeans or knn_spectral; None when the exact methods run (or none)."""
    method = spec.clustering_method()
    if spec.clustering is None or method is None or (matrix and n_rows <= settings.exact_clustering_max_n):
        return None
    return "nystrom_kernel_kmeans" if method == "kernel_kmeans" else "knn_spectral"


def wants_matrix(spec: JobSpec, n_rows: int, n_cols: int, settings: Settings) -> bool:
    """Whether a sharded job writes its full matrix: output.matrix true, or auto within the disk budget."""
    if spec.output.matrix == "auto":
        return 4 * n_rows * n_cols <= settings.max_sharded_matrix_bytes
    return bool(spec.output.matrix)


def _fraction(done: int, total: int) -> float:
    """The job's progress at `done` of `total` tiles: tiles span 0.05 .. 0.95, the reduce step the rest."""
    return 0.05 + 0.9 * done / max(1, total)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def _save_weights(job_dir: Path, model: torch.nn.Module, spec: JobSpec, input_shape: list[int]) -> None:
    from safetensors.torch import save

    from service.contract.storage import atomic_write_bytes

    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in model.state_dict().items()}
    metadata = pipeline.weights_metadata(spec, input_shape)
    atomic_write_bytes(job_dir / "weights.safetensors", save(tensors, metadata=metadata))


# ------------------------------------------------------------------------------------------- tiles


class TileStopped(Exception):
    """The job stopped being `running` while a tile computed (canceled, or failed by another tile)."""


class Watchdog:
    """Reads the job's status every WATCH_INTERVAL s while a tile computes; once it is no longer
    `running`, raises TileStopped in the main thread (at its next Python instruction: a running matrix
    product finishes first)."""

    def __init__(self, conn: redis.Redis, job_id: str) -> None:
        self.conn, self.job_id = conn, job_id
        self.fired = False
        self._lock = threading.Lock()
        self._armed = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watchdog:
        self._previous = signal.signal(signal.SIGUSR1, self._raise)
        self._armed = True
        self._thread.start()
        return self

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        raise TileStopped(f"job {self.job_id} is no longer running")

    def _watch(self) -> None:
        import _thread

        while not self._done.wait(WATCH_INTERVAL):
            with contextlib.suppress(redis.exceptions.RedisError):
                status = self.conn.hget(keys.job(self.job_id), "status")
                if status is None or records.text(status) != JobStatus.RUNNING:
                    with self._lock:
                        if self._armed:
                            self.fired = True
                            self._armed = False
                            _thread.interrupt_main(signal.SIGUSR1)
                    return

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
        self._done.set()

    def __exit__(self, *exc: object) -> None:
        self.disarm()
        self._thread.join()
        signal.signal(signal.SIGUSR1, self._previous)


def _connect(settings: Settings) -> redis.Redis:
    if not settings.redis_url:
        raise RuntimeError("LELASTIC_REDIS_URL is not set: the worker needs the Redis/Valkey server's URL")
    return records.connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout)


@contextlib.contextmanager
def _job_logging(conn: redis.Redis, job_id: str, settings: Settings) -> Any:
    if not logs.is_configured():
        logs.configure_logging(settings)
    tenant = None
    with contextlib.suppress(Exception):
        raw = conn.hget(keys.job(job_id), "tenant")
        tenant = records.text(raw) if raw is not None else None
    with logs.job_context(job_id, tenant):
        yield


def run_tile(job_id: str, i: int, j: int) -> str:
    """Compute tile (I, J) of sharded job `job_id`: its block(s) of the matrix and partial top-k lists.
    Returns what became of it: written, canceled, failed or skipped (the job was not running)."""
    settings = get_settings()
    conn = _connect(settings)
    data_dir = DataDir(settings.data_dir)
    name = sharding.tile_name(i, j)
    with _job_logging(conn, job_id, settings):
        record = records.get_job(conn, job_id)
        plan = sharding.read_plan(conn, job_id)
        if record is None or record.status != JobStatus.RUNNING or plan is None:
            _discard(conn, data_dir, job_id)
            return "skipped"
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        started = time.monotonic()
        try:
            with Watchdog(conn, job_id) as watchdog:
                try:
                    spec = JobSpec.model_validate(record.spec)
                    _compute_tile(conn, job_id, spec, plan, data_dir.job_dir(job_id), i, j, settings)
                finally:
                    watchdog.disarm()
        except (TileStopped, JobCanceled):
            _discard(conn, data_dir, job_id)
            return "canceled"
        except FileNotFoundError as error:
            if _status(conn, job_id) != JobStatus.RUNNING:  # its folder was removed: canceled or failed
                _discard(conn, data_dir, job_id)
                return "canceled"
            return _fail(conn, data_dir, job_id, f"tile {name}: storage error: {error}")
        except JobFailure as error:
            return _fail(conn, data_dir, job_id, f"tile {name}: {error}")
        except torch.cuda.OutOfMemoryError:
            return _fail(conn, data_dir, job_id, f"tile {name}: out of GPU memory: use a smaller execution.block")
        except MemoryError:
            return _fail(conn, data_dir, job_id, f"tile {name}: out of memory: use a smaller execution.block")
        except OSError as error:
            return _fail(conn, data_dir, job_id, f"tile {name}: storage error: {error.strerror or error}")
        except Exception as error:  # a bug: fail the job with a reason, keep the worker
            log.error("tile %s of job %s failed:\n%s", name, job_id, traceback.format_exc())
            return _fail(conn, data_dir, job_id, f"tile {name}: internal error: {type(error).__name__}: {error}")
        done = sharding.tile_done(conn, job_id, name, ttl=settings.result_ttl)
        total = int(plan["tiles"])
        progress, message = sharding.tile_progress(done, total, float(plan["fanout_at"]))
        if _status(conn, job_id) == JobStatus.RUNNING:
            records.set_progress(
                conn, job_id, fraction=_fraction(done, total), stage="tiles", message=message, tiles=progress
            )
        seconds, peak = time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log.info(
            "tile %s written in %.2f s (%d/%d, %.2f tiles/s, peak RSS %.0f MiB)",
            name,
            seconds,
            done,
            total,
            progress["per_second"],
            peak,
            extra={"tile": name, "tile_seconds": round(seconds, 4), "peak_rss_mib": round(peak, 1)},
        )
        if done >= total:
            sharding.enqueue_reduce(conn, settings, job_id, result_ttl=settings.result_ttl)
        return "written"


def _status(conn: redis.Redis, job_id: str) -> str | None:
    raw = conn.hget(keys.job(job_id), "status")
    return records.text(raw) if raw is not None else None


def _compute_tile(
    conn: redis.Redis,
    job_id: str,
    spec: JobSpec,
    plan: dict[str, Any],
    job_dir: Path,
    i: int,
    j: int,
    settings: Settings,
) -> None:
    """Tile (I, J): its block(s) of the matrix when the job writes one, its partial top-k lists folded
    into its row blocks' lists (a busy row block is left to a later fold), its landmark columns."""
    block, square = int(plan["block"]), bool(plan["square"])
    n_rows, n_cols = int(plan["n_rows"]), int(plan["n_cols"])
    shard_dir = job_dir / SHARDS
    rows = np.load(shard_dir / "rows.npy", mmap_mode="r")
    cols = rows if square else np.load(shard_dir / "cols.npy", mmap_mode="r")
    rs, cs = slice(i * block, min(n_rows, (i + 1) * block)), slice(j * block, min(n_cols, (j + 1) * block))
    device = pipeline.pick_device(settings.device)
    model = models.build_model(spec.model, list(rows.shape[1:]), seed=spec.seed).to(device)
    from safetensors.torch import load_file

    models.load_weights(model, load_file(str(job_dir / "weights.safetensors"), device=str(device)))
    same = square and i == j
    X_rows = torch.from_numpy(np.ascontiguousarray(rows[rs])).to(device)
    X_cols = None if same else torch.from_numpy(np.ascontiguousarray(cols[cs])).to(device)
    sim = spec.similarity
    upper, lower = tiles.tile_similarity(
        model,
        X_rows,
        X_cols,
        kind=sim.kind,
        step=sim.step,
        loss=spec.loss,
        symmetrize=sim.symmetrize,
        normalize=sim.normalize,
    )
    if not bool(torch.isfinite(upper).all()) or (lower is not None and not bool(torch.isfinite(lower).all())):
        raise pipeline.non_finite_failure("the similarity", X_rows, X_cols)
    k = int(plan["k"])
    sides = [(i, j, upper, cs)] + ([(j, i, lower, rs)] if square and not same and lower is not None else [])
    marks = np.load(shard_dir / "landmarks.npy") if plan.get("landmarks") else None
    for row_block, col_block, block_values, columns_of in sides:
        columns, values = tiles.topk(block_values, k, col_offset=columns_of.start, exclude=0 if same else None)
        folds.write_atomic(folds.part_path(shard_dir, row_block, col_block), {"columns": columns, "values": values})
        if marks is not None:
            inside = marks[(marks >= columns_of.start) & (marks < columns_of.stop)] - columns_of.start
            land = _host(block_values[:, torch.from_numpy(inside).to(block_values.device)])
            folds.write_atomic(folds.land_path(shard_dir, row_block, col_block), {"land": land})
    if plan["matrix"]:
        matrix = np.load(job_dir / PARTIAL_MATRIX, mmap_mode="r+")
        matrix[rs, cs] = _host(upper)
        if square and not same:
            assert lower is not None
            matrix[cs, rs] = _host(lower)
        matrix.flush()
        del matrix
    for row_block, *_ in sides:
        folds.fold(conn, job_id, shard_dir, row_block, k)


def _host(t: torch.Tensor) -> np.ndarray:
    """A float32 host copy of a tile's tensor."""
    out: np.ndarray = np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
    return out


def _discard(conn: redis.Redis, data_dir: DataDir, job_id: str) -> None:
    """A canceled or failed job keeps no files (a succeeded one keeps its artifacts)."""
    status = _status(conn, job_id)
    if status is None or status in (JobStatus.CANCELED, JobStatus.FAILED):
        data_dir.remove_job(job_id)
        sharding.forget_tiles(conn, job_id)


def _fail(conn: redis.Redis, data_dir: DataDir, job_id: str, reason: str) -> str:
    jobstate.mark_failed(conn, job_id, reason, expected={JobStatus.RUNNING})
    _discard(conn, data_dir, job_id)
    log.warning("job %s failed: %s", job_id, reason)
    return JobStatus.FAILED


# ------------------------------------------------------------------------------------------ fan-in


def reduce_job(job_id: str) -> str:
    """The fan-in of sharded job `job_id`: check every tile's output, merge the top-k lists, move the
    matrix into place, cluster, write result.json and mark the job succeeded. Returns its status."""
    settings = get_settings()
    conn = _connect(settings)
    data_dir = DataDir(settings.data_dir)
    with _job_logging(conn, job_id, settings):
        record = records.get_job(conn, job_id)
        plan = sharding.read_plan(conn, job_id)
        if record is None or record.status != JobStatus.RUNNING or plan is None:
            _discard(conn, data_dir, job_id)
            return record.status if record is not None else "missing"
        try:
            with Watchdog(conn, job_id) as watchdog:
                try:
                    result = _reduce(conn, JobSpec.model_validate(record.spec), plan, job_id, data_dir, settings)
                finally:
                    watchdog.disarm()
        except (TileStopped, JobCanceled):
            _discard(conn, data_dir, job_id)
            return JobStatus.CANCELED
        except JobFailure as error:
            return _fail(conn, data_dir, job_id, str(error))
        except MemoryError:
            return _fail(conn, data_dir, job_id, "out of memory while reducing the tiles")
        except OSError as error:
            if _status(conn, job_id) != JobStatus.RUNNING:
                _discard(conn, data_dir, job_id)
                return JobStatus.CANCELED
            return _fail(conn, data_dir, job_id, f"storage error while reducing the tiles: {error.strerror or error}")
        except Exception as error:  # a bug: fail the job with a reason, keep the worker
            log.error("reduce of job %s failed:\n%s", job_id, traceback.format_exc())
            return _fail(conn, data_dir, job_id, f"internal error: {type(error).__name__}: {error}")
        moved = jobstate.mark_succeeded(conn, job_id, result)
        sharding.forget_tiles(conn, job_id)
        if not moved.done:
            _discard(conn, data_dir, job_id)
            return moved.before or "missing"
        return JobStatus.SUCCEEDED


def _reduce(
    conn: redis.Redis,
    spec: JobSpec,
    plan: dict[str, Any],
    job_id: str,
    data_dir: DataDir,
    settings: Settings,
    *,
    mode: str = "sharded",
) -> dict[str, Any]:
    started = time.time()
    job_dir = data_dir.job_dir(job_id)
    shard_dir = job_dir / SHARDS
    block, square = int(plan["block"]), bool(plan["square"])
    n_rows, n_cols, k = int(plan["n_rows"]), int(plan["n_cols"]), int(plan["k"])
    if plan["matrix"] and not (job_dir / PARTIAL_MATRIX).is_file():
        raise JobFailure("the matrix the tiles wrote into is gone")

    def report(fraction: float, message: str) -> None:
        records.set_progress(conn, job_id, fraction=0.95 + 0.05 * fraction, stage="reduce", message=message)

    report(0.0, "merging the neighbour lists")
    nystrom = _merge_neighbors(
        conn, job_id, job_dir, n_rows, n_cols, block, square, k, landmarks=bool(plan.get("landmarks"))
    )
    artifacts = ["neighbors_index.npy", "neighbors_value.npy", "primary_index.npy"]
    if not square:
        artifacts.append("observed_index.npy")
    if plan["matrix"]:
        os.replace(job_dir / PARTIAL_MATRIX, job_dir / "similarity.npy")
        artifacts.append("similarity.npy")
    artifacts.append("weights.safetensors")
    with open(shard_dir / "train.json", encoding="utf-8") as handle:
        training = json.load(handle)
    report(0.3, "clustering")
    result = _cluster(spec, plan, job_dir, data_dir, settings, nystrom)
    if result.get("clusters") is not None:
        _save_npy(job_dir / "clusters.npy", np.asarray(result["clusters"], dtype=np.int64))
        artifacts.append("clusters.npy")
    shutil.rmtree(shard_dir, ignore_errors=True)
    artifacts.append("result.json")
    fanout = float(plan["fanout_at"])
    result.update(
        n_cols=n_cols,
        execution={
            "mode": mode,
            "block": block,
            "tiles": int(plan["tiles"]),
            "square": square,
            "neighbors": k,
            "matrix": bool(plan["matrix"]),
        },
        training=training,
        timings={
            "tiles_seconds": round(started - fanout, 4),
            "reduce_seconds": round(time.time() - started, 4),
            "total_seconds": round(time.time() - float(plan["started_at"]), 4),
        },
        artifacts=artifacts,
        spec=spec.model_dump(mode="json"),
        versions=pipeline.versions(),
    )
    with atomic_open(job_dir / "result.json", "w") as out:
        json.dump(result, out, indent=1)
    report(1.0, "done")
    return result


def _merge_neighbors(
    conn: redis.Redis,
    job_id: str,
    job_dir: Path,
    n_rows: int,
    n_cols: int,
    block: int,
    square: bool,
    k: int,
    *,
    landmarks: bool,
) -> tuple[np.ndarray, np.ndarray] | None:
    """neighbors_index.npy and neighbors_value.npy from the row blocks' folded lists (folding the parts
    left), one row block at a time; with `landmarks`, also (C [n_rows, l] float32, the landmarks) from
    the tiles' landmark columns. JobFailure when a row block's list misses a column block."""
    shard_dir = job_dir / SHARDS
    index_tmp, value_tmp = job_dir / ".neighbors_index.npy.partial", job_dir / ".neighbors_value.npy.partial"
    index = np.lib.format.open_memmap(index_tmp, mode="w+", dtype=np.int32, shape=(n_rows, k))
    value = np.lib.format.open_memmap(value_tmp, mode="w+", dtype=np.float32, shape=(n_rows, k))
    marks = np.load(shard_dir / "landmarks.npy") if landmarks else np.zeros(0, np.int64)
    C = np.zeros((n_rows, marks.size), np.float32) if landmarks else None
    row_blocks, col_blocks = math.ceil(n_rows / block), math.ceil(n_cols / block)
    if square:
        col_blocks = row_blocks
    for r in range(row_blocks):
        rs = slice(r * block, min(n_rows, (r + 1) * block))
        if folds.fold(conn, job_id, shard_dir, r, k, wait=sharding.FOLD_LOCK_SECONDS + 5) is None:
            raise JobFailure(f"row block {r}: its neighbour list stayed locked by another process")
        stored = folds.read_list(shard_dir, r)
        missing = sorted(set(range(col_blocks)) - (stored[2] if stored else set()))
        if stored is None or missing:
            raise JobFailure(f"row block {r}: no top-k lists of column blocks {missing[:5]} (of {col_blocks})")
        index[rs], value[rs] = stored[0], stored[1]
        if C is not None:
            for c in range(col_blocks):  # the landmark columns that fall in column block c
                lo, hi = np.searchsorted(marks, [c * block, (c + 1) * block])
                C[rs, lo:hi] = np.load(folds.land_path(shard_dir, r, c))
    index.flush()
    value.flush()
    del index, value
    os.replace(index_tmp, job_dir / "neighbors_index.npy")
    os.replace(value_tmp, job_dir / "neighbors_value.npy")
    return (C, marks) if C is not None else None


def _cluster(
    spec: JobSpec,
    plan: dict[str, Any],
    job_dir: Path,
    data_dir: DataDir,
    settings: Settings,
    nystrom: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    """The result's `n`, `clusters`, `clustering`, `metrics` and `baselines`: by the exact methods on the
    full matrix up to `exact_clustering_max_n` rows, else by `big_clustering`'s method."""
    n_rows = int(plan["n_rows"])
    base: dict[str, Any] = {"n": n_rows, "clusters": None, "metrics": None, "baselines": {}}
    if spec.clustering is None:
        return base
    if not plan["square"]:
        why = "rows and columns are different examples (observed): clustering needs the same examples"
        base["clustering"] = {"method": None, "skipped": why}
        return base
    data = resolve(spec, data_dir)
    k, k_from = pipeline.cluster_count(spec, data)
    big = big_clustering(spec, n_rows, bool(plan["matrix"]), settings)
    if big is None:
        S = np.asarray(np.load(job_dir / "similarity.npy", mmap_mode="r"))
        method = spec.clustering_method()
        assert method is not None
        clusters = clustering.cluster(S, method=method, k=k, seed=spec.seed, n_init=spec.clustering.n_init)
        quiet = pipeline.StageProgress(lambda fraction, stage, message: None)
        return pipeline.cluster_scores(spec, data, S, clusters, quiet)
    n_init = spec.clustering.n_init
    if big == "nystrom_kernel_kmeans":
        assert nystrom is not None
        C, marks = nystrom
        try:
            clusters, parameters = bigcluster.nystrom_kernel_kmeans(C, marks, k=k, seed=spec.seed, n_init=n_init)
        except ValueError as error:
            raise JobFailure(f"Nyström kernel k-means: {error}") from error
    else:
        columns = np.load(job_dir / "neighbors_index.npy")
        clusters, parameters = bigcluster.knn_spectral(columns, k=k, seed=spec.seed, n_init=n_init)
    base["clusters"] = clusters.tolist()
    base["clustering"] = {
        **parameters,
        "k": k,
        "k_from": k_from,
        "exact_clustering_max_n": settings.exact_clustering_max_n,
    }
    if data.y is not None:
        labels = data.y[data.primary]
        if np.unique(labels).size >= 2:
            base["metrics"] = metrics.clustering_metrics(labels, clusters)
    if spec.baselines:
        base["baselines_note"] = "baselines skipped: above exact_clustering_max_n they cost n² work"
    return base


__all__ = ["reduce_job", "run_tile", "start", "wants_matrix"]
