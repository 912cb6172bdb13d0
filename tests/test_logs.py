"""Structured logs: JSON lines with job and request context from a real worker and a real API process;
API keys and request bodies never reach them."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.api import auth
from service.contract import logs, queue, records
from service.contract.settings import Settings
from tests.factories import REPO_ROOT, free_port, tiny_spec

TINY_SPEC = tiny_spec(rows=20, width=16)


def parse_lines(text: str) -> list[dict]:
    """Every non-empty line as a JSON object (fails on the first line that is not one)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return out


# ----------------------------------------------------------------------------------- formatter


def _logger_into(stream: io.StringIO, log_format: str = "json") -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if log_format == "json" else logs.TextFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(f"lelastic.test.{log_format}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_a_json_line_has_ts_level_logger_msg_context_and_the_traceback_as_a_string():
    stream = io.StringIO()
    logger = _logger_into(stream)
    logger.info("outside a job")
    with logs.job_context("job-1", "alice"):
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logger.exception("it failed", extra={"attempt": 2})
    logger.info("after the job")
    first, failed, after = parse_lines(stream.getvalue())
    assert set(first) == {"ts", "level", "logger", "msg"}
    assert first["ts"].endswith("Z") and first["ts"][10] == "T"
    assert failed["level"] == "ERROR" and failed["logger"] == "lelastic.test.json"
    assert failed["job_id"] == "job-1" and failed["tenant"] == "alice" and failed["attempt"] == 2
    assert isinstance(failed["exc_info"], str) and "ValueError: boom" in failed["exc_info"]
    assert "job_id" not in after and "tenant" not in after


def test_the_text_format_is_for_humans_and_names_the_context():
    stream = io.StringIO()
    logger = _logger_into(stream, "text")
    with logs.bind(request_id="r-1"):
        logger.warning("hello %s", "there")
    line = stream.getvalue().strip()
    assert "WARNING lelastic.test.text [request_id=r-1] hello there" in line


def test_configure_logging_installs_one_handler_however_often_it_is_called():
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        settings = Settings(log_format="text", log_level="DEBUG")
        logs.configure_logging(settings, stream=io.StringIO())
        handler = logs.configure_logging(settings, stream=io.StringIO())
        ours = [h for h in root.handlers if getattr(h, "_lelastic_handler", False)]
        assert ours == [handler] and isinstance(handler.formatter, logs.TextFormatter)
        assert root.level == logging.DEBUG
    finally:
        root.handlers = before
        root.setLevel(level)


def test_the_request_id_is_echoed_or_generated(client):
    echoed = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/healthz").headers["x-request-id"]
    # A header that is not a sane token is replaced, not reflected.
    assert client.get("/healthz", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"] != "a b\tc"


# ------------------------------------------------------------------------------- real worker


@pytest.mark.worker
def test_a_job_on_a_real_worker_logs_json_lines_with_its_job_id_and_tenant(settings, redis_conn, run_worker_burst):
    job = records.create_job(redis_conn, spec=TINY_SPEC, tenant="alice")
    queue.enqueue(redis_conn, settings, job.id)
    worked = run_worker_burst(settings)
    assert worked.returncode == 0, worked.stderr[-3000:]
    assert records.get_job(redis_conn, job.id).status == "succeeded"
    lines = parse_lines(worked.stderr)
    assert worked.stdout.strip() == "", worked.stdout[-2000:]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    mine = [line for line in lines if line.get("job_id") == job.id]
    assert {line["tenant"] for line in mine} == {"alice"}
    messages = [line["msg"] for line in mine]
    assert "job started" in messages
    assert any(m.startswith("job ended: succeeded") for m in messages)
    ended = next(line for line in mine if line["msg"].startswith("job ended"))
    assert ended["status"] == "succeeded" and ended["duration_s"] > 0
    # RQ's own lines (the worker's start, the job's pick-up) are JSON too, and some are outside any job.
    assert any(line["logger"].startswith("rq.") for line in lines)


# ---------------------------------------------------------------------------------- real API


def test_an_api_process_never_logs_api_keys_or_bodies(settings, tmp_path: Path):
    keys_file = tmp_path / "keys.txt"
    key = auth.create_key(keys_file, "alice")
    port = free_port()
    env = {
        **os.environ,
        "LELASTIC_REDIS_URL": str(settings.redis_url),
        "LELASTIC_DATA_DIR": str(settings.data_dir),
        "LELASTIC_QUEUE": settings.queue,
        "LELASTIC_API_KEYS_FILE": str(keys_file),
        "LELASTIC_LOG_FORMAT": "json",
        "LELASTIC_LOG_LEVEL": "DEBUG",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    secret_body = "body-secret-6f1d2c"
    wrong_key = "lel_wrong-key-that-must-not-be-logged"
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=10) as http:
            headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "req-listed"}
            listed = http.get("/v1/jobs", headers=headers)
            assert listed.status_code == 200 and listed.headers["x-request-id"] == "req-listed"
            assert http.get("/v1/datasets", headers={"X-API-Key": key}).status_code == 200
            assert http.get("/v1/jobs", headers={"X-API-Key": wrong_key}).status_code == 401
            body = {**TINY_SPEC, "dataset": secret_body, "extra": secret_body}
            bad = http.post("/v1/jobs", headers={"X-API-Key": key}, json=body)
            assert bad.status_code == 422
            upload = http.post(
                "/v1/datasets",
                headers={"Authorization": f"Bearer {key}"},
                files={"file": ("x.csv", f"{secret_body}\n1,2\n".encode())},
            )
            assert upload.status_code in (201, 413, 422)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
    text = out + err
    assert key not in text and key[len(auth.KEY_PREFIX) :] not in text
    assert wrong_key not in text and secret_body not in text
    lines = parse_lines(err)
    access = [line for line in lines if line["logger"] == "lelastic.access"]
    assert len(access) >= 5, lines
    listed_line = next(line for line in access if line.get("request_id") == "req-listed")
    assert listed_line["tenant"] == "alice" and listed_line["path"] == "/v1/jobs"
    assert listed_line["status"] == 200
    assert any(line["status"] == 401 and "tenant" not in line for line in access)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere():
    settings = Settings(log_format="auto", log_level="INFO")
    for stream, is_json in ((io.StringIO(), True), (_Terminal(), False)):
        handler = logs.configure_logging(settings, stream=stream)
        try:
            logging.getLogger("lelastic.test.auto").info("hello")
        finally:
            logging.getLogger().removeHandler(handler)
        line = stream.getvalue().strip().splitlines()[-1]
        assert line.startswith("{") == is_json, line
