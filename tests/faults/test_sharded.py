"""Sharded jobs on real workers: tiles fan out over two workers, the counter barrier queues the reduce
step, and the result equals the single job's; rectangular (observed) jobs; cancel; a lost worker; a
failing tile."""

from __future__ import annotations

import io
import os
import signal
import time

import numpy as np
import pytest
import torch
from rq.job import Job
from rq.serializers import JSONSerializer

from service.contract import keys, sharding
from service.contract.spec import JobSpec
from tests.factories import (
    app_client,
    npz_bytes,
    stop_worker,
    submit_id,
    tiny_spec,
    upload,
    wait_for,
    wait_status,
    worker_log,
)

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def sharded(spec, block=8, **output):
    return {**spec, "execution": {"mode": "sharded", "block": block}, "output": {"neighbors": 5, **output}}


def single(spec):
    return {**spec, "execution": {"mode": "single"}}


def finish(conn, job_id, timeout=180):
    record = wait_status(conn, job_id, ("succeeded", "failed", "canceled"), timeout)
    assert record.status == "succeeded", record.error
    return record


def load(settings, job_id, name):
    return np.load(settings.data_dir / "jobs" / job_id / name, allow_pickle=False)


def reference_neighbors(S, k, exclude_self):
    out = []
    for i, row in enumerate(S):
        order = sorted((j for j in range(len(row)) if not (exclude_self and i == j)), key=lambda j: (-row[j], j))
        out.append(order[:k])
    return np.array(out)


def test_a_sharded_job_equals_the_single_job(settings, redis_conn, two_workers):
    spec = tiny_spec(rows=44, clustering={"k": 2, "method": "kernel_kmeans"})
    with app_client(settings) as client:
        one = submit_id(client, single(spec))
        many = submit_id(client, sharded(spec))
        finish(redis_conn, one)
        record = finish(redis_conn, many)
        shown = client.get(f"/v1/jobs/{many}").json()
        assert shown["spec"]["execution"]["mode"] == "sharded" and shown["spec"]["output"]["matrix"] is True
        assert record.result["execution"]["tiles"] == 21  # 6 row blocks of 8: 6 · 7 / 2 tiles with I ≤ J
        S1, S2 = load(settings, one, "similarity.npy"), load(settings, many, "similarity.npy")
        assert S2.shape == S1.shape == (44, 44)
        assert np.abs(S2 - S1).max() <= 1e-6 * np.abs(S1).max()
        assert np.array_equal(load(settings, many, "clusters.npy"), load(settings, one, "clusters.npy"))
        index, value = load(settings, many, "neighbors_index.npy"), load(settings, many, "neighbors_value.npy")
        assert index.dtype == np.int32 and value.dtype == np.float32 and index.shape == (44, 5)
        assert np.array_equal(index, reference_neighbors(S2, 5, exclude_self=True))
        assert np.array_equal(value, np.take_along_axis(S2, index.astype(np.int64), axis=1))
        row = client.get(f"/v1/jobs/{many}/neighbors", params={"row": 7}).json()
        assert [n["column"] for n in row["neighbors"]] == index[7].tolist()
        rows = client.get(f"/v1/jobs/{many}/similarity", params={"rows": "8:19"})
        assert rows.status_code == 200
        assert np.array_equal(np.load(io.BytesIO(rows.content)), S2[8:19])
        assert not (settings.data_dir / "jobs" / many / "shards").exists()
        assert redis_conn.exists(keys.job_tiles(many)) == 0
    names = [worker_log(w) for w in two_workers]
    assert all(" written in " in log for log in names), "both workers must have run tiles"


def test_a_rectangular_job_at_a_step_compares_rows_with_observed_columns(settings, redis_conn, two_workers):
    spec = tiny_spec(rows=30, clustering={"k": 2})
    spec["observed"] = {"indices": list(range(100, 121))}
    spec["similarity"] = {"kind": "relative", "step": 0.01, "symmetrize": False}
    with app_client(settings) as client:
        job_id = submit_id(client, sharded(spec, block=8))
        record = finish(redis_conn, job_id)
    S = load(settings, job_id, "similarity.npy")
    assert S.shape == (30, 21) and record.result["execution"]["tiles"] == 4 * 3
    assert record.result["clustering"]["method"] is None  # rows and columns differ: no clustering
    from safetensors.torch import load_file

    from workers.compute.datasets import load_builtin
    from workers.compute.models import build_model, load_weights
    from workers.compute.similarity import postprocess, similarity

    parsed = JobSpec.model_validate(record.spec)
    X = torch.from_numpy(load_builtin("digits").X)
    model = build_model(parsed.model, [64], seed=0)
    load_weights(model, load_file(str(settings.data_dir / "jobs" / job_id / "weights.safetensors")))
    union = torch.cat([X[:30], X[100:121]])
    raw = similarity(model, union, kind="relative", step=0.01, loss="mse")
    expected = postprocess(raw, symmetrize=False, normalize=False)[:30, 30:]
    assert np.abs(S - expected).max() <= 1e-5 * np.abs(expected).max()
    index = load(settings, job_id, "neighbors_index.npy")
    assert np.array_equal(index, reference_neighbors(S, 5, exclude_self=False))
    assert load(settings, job_id, "observed_index.npy").tolist() == list(range(100, 121))


ROWS, BLOCK = 128, 32


def slow_spec():
    # Tiles of a second or more each on one torch thread: exact steps of a 3-layer MLP of width 4096 (one
    # 64² · 4096² GEMM per tile, the floor of any exact method for that net).
    spec = tiny_spec(rows=ROWS, clustering=None)
    spec.update(model={"arch": "mlp", "depth": 3, "width": 4096}, similarity={"kind": "kernelized", "step": 0.01})
    return sharded(spec, block=BLOCK)


def test_cancel_stops_every_tile_and_leaves_nothing_on_disk(settings, redis_conn, two_workers):
    with app_client(settings) as client:
        job_id = submit_id(client, slow_spec())
        wait_for(lambda: redis_conn.scard(keys.job_tiles(job_id)) >= 2, 120, message="no tile was written")
        tiles = client.get(f"/v1/jobs/{job_id}").json()["progress"]["tiles"]
        assert tiles["total"] == 10 and 1 <= tiles["done"] < 10  # 4 row blocks of 32: 4 · 5 / 2 tiles
        assert tiles["per_second"] > 0 and tiles["eta_seconds"] > 0
        assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
        canceled_at = time.monotonic()

    # The tiles still queued are dropped at once: none of them starts after the cancel.
    tile_ids = [sharding.tile_job_id(job_id, i, j) for i, j in sharding.plan(ROWS, ROWS, BLOCK, square=True)]
    statuses = [redis_conn.hget(Job.key_for(tile), "status") for tile in tile_ids]
    assert b"queued" not in statuses and statuses.count(None) >= 1

    def idle():
        # The status field itself: a worker that popped a tile just as the cancel dropped its hash writes
        # its start (status, heartbeat) into a new hash without the job's data, which Job.fetch refuses.
        return b"started" not in [redis_conn.hget(Job.key_for(tile), "status") for tile in tile_ids]

    wait_for(idle, 10, message="a tile still runs 10 s after the cancel")
    assert time.monotonic() - canceled_at < 10
    wait_for(lambda: not (settings.data_dir / "jobs" / job_id).exists(), 30, message="files left after cancel")
    wait_for(lambda: redis_conn.llen(f"rq:queue:{settings.queue}") == 0, 10, message="dropped ids not skipped")
    time.sleep(1.0)
    assert not (settings.data_dir / "jobs" / job_id).exists()
    assert all(redis_conn.hget(Job.key_for(tile), "status") != b"started" for tile in tile_ids)


def test_a_tile_whose_worker_is_killed_runs_again_and_the_job_succeeds(settings, redis_conn, tmp_path, start_worker):
    fast = settings.model_copy(update={"worker_heartbeat_seconds": 1, "maintenance_interval": 2})
    started = [start_worker(fast, tmp_path / "logs", name=f"k{n}") for n in range(3)]
    try:
        with app_client(fast) as client:
            job_id = submit_id(client, slow_spec())
            wait_for(lambda: redis_conn.scard(keys.job_tiles(job_id)) >= 1, 120, message="no tile was written")
            from rq import Worker

            def tile_worker():
                for worker in Worker.all(connection=redis_conn):
                    current = worker.get_current_job_id() or ""
                    if current.startswith(f"{job_id}-t") and worker.pid:
                        return worker.pid, current
                return None

            pid, tile = wait_for(tile_worker, 60, message="no worker runs a tile")
            os.kill(pid, signal.SIGKILL)
            record = finish(redis_conn, job_id, timeout=240)
        assert record.result["execution"]["tiles"] == 10
        rq_tile = Job.fetch(tile, connection=redis_conn, serializer=JSONSerializer)
        assert rq_tile.get_status() == "finished" and rq_tile.retries_left == 0  # ran twice, no more
        for i, j in sharding.plan(ROWS, ROWS, BLOCK, square=True):
            other = Job.fetch(sharding.tile_job_id(job_id, i, j), connection=redis_conn, serializer=JSONSerializer)
            assert other.retries_left is not None and other.retries_left >= 0
        assert load(settings, job_id, "neighbors_index.npy").shape == (ROWS, 5)
    finally:
        for worker in started:
            stop_worker(worker)


def test_a_failing_tile_fails_the_job_with_its_reason(settings, redis_conn, two_workers):
    X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    X[29] = 1e30  # its kernel entries overflow float32: the tiles holding row 29 are not finite
    with app_client(settings) as client:
        dataset = upload(client, "x.npz", npz_bytes(X=X)).json()["id"]
        spec = {
            "dataset": dataset,
            "model": {"arch": "mlp", "width": 16},
            "weights": {"source": "init"},
            "clustering": None,
            "baselines": [],
        }
        job_id = submit_id(client, sharded(spec, block=8))
        record = wait_status(redis_conn, job_id, ("succeeded", "failed", "canceled"), 120)
    assert record.status == "failed"
    assert record.error.startswith("tile ") and "non-finite" in record.error, record.error
    wait_for(lambda: not (settings.data_dir / "jobs" / job_id).exists(), 30, message="a failed job left files")


def test_above_the_exact_size_clustering_is_nystrom_or_knn_spectral(settings, redis_conn, tmp_path, start_worker):
    from sklearn.metrics import adjusted_rand_score

    big = settings.model_copy(update={"exact_clustering_max_n": 50, "nystrom_landmarks": 60})
    started = [start_worker(big, tmp_path / "logs", name=f"b{n}") for n in range(2)]
    base = {
        "dataset": {"builtin": "two_spheres", "n": 120},
        "model": {"arch": "mlp", "width": 64},
        "weights": {"source": "init"},
        "baselines": ["kmeans_raw"],
    }
    try:
        with app_client(big) as client:
            kernel = {**base, "clustering": {"k": 2, "method": "kernel_kmeans"}}
            exact = submit_id(client, single(kernel))
            nystrom = submit_id(client, sharded(kernel, block=32))
            graph = submit_id(client, sharded({**base, "similarity": {"kind": "relative", "step": 0}}, block=32))
            exact_result = finish(redis_conn, exact).result
            nystrom_result = finish(redis_conn, nystrom).result
            graph_result = finish(redis_conn, graph).result
    finally:
        for worker in started:
            stop_worker(worker)
    ran = nystrom_result["clustering"]
    assert ran["method"] == "nystrom_kernel_kmeans" and ran["landmarks"] == 60 and ran["k"] == 2
    assert set(nystrom_result["metrics"]) >= {"accuracy", "ari", "nmi"}
    agreement = adjusted_rand_score(exact_result["clusters"], nystrom_result["clusters"])
    print(f"\nARI(Nyström, exact kernel k-means) = {agreement:.3f}")
    assert agreement >= 0.8
    assert graph_result["clustering"]["method"] == "knn_spectral" and graph_result["clustering"]["neighbors"] == 5
    assert len(graph_result["clusters"]) == 120 and "baselines_note" in graph_result


def test_tiles_go_to_the_tile_queue_when_one_is_set(settings, redis_conn, tmp_path, start_worker):
    own = settings.model_copy(update={"tile_queue": f"{settings.queue}-tiles"})
    started = [start_worker(own, tmp_path / "logs", name=f"q{n}") for n in range(2)]
    try:
        with app_client(own) as client:
            job_id = submit_id(client, sharded(tiny_spec(rows=24, clustering=None)))
            finish(redis_conn, job_id)
    finally:
        for worker in started:
            stop_worker(worker)
    tile = Job.fetch(sharding.tile_job_id(job_id, 0, 1), connection=redis_conn, serializer=JSONSerializer)
    assert tile.origin == own.tile_queue
    assert Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer).origin == own.queue
