"""/metrics in the Prometheus text format, written by hand (no client library).

    lelastic_queue_depth                      gauge    RQ jobs waiting on the queue
    lelastic_workers                          gauge    live workers listening on the queue
    lelastic_jobs{status}                     gauge    job records by status (all tenants)
    lelastic_job_duration_seconds{status}     summary  run time (started → finished) of final jobs
    lelastic_http_requests_total{method,route,status}            counter
    lelastic_http_request_duration_seconds{method,route,status}  histogram

HTTP metrics are kept per process (one uvicorn worker = one set of counters). `route` is the route
template (`/v1/jobs/{job_id}`), or `<unmatched>` for unknown paths, and `method` one of the standard
methods or `other`, so labels stay few whatever the requests.

A scrape costs the same whatever the number of job records: the job gauges and the duration summary
are counters kept by `service.contract.jobstate` as statuses change, read with two HGETALLs; the queue
depth is one LLEN and the workers one SMEMBERS + EXISTS. All of it goes through the asyncio client, so
a burst of scrapes holds no thread of the pool.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from typing import Any

import redis.asyncio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from service.api.deps import AsyncRedisDep, SettingsDep
from service.contract import keys, queue, records
from service.contract.jobstate import FINAL, JobStatus

router = APIRouter(tags=["health"])

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: HTTP methods counted under their own name; any other is counted as OTHER_METHOD.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "<unmatched>"


def method_label(method: str) -> str:
    """The `method` label of a request: the method if it is a standard one, else `other`."""
    return method if method in METHODS else OTHER_METHOD


def _labels(**labels: Any) -> str:
    def escape(value: Any) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


class HttpMetrics:
    """Request counts and latency histograms by (method, route template, status). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._sums: dict[tuple[str, str, int], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        with self._lock:
            self._buckets[key][bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sums[key] += seconds

    def render(self) -> list[str]:
        lines = [
            "# HELP lelastic_http_requests_total HTTP requests answered.",
            "# TYPE lelastic_http_requests_total counter",
        ]
        with self._lock:
            snapshot = {key: (list(counts), self._sums[key]) for key, counts in self._buckets.items()}
        for (method, route, status), (counts, _) in sorted(snapshot.items()):
            lines.append(
                f"lelastic_http_requests_total{_labels(method=method, route=route, status=status)} {sum(counts)}"
            )
        lines += [
            "# HELP lelastic_http_request_duration_seconds Time to answer an HTTP request.",
            "# TYPE lelastic_http_request_duration_seconds histogram",
        ]
        for (method, route, status), (counts, total) in sorted(snapshot.items()):
            running = 0
            for bound, count in zip((*BUCKETS, "+Inf"), counts, strict=True):
                running += count
                labels = _labels(method=method, route=route, status=status, le=bound)
                lines.append(f"lelastic_http_request_duration_seconds_bucket{labels} {running}")
            labels = _labels(method=method, route=route, status=status)
            lines.append(f"lelastic_http_request_duration_seconds_sum{labels} {total:.6f}")
            lines.append(f"lelastic_http_request_duration_seconds_count{labels} {running}")
        return lines


class HttpMetricsMiddleware:
    """ASGI middleware that times every HTTP request into an `HttpMetrics`."""

    def __init__(self, app: Any, http_metrics: HttpMetrics) -> None:
        self.app = app
        self.http_metrics = http_metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_note_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = method_label(scope["method"])
            self.http_metrics.observe(method, route, status[0], time.perf_counter() - started)


async def job_lines(aconn: redis.asyncio.Redis) -> list[str]:
    """Job counts by status and the duration summary, from the counters `jobstate` keeps."""
    raw_counts = await aconn.hgetall(keys.JOB_COUNTS)
    raw_durations = await aconn.hgetall(keys.JOB_DURATIONS)
    stored = {records.text(k): records.text(v) for k, v in raw_counts.items()}
    durations = {records.text(k): records.text(v) for k, v in raw_durations.items()}
    lines = ["# HELP lelastic_jobs Job records by status.", "# TYPE lelastic_jobs gauge"]
    lines += [f"lelastic_jobs{_labels(status=s.value)} {max(0, int(stored.get(s.value, 0)))}" for s in JobStatus]
    lines += [
        "# HELP lelastic_job_duration_seconds Run time of final jobs that started.",
        "# TYPE lelastic_job_duration_seconds summary",
    ]
    for status in (s.value for s in JobStatus if s in FINAL):
        total = float(durations.get(f"{status}:sum", 0.0))
        count = int(durations.get(f"{status}:count", 0))
        lines.append(f"lelastic_job_duration_seconds_sum{_labels(status=status)} {total:.3f}")
        lines.append(f"lelastic_job_duration_seconds_count{_labels(status=status)} {count}")
    return lines


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    description="Queue depth, workers, jobs by status, job durations and HTTP request metrics.",
)
async def read_metrics(request: Request, aconn: AsyncRedisDep, settings: SettingsDep) -> PlainTextResponse:
    depth = await aconn.llen(queue.queue_key(settings))
    workers = await queue.live_workers_async(aconn, settings)
    lines = [
        "# HELP lelastic_queue_depth Jobs waiting on the RQ queue.",
        "# TYPE lelastic_queue_depth gauge",
        f"lelastic_queue_depth{_labels(queue=settings.queue)} {depth}",
        "# HELP lelastic_workers Live workers listening on the queue.",
        "# TYPE lelastic_workers gauge",
        f"lelastic_workers{_labels(queue=settings.queue)} {workers}",
        *await job_lines(aconn),
        *request.app.state.http_metrics.render(),
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
