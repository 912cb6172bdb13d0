"""Retention on a real Valkey and a real data dir: expired jobs and uploads leave Redis and the disk;
uploads in use, fresh records and young orphans stay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from service.api import retention
from service.contract import jobstate, keys, queue, records
from service.contract.storage import DataDir
from tests.factories import REPO_ROOT, app_client

DAY = 24 * 3600
SPEC = {"dataset": {"builtin": "digits"}, "weights": {"source": "init"}}


def finished_job(
    conn, data_dir: DataDir, *, status: str = "succeeded", age: float, tenant: str = "alice", spec: dict | None = None
) -> str:
    """A job record ended `age` seconds ago, with an artifact on disk."""
    job = records.create_job(conn, spec=spec or SPEC, tenant=tenant)
    ended = time.time() - age
    jobstate.mark_running(conn, job.id, at=ended - 5)
    if status == "succeeded":
        jobstate.mark_succeeded(conn, job.id, {}, at=ended)
    elif status == "failed":
        jobstate.mark_failed(conn, job.id, "failed in a test", at=ended)
    else:
        jobstate.mark_canceled(conn, job.id, at=ended)
    (data_dir.job_dir(job.id)).mkdir(parents=True)
    data_dir.artifact(job.id, "result.json").write_text("{}")
    return job.id


def aged_upload(conn, data_dir: DataDir, *, age: float, kind: str = "dataset", tenant: str = "alice") -> str:
    """A dataset (or weights) record created `age` seconds ago, with its file on disk."""
    record = records.create_dataset(conn, kind=kind, name="x", meta={"n": 2}, tenant=tenant)
    created = time.time() - age
    conn.hset(keys.dataset(record["id"]), "created_at", repr(created))
    conn.zadd(keys.datasets_index(tenant), {record["id"]: created})
    path = data_dir.weights_file(record["id"]) if kind == "weights" else data_dir.dataset_file(record["id"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"data")
    return record["id"]


def old_folder(path: Path, age: float) -> Path:
    path.mkdir(parents=True)
    (path / "file").write_bytes(b"x")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def job_gone(conn, data_dir: DataDir, job_id: str, tenant: str = "alice") -> bool:
    return (
        not conn.exists(keys.job(job_id))
        and not conn.exists(keys.job_events(job_id))
        and conn.zscore(keys.jobs_index(tenant), job_id) is None
        and not data_dir.job_dir(job_id).exists()
    )


def test_expired_finished_jobs_go_with_their_events_index_rq_job_and_files(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    old = {
        status: finished_job(redis_conn, data_dir, status=status, age=40 * DAY)
        for status in ("succeeded", "failed", "canceled")
    }
    queue.enqueue(redis_conn, settings, old["succeeded"])  # an RQ job of the same id, still on the queue
    fresh = finished_job(redis_conn, data_dir, age=DAY)
    waiting = records.create_job(redis_conn, spec=SPEC, tenant="alice").id  # queued, created long ago
    redis_conn.hset(keys.job(waiting), "created_at", repr(time.time() - 90 * DAY))

    removed = retention.sweep(redis_conn, data_dir, settings)

    assert sorted(removed["jobs"]) == sorted(old.values())
    for job_id in old.values():
        assert job_gone(redis_conn, data_dir, job_id)
    assert queue.fetch_rq_job(redis_conn, old["succeeded"]) is None
    assert queue.get_queue(redis_conn, settings).count == 0
    assert records.get_job(redis_conn, fresh).status == "succeeded" and data_dir.job_dir(fresh).exists()
    assert records.get_job(redis_conn, waiting).status == "queued"
    listed, _ = records.list_jobs(redis_conn, tenant="alice")
    assert {job.id for job in listed} == {fresh, waiting}


def test_expired_uploads_go_unless_a_queued_or_running_job_uses_them(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    unused = aged_upload(redis_conn, data_dir, age=40 * DAY)
    unused_weights = aged_upload(redis_conn, data_dir, age=40 * DAY, kind="weights")
    queued_dataset = aged_upload(redis_conn, data_dir, age=40 * DAY)
    running_weights = aged_upload(redis_conn, data_dir, age=40 * DAY, kind="weights")
    finished_user = aged_upload(redis_conn, data_dir, age=40 * DAY)
    fresh = aged_upload(redis_conn, data_dir, age=DAY)
    records.create_job(redis_conn, spec={"dataset": queued_dataset}, tenant="alice")
    weights = {"source": "upload", "weights": running_weights}
    uses_weights = {"dataset": {"builtin": "digits"}, "weights": weights}
    running = records.create_job(redis_conn, spec=uses_weights)
    jobstate.mark_running(redis_conn, running.id)
    # A job that ended (recently) does not keep its dataset alive.
    finished_job(redis_conn, data_dir, age=60, spec={"dataset": finished_user})

    removed = retention.sweep(redis_conn, data_dir, settings)

    assert sorted(removed["datasets"]) == sorted([unused, unused_weights, finished_user])
    for gone in (unused, unused_weights, finished_user):
        assert records.get_dataset(redis_conn, gone) is None and not data_dir.dataset_dir(gone).exists()
        assert redis_conn.zscore(keys.datasets_index("alice"), gone) is None
    for kept in (queued_dataset, fresh):
        assert records.get_dataset(redis_conn, kept) is not None and data_dir.dataset_file(kept).exists()
    assert records.get_dataset(redis_conn, running_weights) is not None
    assert data_dir.weights_file(running_weights).exists()


def test_orphan_folders_and_temp_files_go_once_they_are_an_hour_old(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    old_job_dir = old_folder(data_dir.job_dir("a" * 32), 2 * 3600)
    old_dataset_dir = old_folder(data_dir.dataset_dir("b" * 32), 2 * 3600)
    young_job_dir = old_folder(data_dir.job_dir("c" * 32), 60)
    young_dataset_dir = old_folder(data_dir.dataset_dir("d" * 32), 60)
    kept_job = finished_job(redis_conn, data_dir, age=60)
    os.utime(data_dir.job_dir(kept_job), (time.time() - 5 * 3600,) * 2)  # old folder, live record
    stale_temp = data_dir.root / ".upload-stale.tmp"
    stale_temp.write_bytes(b"partial")
    os.utime(stale_temp, (time.time() - 2 * 3600,) * 2)
    live_temp = data_dir.root / ".upload-live.tmp"
    live_temp.write_bytes(b"partial")

    removed = retention.sweep(redis_conn, data_dir, settings)

    assert removed["orphan_job_dirs"] == ["a" * 32] and removed["orphan_dataset_dirs"] == ["b" * 32]
    assert not old_job_dir.exists() and not old_dataset_dir.exists() and not stale_temp.exists()
    assert young_job_dir.exists() and young_dataset_dir.exists() and live_temp.exists()
    assert data_dir.job_dir(kept_job).exists()


def test_index_entries_without_a_record_are_dropped(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    redis_conn.zadd(keys.jobs_index("bob"), {"ghost-job": 1.0})
    redis_conn.zadd(keys.datasets_index("bob"), {"ghost-dataset": 1.0})
    live = records.create_job(redis_conn, spec=SPEC, tenant="bob").id
    removed = retention.sweep(redis_conn, data_dir, settings)
    assert removed["index_entries"] == 2
    assert [m.decode() for m in redis_conn.zrange(keys.jobs_index("bob"), 0, -1)] == [live]


def test_now_moves_the_cutoffs_and_a_second_sweep_finds_nothing(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    job = finished_job(redis_conn, data_dir, age=60)
    dataset = aged_upload(redis_conn, data_dir, age=60)
    assert retention.sweep(redis_conn, data_dir, settings)["jobs"] == []
    later = time.time() + settings.job_retention_seconds + 1
    removed = retention.sweep(redis_conn, data_dir, settings, now=later)
    assert removed["jobs"] == [job] and removed["datasets"] == [dataset]
    again = retention.sweep(redis_conn, data_dir, settings, now=later)
    assert retention.summary(again) == "0 jobs, 0 uploads, 0 orphan folders, 0 temp files, 0 index entries"


def test_one_sweep_at_a_time_behind_the_redis_lock(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    job = finished_job(redis_conn, data_dir, age=40 * DAY)
    redis_conn.set(keys.RETENTION_LOCK, "another-process", ex=60)
    assert retention.sweep_locked(redis_conn, data_dir, settings) is None
    assert records.get_job(redis_conn, job) is not None
    redis_conn.delete(keys.RETENTION_LOCK)
    assert retention.sweep_locked(redis_conn, data_dir, settings)["jobs"] == [job]
    assert not redis_conn.exists(keys.RETENTION_LOCK)  # released after the sweep


def test_the_api_sweeps_in_the_background(redis_conn, settings):
    settings = settings.model_copy(update={"retention_sweep_seconds": 1})
    data_dir = DataDir(settings.data_dir)
    job = finished_job(redis_conn, data_dir, age=40 * DAY)
    with app_client(settings) as client:
        deadline = time.monotonic() + 15
        while records.get_job(redis_conn, job) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get(f"/v1/jobs/{job}").status_code == 404
    assert job_gone(redis_conn, data_dir, job)


def test_lelastic_gc_runs_one_sweep_and_prints_what_it_removed(redis_conn, settings):
    data_dir = DataDir(settings.data_dir)
    job = finished_job(redis_conn, data_dir, age=40 * DAY)
    dataset = aged_upload(redis_conn, data_dir, age=40 * DAY)
    env = {
        **os.environ,
        "LELASTIC_REDIS_URL": str(settings.redis_url),
        "LELASTIC_DATA_DIR": str(settings.data_dir),
        "LELASTIC_QUEUE": settings.queue,
    }
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "gc"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"jobs\t{job}" in done.stdout and f"datasets\t{dataset}" in done.stdout
    assert "removed 1 jobs, 1 uploads" in done.stdout
    assert job_gone(redis_conn, data_dir, job) and not data_dir.dataset_dir(dataset).exists()
