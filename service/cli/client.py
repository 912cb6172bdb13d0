"""A small HTTP client for the lelastic API, used by `lelastic submit` and `lelastic demo`.

client = Client("http://127.0.0.1:8000")
dataset = client.upload_dataset(Path("data.npz"))
job = client.submit({"dataset": dataset["id"], ...})
final = client.follow(job["id"], on_progress=print)     # SSE stream until a final status
paths = client.download_results(job["id"], Path("out"))
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from service.contract.jobstate import FINAL

log = logging.getLogger("lelastic.client")


class ApiError(RuntimeError):
    """The API answered with an error status; the message carries its detail."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            detail: Any = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        if isinstance(detail, list):  # [{"loc": [...], "msg": ...}]: one "where: what" per problem
            detail = "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
                if isinstance(item, dict)
                else str(item)
                for item in detail
            )
        super().__init__(
            f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}: {detail}"
        )
        self.status_code = response.status_code


class Client:
    """The API's endpoints as methods; every method raises `ApiError` on an HTTP error."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            raise ApiError(response)
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a successful answer (ApiError otherwise)."""
        body: dict[str, Any] = self._check(response).json()
        return body

    def upload_dataset(self, path: Path, *, label_column: str | None = None) -> dict[str, Any]:
        """POST /v1/datasets with the file as multipart field `file`; returns the dataset record."""
        data = {"label_column": label_column} if label_column else None
        with open(path, "rb") as handle:
            return self._json(self.http.post("/v1/datasets", files={"file": (path.name, handle)}, data=data))

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs; returns the job record (with its `id`)."""
        return self._json(self.http.post("/v1/jobs", json=spec))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"))

    def jobs(self, *, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        """GET /v1/jobs: one page of the tenant's jobs, newest first."""
        params: dict[str, str | int] = {"limit": limit, **({"status": status} if status else {})}
        return self._json(self.http.get("/v1/jobs", params=params))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.delete(f"/v1/jobs/{job_id}"))

    def result(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}/result"))

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[tuple[str | None, str, Any]]:
        """The job's server-sent events as (id, event name, decoded data), until the server closes."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(10.0, read=None)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise ApiError(response)
            yield from parse_sse(response.iter_lines())

    def follow(
        self,
        job_id: str,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follow the event stream until the job reaches a final status; returns the job record.

        A dropped stream is resumed from the last event id; the job record is the final word.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last_id: str | None = None
        while True:
            try:
                for event_id, name, data in self.events(job_id, last_event_id=last_id):
                    last_id = event_id or last_id
                    if name == "progress" and on_progress is not None and isinstance(data, dict):
                        on_progress(data)
                    if name == "status" and isinstance(data, dict) and data.get("status") in FINAL:
                        return self.job(job_id)
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
            except httpx.TransportError as exc:
                log.warning("event stream of job %s dropped (%s); resuming", job_id, exc)
            record = self.job(job_id)
            if record.get("status") in FINAL:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
            time.sleep(1.0)

    def download(self, url: str, dest: Path) -> Path:
        """Stream `url` (absolute, or a path on the API) into `dest`."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", url) as response:
            if response.is_error:
                response.read()
                raise ApiError(response)
            with open(dest, "wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        return dest

    def download_results(self, job_id: str, out_dir: Path) -> tuple[dict[str, Any], list[Path]]:
        """Write result.json and every artifact of a succeeded job into `out_dir`."""
        result = self.result(job_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, url in (result.get("artifacts") or {}).items():
            if name == "result.json":
                continue
            paths.append(self.download(url, out_dir / Path(name).name))
        result_path = out_dir / "result.json"
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        return result, [result_path, *paths]


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, Any]]:
    """Server-sent events from text lines: (id, event, data), data JSON-decoded when it is JSON."""
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                yield event_id, name, value
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
        elif key == "id":
            event_id = value


class ProgressBar:
    """A one-line text progress bar on a stream (stderr by default); no extra dependency."""

    def __init__(self, stream: Any = None, width: int = 30, *, every: float = 5.0) -> None:
        import sys

        self.stream = stream or sys.stderr
        self.width = width
        #: Off a terminal, a line at least this often (seconds) while progress arrives, besides one per stage.
        self.every = every
        self._last_line_at = 0.0
        self._last = ""
        self._last_stage: str | None = None
        self._finished = False
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, progress: dict[str, Any]) -> None:
        fraction = max(0.0, min(1.0, float(progress.get("fraction") or 0.0)))
        filled = int(round(fraction * self.width))
        stage = progress.get("stage") or ""
        message = (progress.get("message") or "")[:40]
        if not self.interactive:  # a log file or pipe: one line per stage, no carriage returns
            finished = fraction >= 1.0
            due = time.monotonic() - self._last_line_at >= self.every
            if stage != self._last_stage or (finished and not self._finished) or due:
                self.stream.write(f"{fraction * 100:5.1f}% {stage} {message}\n".replace(" \n", "\n"))
                self.stream.flush()
                self._last_stage, self._finished = stage, finished
                self._last_line_at = time.monotonic()
            return
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% {stage} {message}"
        self.stream.write(line.ljust(len(self._last)))
        self.stream.flush()
        self._last = line

    def done(self) -> None:
        if self._last and self.interactive:
            self.stream.write("\n")
            self.stream.flush()
            self._last = ""


def follow_with_progress(client: Client, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Follow a job to its final status with a progress bar on stderr; returns its final record."""
    bar = ProgressBar()
    try:
        return client.follow(job_id, on_progress=bar, timeout=timeout)
    finally:
        bar.done()


def format_table(result: dict[str, Any]) -> str:
    """LE clustering next to the baselines: accuracy, ARI, NMI (and why a score is missing)."""
    rows = [("LE clustering", result.get("metrics") or {})]
    rows += [(name, values) for name, values in (result.get("baselines") or {}).items()]
    lines = [f"{'method':<16}{'accuracy':>10}{'ARI':>8}{'NMI':>8}"]
    for name, values in rows:
        cells = "".join(
            f"{_number(values.get(key)):>{width}}" for key, width in (("accuracy", 10), ("ari", 8), ("nmi", 8))
        )
        lines.append(f"{name:<16}{cells}")
    ratio = (result.get("metrics") or {}).get("within_between_ratio")
    if ratio is not None:
        lines.append(f"within/between similarity ratio (LE): {_number(ratio)}")
    for note in ("metrics_note", "baselines_note"):
        if result.get(note):
            lines.append(f"note: {result[note]}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
