"""Attacks on the API process itself, against a real uvicorn (configured as `lelastic api` runs it) over
raw sockets: many open event streams, connections that never finish their headers, bodies that trickle
in. Each test reproduces the attack and checks that the server stays fair to everyone else."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.api.app import create_app
from service.api.slowclients import uvicorn_config
from service.contract import jobstate, records
from service.contract.settings import Settings
from tests.factories import DIGITS_3_5, free_port, running_uvicorn


@contextlib.contextmanager
def serve(settings: Settings, **changes) -> Iterator[tuple[str, int]]:
    """The API under uvicorn, as `lelastic api` configures it, in a thread; yields (host, port)."""
    settings = settings.model_copy(update=changes)
    port = free_port()
    config = uvicorn_config(create_app(settings), settings, host="127.0.0.1", port=port, log_level="warning")
    with running_uvicorn(config):
        yield "127.0.0.1", port


def connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    return sock


def response_head(sock: socket.socket) -> bytes:
    """Read until the end of a response's head; the head (status line and headers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def open_stream(address: tuple[str, int], job_id: str, key: str) -> tuple[socket.socket, bytes]:
    sock = connect(address)
    request = f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"
    sock.sendall(request.encode())
    return sock, response_head(sock)


def new_job(base: str, key: str) -> str:
    response = httpx.post(f"{base}/v1/jobs", json=DIGITS_3_5, headers={"X-API-Key": key}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_tenant_may_hold_only_so_many_event_streams(settings, keyed):
    _, alice, bob, keys_file = keyed
    with serve(settings, api_keys_file=keys_file, max_event_streams_per_tenant=3) as address:
        base = f"http://{address[0]}:{address[1]}"
        job = new_job(base, alice)
        streams = [open_stream(address, job, alice) for _ in range(3)]
        assert all(head.startswith(b"HTTP/1.1 200") for _, head in streams)
        refused = httpx.get(f"{base}/v1/jobs/{job}/events", headers={"X-API-Key": alice}, timeout=10)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        text = refused.text
        assert "max_event_streams_per_tenant = 3" in text and "LELASTIC_MAX_EVENT_STREAMS_PER_TENANT" in text
        bobs, head = open_stream(address, new_job(base, bob), bob)
        assert head.startswith(b"HTTP/1.1 200"), "another tenant's streams are not counted"
        bobs.close()
        streams[0][0].close()  # a client goes away: its stream's lease is given back

        def reopened() -> bool:
            response = httpx.get(f"{base}/v1/jobs/{job}", headers={"X-API-Key": alice}, timeout=10)
            assert response.status_code == 200
            sock, head = open_stream(address, job, alice)
            streams.append((sock, head))
            return head.startswith(b"HTTP/1.1 200")

        deadline = time.monotonic() + 10
        while not reopened():
            assert time.monotonic() < deadline, "the closed stream's lease was never given back"
            time.sleep(0.5)
        for sock, _ in streams:
            sock.close()


def test_two_hundred_open_streams_do_not_hold_up_another_tenant(settings, redis_conn, keyed):
    """Each open stream used to hold one of the 40 threads of the pool in a blocking read: another
    tenant's list waited 12–14 s and /healthz 4 s. Now the streams are coroutines on the event loop."""
    _, alice, bob, keys_file = keyed
    with serve(settings, api_keys_file=keys_file, max_event_streams_per_tenant=250) as address:
        base = f"http://{address[0]}:{address[1]}"
        job = new_job(base, alice)
        streams = [open_stream(address, job, alice) for _ in range(200)]
        try:
            assert all(head.startswith(b"HTTP/1.1 200") for _, head in streams)
            time.sleep(1.5)
            assert redis_conn.info("clients")["blocked_clients"] <= 1, "one blocking read serves every stream"
            with httpx.Client(base_url=base, headers={"X-API-Key": bob}, timeout=30) as http:
                for path in ("/v1/jobs", "/healthz", "/readyz", "/v1/jobs?status=queued", "/metrics"):
                    started = time.monotonic()
                    response = http.get(path)
                    took = time.monotonic() - started
                    assert response.status_code in (200, 503), (path, response.text)
                    assert took < 3.0, f"{path} took {took:.1f} s with 200 streams open"
        finally:
            for sock, _ in streams:
                sock.close()


def read_until(sock: socket.socket, needle: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while needle not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {needle!r}: {data[-300:]!r}"
        data += chunk
    return data


def test_each_of_many_streams_gets_its_own_jobs_events_live(settings, redis_conn, keyed):
    _, alice, _, keys_file = keyed
    with serve(settings, api_keys_file=keys_file) as address:
        base = f"http://{address[0]}:{address[1]}"
        jobs = [new_job(base, alice) for _ in range(4)]
        streams = {job: [open_stream(address, job, alice)[0] for _ in range(3)] for job in jobs}
        for sock in (s for socks in streams.values() for s in socks):
            read_until(sock, b"queued", 10)
        for n, job in enumerate(jobs):
            records.set_progress(redis_conn, job, fraction=0.5, stage=f"stage-{n}")
        for n, job in enumerate(jobs):
            for sock in streams[job]:
                data = read_until(sock, f"stage-{n}".encode(), 5)
                assert all(f"stage-{m}".encode() not in data for m in range(len(jobs)) if m != n)
        jobstate.mark_canceled(redis_conn, jobs[0])
        for sock in streams[jobs[0]]:
            read_until(sock, b"canceled", 5)
        for sock in (s for socks in streams.values() for s in socks):
            sock.close()


def test_connections_that_never_finish_their_headers_are_closed(settings):
    with serve(settings, header_timeout_seconds=1.0) as address:
        lingering = []
        for _ in range(100):
            sock = connect(address, timeout=15)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            lingering.append(sock)
        started = time.monotonic()
        ok = connect(address)
        ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response_head(ok).startswith(b"HTTP/1.1 200"), "a whole request is answered meanwhile"
        for sock in lingering:
            assert read_until_closed(sock) == b"", "closed without an answer"
        assert time.monotonic() - started < 10, "closed by the header deadline (1 s), not by the client"
        # A keep-alive connection that starts its next request and stalls is closed too.
        ok.sendall(b"GET /healthz HTTP/1.1\r\nHost:")
        assert read_until_closed(ok).find(b"HTTP/1.1") == -1
        for sock in (*lingering, ok):
            sock.close()


def test_connections_beyond_the_cap_get_503(settings):
    with serve(settings, max_connections=5, header_timeout_seconds=30.0) as address:
        idle = [connect(address) for _ in range(5)]
        for sock in idle:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        time.sleep(0.3)
        extra = connect(address)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response_head(extra).startswith(b"HTTP/1.1 503")
        for sock in (*idle, extra):
            sock.close()


def post_slowly(address, path: str, body: bytes, content_type: str, pause: float, stop_after: int | None) -> bytes:
    """Send the body one byte at a time, `pause` s apart (stop sending after `stop_after` bytes), and
    return everything the server answers until it closes the connection."""
    sock = connect(address, timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode())
    sock.setblocking(False)
    answer = b""
    for n, byte in enumerate(body):
        if stop_after is not None and n >= stop_after:
            break
        with contextlib.suppress(BlockingIOError):
            answer += sock.recv(65536)
        if answer:
            break
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(pause)
    sock.settimeout(10)
    answer += read_until_closed(sock)
    sock.close()
    return answer


UPLOAD_START = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.npz"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


@pytest.mark.parametrize(
    ("path", "content_type", "body", "pause", "stop_after"),
    [
        ("/v1/jobs", "application/json", b" " * 400, 0.2, None),  # one byte every 0.2 s: too slow on average
        ("/v1/jobs", "application/json", b" " * 400, 0.0, 10),  # ten bytes, then nothing
        ("/v1/datasets", "multipart/form-data; boundary=b", UPLOAD_START + b"x" * 400, 0.05, None),  # an upload
    ],
)
def test_a_body_that_trickles_in_gets_408_and_the_connection_is_closed(
    settings, path, content_type, body, pause, stop_after
):
    with serve(settings, body_read_timeout_seconds=1.0, body_min_bytes_per_second=100) as address:
        started = time.monotonic()
        answer = post_slowly(address, path, body, content_type, pause, stop_after)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"body_read_timeout_seconds" in answer and b"LELASTIC_BODY_MIN_BYTES_PER_SECOND" in answer
        assert took < 6, "the server gave up on the body within its limits"
        response = httpx.post(f"http://{address[0]}:{address[1]}/v1/jobs", json=DIGITS_3_5, timeout=30)
        assert response.status_code == 202, "a body sent at once is unaffected"
