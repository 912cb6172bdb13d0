"""Load figures for a whole `lelastic up` stack on this machine.

    .venv/bin/python benchmarks/load.py            # 50 clients for 20 s, then a burst of 500 jobs
    .venv/bin/python benchmarks/load.py --quick    # 20 clients for 10 s, then 100 jobs

It starts `lelastic up --workers 2` as a subprocess on a free loopback port with a temporary data dir
(per-tenant limits raised through LELASTIC_RATE_LIMIT_PER_MINUTE / LELASTIC_MAX_ACTIVE_JOBS, so the
figures measure the service, not its limits), then:

1. API load: N concurrent clients (asyncio + httpx), each repeating `POST /v1/jobs` with a tiny spec
   and `GET /v1/jobs/{id}` of a job it submitted, for a fixed time (and at most --max-requests).
   Reported: requests/s, p50 and p99 latency per endpoint, errors (transport errors and non-2xx).
   The jobs it queued are then canceled, so the next phase starts on an idle queue.
2. Burst: --burst tiny jobs submitted at once and drained by the 2 workers. Reported: submit time,
   drain time (first submit → last job final), jobs/s, and two checks read from Redis: none lost
   (every job ends `succeeded`) and none run twice (each job's event stream holds exactly one
   `running` status event).

The load generator shares the machine with the stack; on a small machine the clients' own CPU use
is part of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.cli.supervisor import embedded_valkey_url  # noqa: E402
from service.contract import keys, records  # noqa: E402
from service.contract.jobstate import ACTIVE, FINAL  # noqa: E402
from tests.factories import start_lelastic_up  # noqa: E402

TINY_SPEC = {
    "dataset": {"builtin": "digits"},
    "primary": {"indices": list(range(20))},
    "model": {"arch": "mlp", "width": 16},
    "weights": {"source": "init"},
    "similarity": {"kind": "kernelized", "step": 0},
    "clustering": {"k": 2},
    "baselines": [],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`, in the values' unit."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ------------------------------------------------------------------------------------------ stack


class StackProcess:
    """`lelastic up` as a subprocess; its output goes to a log file in the data dir."""

    def __init__(self, data_dir: Path, port: int, workers: int) -> None:
        self.data_dir, self.port, self.workers = data_dir, port, workers
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = data_dir.parent / "stack.log"
        self.process: subprocess.Popen | None = None
        self.redis_url: str | None = None

    def start(self, timeout: float = 180.0) -> None:
        env = {
            **os.environ,
            "LELASTIC_RATE_LIMIT_PER_MINUTE": "100000000",
            "LELASTIC_MAX_ACTIVE_JOBS": "100000000",
            "LELASTIC_DEVICE": "cpu",
            "LELASTIC_TORCH_THREADS": "1",
            "LELASTIC_LOG_FORMAT": "json",
        }
        env.pop("LELASTIC_REDIS_URL", None)
        env.pop("LELASTIC_API_KEYS_FILE", None)
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = start_lelastic_up(
            self.data_dir, port=self.port, workers=self.workers, env=env, log=self.log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lelastic up exited ({self.process.returncode}); log:\n{self.tail()}")
            self.redis_url = embedded_valkey_url(self.data_dir)  # the log shows the URL with its password hidden
            if self.redis_url:
                try:
                    if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"the stack was not ready within {timeout:.0f} s; log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# --------------------------------------------------------------------------------------- phase 1


async def hammer(url: str, *, clients: int, duration: float, max_requests: int) -> dict:
    """`clients` tasks alternating POST /v1/jobs and GET /v1/jobs/{id} until time or count runs out."""
    latencies: dict[str, list[float]] = {"POST /v1/jobs": [], "GET /v1/jobs/{id}": []}
    errors: dict[str, int] = {name: 0 for name in latencies}
    error_kinds: dict[str, int] = {}
    submitted: list[str] = []
    budget = {"left": max_requests}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        deadline = time.monotonic() + duration

        async def call(name: str, method: str, path: str, **kwargs) -> httpx.Response | None:
            started = time.perf_counter()
            try:
                response = await http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                errors[name] += 1
                error_kinds[type(exc).__name__] = error_kinds.get(type(exc).__name__, 0) + 1
                return None
            latencies[name].append(time.perf_counter() - started)
            if response.status_code >= 300:
                errors[name] += 1
                kind = f"HTTP {response.status_code}"
                error_kinds[kind] = error_kinds.get(kind, 0) + 1
                return None
            return response

        async def client() -> None:
            mine: list[str] = []
            while time.monotonic() < deadline and budget["left"] > 0:
                budget["left"] -= 2
                response = await call("POST /v1/jobs", "POST", "/v1/jobs", json=TINY_SPEC)
                if response is not None:
                    mine.append(response.json()["id"])
                    submitted.append(mine[-1])
                if mine:
                    await call("GET /v1/jobs/{id}", "GET", f"/v1/jobs/{random.choice(mine)}")

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    return {
        "latencies": latencies,
        "errors": errors,
        "error_kinds": error_kinds,
        "elapsed": elapsed,
        "submitted": submitted,
    }


async def cancel_all(url: str, job_ids: list[str], conn: redis.Redis, queue_key: str) -> int:
    """Cancel the jobs still queued or running; wait for the queue to empty and the workers to idle."""
    pipe = conn.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "status")
    active = [j for j, s in zip(job_ids, pipe.execute(), strict=True) if s is not None and s.decode() in ACTIVE]
    semaphore = asyncio.Semaphore(20)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def cancel(job_id: str) -> None:
            async with semaphore:
                await http.delete(f"/v1/jobs/{job_id}")

        await asyncio.gather(*(cancel(j) for j in active))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pipe = conn.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
        if conn.llen(queue_key) == 0 and b"running" not in pipe.execute():
            break
        await asyncio.sleep(0.2)
    return len(active)


# --------------------------------------------------------------------------------------- phase 2


async def burst(url: str, conn: redis.Redis, *, jobs: int, timeout: float) -> dict:
    """Submit `jobs` tiny jobs at once (50 at a time in flight), then wait until every one is final."""
    semaphore = asyncio.Semaphore(50)
    ids: list[str] = []
    submit_errors = 0
    started = time.time()
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def submit() -> None:
            nonlocal submit_errors
            async with semaphore:
                try:
                    response = await http.post("/v1/jobs", json=TINY_SPEC)
                except httpx.HTTPError:
                    submit_errors += 1
                    return
                if response.status_code == 202:
                    ids.append(response.json()["id"])
                else:
                    submit_errors += 1

        await asyncio.gather(*(submit() for _ in range(jobs)))
    submitted = time.time()
    deadline = time.monotonic() + timeout
    statuses: list[bytes | None] = []
    while time.monotonic() < deadline:
        pipe = conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "status")
        statuses = pipe.execute()
        if all(s is not None and s.decode() in FINAL for s in statuses):
            break
        await asyncio.sleep(0.25)
    drained = time.time()
    # Per job: final status, finished_at, and how many times it was started (status events "running").
    pipe = conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "status", "finished_at")
    finals = pipe.execute()
    runs = [
        sum(
            1
            for _, event, data in records.read_events(conn, job_id)
            if event == "status" and data["status"] == "running"
        )
        for job_id in ids
    ]
    by_status: dict[str, int] = {}
    for status, _ in finals:
        key = status.decode() if status else "missing"
        by_status[key] = by_status.get(key, 0) + 1
    last_finish = max((float(f) for _, f in finals if f), default=drained)
    return {
        "requested": jobs,
        "accepted": len(ids),
        "submit_errors": submit_errors,
        "submit_seconds": submitted - started,
        "drain_seconds": min(drained, last_finish) - started,
        "timed_out": not all(s is not None and s.decode() in FINAL for s in statuses),
        "by_status": by_status,
        "runs_once": sum(1 for r in runs if r == 1),
        "runs_twice_or_more": sum(1 for r in runs if r > 1),
        "never_started": sum(1 for r in runs if r == 0),
    }


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 clients for 10 s, then 100 jobs")
    parser.add_argument("--clients", type=int, default=None, help="concurrent API clients (default 50)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of API load (default 20)")
    parser.add_argument("--max-requests", type=int, default=None, help="stop the API load after this many")
    parser.add_argument("--burst", type=int, default=None, help="jobs in the burst (default 500)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="most seconds the burst may take")
    args = parser.parse_args(argv)
    clients = args.clients or (20 if args.quick else 50)
    duration = args.duration or (10.0 if args.quick else 20.0)
    max_requests = args.max_requests or (4_000 if args.quick else 20_000)
    jobs = args.burst or (100 if args.quick else 500)

    with tempfile.TemporaryDirectory(prefix="lelastic-load-") as tmp:
        stack = StackProcess(Path(tmp) / "data", free_port(), args.workers)
        began = time.monotonic()
        stack.start()
        print(
            f"stack up in {time.monotonic() - began:.1f} s: {stack.url}, {args.workers} workers, "
            f"{os.cpu_count()} CPU cores, data dir {stack.data_dir}",
            flush=True,
        )
        conn = records.connect(stack.redis_url)
        try:
            print(
                f"\n== API load: {clients} clients, {duration:.0f} s (at most {max_requests} requests) ==", flush=True
            )
            load = asyncio.run(hammer(stack.url, clients=clients, duration=duration, max_requests=max_requests))
            total = sum(len(v) for v in load["latencies"].values()) + sum(load["errors"].values())
            print(
                f"{total} requests in {load['elapsed']:.1f} s: {total / load['elapsed']:.1f} requests/s, "
                f"{sum(load['errors'].values())} errors {load['error_kinds'] or ''}"
            )
            print(f"{'endpoint':<20}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
            for name, values in load["latencies"].items():
                count = len(values) + load["errors"][name]
                print(
                    f"{name:<20}{count:>10}{count / load['elapsed']:>9.1f}"
                    f"{percentile(values, 50) * 1000:>9.1f}{percentile(values, 99) * 1000:>9.1f}"
                    f"{load['errors'][name]:>8}"
                )
            queue_key = "rq:queue:" + os.environ.get("LELASTIC_QUEUE", "lelastic")
            canceled = asyncio.run(cancel_all(stack.url, load["submitted"], conn, queue_key))
            print(
                f"({len(load['submitted'])} jobs queued by the load; {canceled} still waiting were canceled)",
                flush=True,
            )

            print(f"\n== Burst: {jobs} jobs drained by {args.workers} workers ==", flush=True)
            result = asyncio.run(burst(stack.url, conn, jobs=jobs, timeout=args.drain_timeout))
            print(
                f"submitted {result['accepted']}/{result['requested']} in {result['submit_seconds']:.1f} s "
                f"({result['submit_errors']} submit errors)"
            )
            print(
                f"drained in {result['drain_seconds']:.1f} s: "
                f"{result['accepted'] / max(result['drain_seconds'], 1e-9):.2f} jobs/s"
                + ("  (TIMED OUT)" if result["timed_out"] else "")
            )
            print(f"final statuses: {result['by_status']}")
            print(
                f"started exactly once: {result['runs_once']}, "
                f"twice or more: {result['runs_twice_or_more']}, never: {result['never_started']}"
            )
            lost = result["accepted"] - result["by_status"].get("succeeded", 0)
            ok = (
                lost == 0
                and result["accepted"] == jobs
                and result["runs_twice_or_more"] == 0
                and result["runs_once"] == jobs
            )
            print(
                f"none lost: {'yes' if lost == 0 and result['accepted'] == jobs else 'NO'}; "
                f"none run twice: {'yes' if result['runs_twice_or_more'] == 0 else 'NO'}"
            )
        finally:
            conn.close()
            stack.stop()
        print(f"\ntotal {time.monotonic() - began:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
