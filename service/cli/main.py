"""The `lelastic` command line.

    lelastic up      [--host H] [--port P] [--workers N] [--data-dir DIR] [--gpus 0,1]   Valkey + API + workers
    lelastic api     [--host H] [--port P]                                  the HTTP API (uvicorn)
    lelastic worker  [--queues Q ...] [--burst]                             one RQ worker
    lelastic submit  SPEC.json [--dataset FILE] [--wait] [--out DIR]         upload, submit, follow, download
    lelastic status|result|cancel|download JOB_ID ;  lelastic list [--status S] [--limit N]
                     (every client command takes --url / $LELASTIC_URL and --api-key / $LELASTIC_API_KEY)
    lelastic demo    [--out DIR]                                            a paper-style run end to end
    lelastic keys create TENANT [--file PATH]                               add an API key
    lelastic gc      [--data-dir DIR]                                       one retention sweep

`api` imports no torch (the API image has none); `worker` does: it becomes `python -m workers.main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.cli.client import Client
    from service.contract.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, API_KEY_ENV = "LELASTIC_URL", "LELASTIC_API_KEY"
UPLOAD_FORMATS = ".npz (X, optional y), .npy (X), .csv (label column: label/y/class/target or --label-column)"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lelastic", description="Local-elasticity similarity service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run Valkey, the API and workers in the foreground")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument("--workers", type=_non_negative, default=1, help="worker processes (default 1)")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="datasets, artifacts and Valkey's AOF (default $LELASTIC_DATA_DIR or ./.lelastic)",
    )
    up.add_argument(
        "--gpus",
        type=lambda text: [g.strip() for g in text.split(",") if g.strip()],
        default=None,
        help="GPU ids to spread the workers over, e.g. 0,1 (worker k gets CUDA_VISIBLE_DEVICES=ids[k %% n])",
    )

    api = commands.add_parser("api", help="run the HTTP API (needs LELASTIC_REDIS_URL)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)

    worker = commands.add_parser("worker", help="run one RQ worker (needs LELASTIC_REDIS_URL)")
    worker.add_argument("--queues", nargs="+", default=None, help="queues to listen on (default $LELASTIC_QUEUE)")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=None, help=f"API base URL (default ${URL_ENV}, else {DEFAULT_URL})")
    client.add_argument("--api-key", default=None, help=f"sent as `Authorization: Bearer` (default ${API_KEY_ENV})")

    submit = commands.add_parser("submit", parents=[client], help="submit a job spec (and optionally wait for it)")
    submit.add_argument("spec", type=Path, metavar="SPEC.json", help="a job spec, e.g. one of examples/*.json")
    submit.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help=f"upload this file and use it as the spec's dataset: {UPLOAD_FORMATS}",
    )
    submit.add_argument("--label-column", default=None, help="with a .csv --dataset: the column of labels")
    submit.add_argument(
        "--wait", action="store_true", help="show progress, then print the metrics and download the results"
    )
    submit.add_argument("--out", type=Path, default=None, help="results folder (default ./lelastic-<job id>)")

    for name, text in (
        ("status", "show a job's status and progress"),
        ("result", "print a succeeded job's result (metrics table, or --json)"),
        ("cancel", "cancel a queued or running job"),
        ("download", "download a succeeded job's result and artifacts"),
    ):
        command = commands.add_parser(name, parents=[client], help=text)
        command.add_argument("job_id", metavar="JOB_ID")
        if name == "result":
            command.add_argument("--json", action="store_true", help="print the result document as JSON")
        if name == "download":
            command.add_argument("--out", type=Path, default=None, help="folder (default ./lelastic-<job id>)")
    listing = commands.add_parser("list", parents=[client], help="list jobs, newest first")
    listing.add_argument("--status", default=None, help="only jobs with this status (queued, running, ...)")
    listing.add_argument("--limit", type=int, default=20, help="at most this many jobs (default 20)")

    demo = commands.add_parser("demo", help="start a stack, run a paper-style job on digits, print the table")
    demo.add_argument(
        "--out", type=Path, default=Path("lelastic-demo"), help="where artifacts go (default ./lelastic-demo)"
    )

    keys = commands.add_parser("keys", help="manage API keys (the file named by LELASTIC_API_KEYS_FILE)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="add a key for a tenant and print it (shown only once)")
    create.add_argument("tenant")
    create.add_argument("--file", type=Path, default=None, help="keys file (default $LELASTIC_API_KEYS_FILE)")

    gc = commands.add_parser("gc", help="remove expired jobs and uploads now (one retention sweep)")
    gc.add_argument("--data-dir", type=Path, default=None, help="data dir (default $LELASTIC_DATA_DIR)")
    gc.epilog = "Uses $LELASTIC_REDIS_URL, else the Valkey that `lelastic up` runs for the data dir."
    return parser


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


# ---------------------------------------------------------------------------------------- commands


def check_open_access(command: str, host: str, settings: Settings, *, warn: bool = True) -> None:
    """Refuse to serve without API keys on anything but loopback; say so when serving open on it (`warn`)."""
    if settings.api_keys_file is not None:
        return
    if host not in LOOPBACK:
        raise SystemExit(
            f"lelastic {command}: refusing to serve on {host} without API keys: set LELASTIC_API_KEYS_FILE "
            "(add keys with `lelastic keys create TENANT`) or bind to 127.0.0.1"
        )
    if not warn:
        return
    logging.getLogger("lelastic.api").warning(
        "no API keys (LELASTIC_API_KEYS_FILE unset): the API is open to every local user on %s", host
    )


def cmd_up(args: argparse.Namespace) -> int:
    from service.cli.supervisor import StackConfig, serve
    from service.contract.settings import get_settings

    settings = get_settings()
    check_open_access("up", args.host, settings, warn=False)  # its `lelastic api` child says it once
    config = StackConfig(
        host=args.host,
        port=args.port,
        workers=args.workers,
        data_dir=args.data_dir or settings.data_dir,
        redis_url=settings.redis_url,
        gpus=args.gpus,
    )
    return serve(config)


def cmd_api(args: argparse.Namespace) -> int:
    from service.contract.settings import get_settings

    settings = get_settings()
    if not settings.redis_url:
        raise SystemExit("lelastic api: LELASTIC_REDIS_URL is not set (or use `lelastic up`, which starts Valkey)")
    check_open_access("api", args.host, settings)
    import uvicorn

    from service.api.app import create_app
    from service.api.slowclients import uvicorn_config

    config = uvicorn_config(
        create_app(settings),
        settings,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers propagate to the root handler of service.contract.logs
        access_log=False,  # the lelastic.access line is the one access log (uvicorn's would repeat it)
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Become the worker process: `workers` is started by name, so the command line never imports it."""
    import os

    argv = [sys.executable, "-m", "workers.main", *(["--queues", *args.queues] if args.queues else [])]
    argv += ["--burst"] if args.burst else []
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def client_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """(API URL, API key) of a client command: the flags, else $LELASTIC_URL / $LELASTIC_API_KEY."""
    import os

    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    return url, args.api_key or os.environ.get(API_KEY_ENV) or None


def _client(args: argparse.Namespace) -> Client:
    from service.cli.client import Client

    url, key = client_target(args)
    return Client(url, api_key=key)


def cmd_submit(args: argparse.Namespace) -> int:
    from service.cli.client import follow_with_progress, format_table
    from service.contract.jobstate import JobStatus

    spec = json.loads(args.spec.read_text())
    with _client(args) as client:
        if args.dataset is not None:
            dataset = client.upload_dataset(args.dataset, label_column=args.label_column)
            spec["dataset"] = dataset["id"]
            print(f"uploaded {args.dataset} as dataset {dataset['id']}", file=sys.stderr)
            for note in dataset.get("notes") or []:
                print(f"note: {note}", file=sys.stderr)
        job = client.submit(spec)
        print(job["id"])
        if not args.wait:
            return 0
        record = follow_with_progress(client, job["id"])
        if record["status"] != JobStatus.SUCCEEDED:
            print(f"job {job['id']} {record['status']}: {record.get('error') or ''}", file=sys.stderr)
            return 1
        out = args.out or Path(f"lelastic-{job['id']}")
        result, paths = client.download_results(job["id"], out)
        print(format_table(result))
        print(f"files in {out}:")
        for path in paths:
            print(f"  {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job_id)
    progress = job.get("progress") or {}
    print(
        f"{job['id']}  {job['status']}  {100 * float(progress.get('fraction') or 0):.0f}%  "
        f"{progress.get('stage') or ''} {progress.get('message') or ''}".rstrip()
    )
    if job.get("error"):
        print(f"error: {job['error']}")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    from service.cli.client import format_table

    with _client(args) as client:
        result = client.result(args.job_id)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs(status=args.status, limit=args.limit)
    for job in page.get("data") or []:
        fraction = float((job.get("progress") or {}).get("fraction") or 0)
        print(f"{job['id']}  {job['status']:<9}  {100 * fraction:3.0f}%  {job.get('created_at')}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
    print(f"{job['id']}  {job['status']}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _, paths = client.download_results(args.job_id, args.out or Path(f"lelastic-{args.job_id}"))
    for path in paths:
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from service.cli.demo import run_demo

    return run_demo(args.out)


def cmd_keys(args: argparse.Namespace) -> int:
    from service.api import auth
    from service.contract.settings import get_settings

    path = args.file or get_settings().api_keys_file
    if path is None:
        raise SystemExit("lelastic keys: give --file or set LELASTIC_API_KEYS_FILE")
    try:
        key = auth.create_key(path, args.tenant)
    except ValueError as exc:
        raise SystemExit(f"lelastic keys: {exc}") from None
    print(key)
    print(f"added a key for tenant {args.tenant!r} to {path}; it is shown only this once", file=sys.stderr)
    return 0


def gc_redis_url(settings: Settings, data_dir: Path) -> str:
    """$LELASTIC_REDIS_URL, else the URL of the Valkey that `lelastic up` runs for `data_dir`."""
    from service.cli.supervisor import embedded_valkey_url

    if settings.redis_url:
        return settings.redis_url
    url = embedded_valkey_url(data_dir)
    if url is None:
        raise SystemExit(
            f"lelastic gc: LELASTIC_REDIS_URL is not set and {data_dir / 'valkey'} has no `lelastic up` Valkey "
            "(start `lelastic up` on this data dir, or set LELASTIC_REDIS_URL)"
        )
    return url


def cmd_gc(args: argparse.Namespace) -> int:
    from service.api import retention
    from service.contract import records
    from service.contract.settings import get_settings

    settings = get_settings()
    data_dir = args.data_dir or settings.data_dir
    conn = records.connect(gc_redis_url(settings, data_dir), socket_timeout=settings.redis_socket_timeout)
    try:
        removed = retention.sweep_locked(conn, data_dir, settings)
    finally:
        conn.close()
    if removed is None:
        print("lelastic gc: another sweep is running (lock held); try again later", file=sys.stderr)
        return 1
    for kind in ("jobs", "datasets", "orphan_job_dirs", "orphan_dataset_dirs", "temp_files"):
        for name in removed[kind]:
            print(f"{kind}\t{name}")
    print(f"removed {retention.summary(removed)}")
    return 0


COMMANDS = {
    "up": cmd_up,
    "api": cmd_api,
    "worker": cmd_worker,
    "submit": cmd_submit,
    "status": cmd_status,
    "result": cmd_result,
    "list": cmd_list,
    "cancel": cmd_cancel,
    "download": cmd_download,
    "demo": cmd_demo,
    "keys": cmd_keys,
    "gc": cmd_gc,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from service.contract.logs import configure_logging
    from service.contract.settings import get_settings

    configure_logging(get_settings())
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the output
    from service.cli.client import ApiError
    from service.cli.supervisor import StackError

    try:
        return COMMANDS[args.command](args)
    except httpx.TransportError as exc:
        url = client_target(args)[0] if hasattr(args, "url") else DEFAULT_URL
        print(
            f"lelastic {args.command}: error: cannot reach the API at {url}: {exc} "
            f"(is `lelastic up` running? set --url or ${URL_ENV})",
            file=sys.stderr,
        )
        return 1
    except (StackError, ApiError, FileNotFoundError, json.JSONDecodeError, TimeoutError) as exc:
        print(f"lelastic {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
