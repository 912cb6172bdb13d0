"""`lelastic demo`: start a private stack, run a paper-style job on digits, print the table of results."""

from __future__ import annotations

import copy
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from service.cli.client import Client, follow_with_progress, format_table
from service.cli.supervisor import Stack, StackConfig
from service.contract.jobstate import JobStatus
from service.contract.spec import EXAMPLE_SPEC

#: The demo job is the example spec (the paper's digits setting: 3 vs 5 against 8 and 9) at full
#: width and training length, sized to finish in well under five minutes on two CPU cores. Width and
#: epochs are the knobs to tune.
DEMO_WIDTH = 4096
DEMO_EPOCHS = 200
DEMO_SPEC: dict[str, Any] = copy.deepcopy(EXAMPLE_SPEC)
DEMO_SPEC["model"]["width"] = DEMO_WIDTH
DEMO_SPEC["weights"]["epochs"] = DEMO_EPOCHS
DEMO_TIMEOUT = 600.0
#: Lines of the stack's log shown when the demo fails.
LOG_TAIL_LINES = 40


def run_demo(out: Path) -> int:
    """Start a stack on a free port with a temporary data dir, run the demo job, stop the stack.

    Returns the exit code: 0 when the job succeeded and its artifacts are in `out`.
    """
    port = _free_port()
    outcome: dict[str, Any] = {"code": 1}
    with tempfile.TemporaryDirectory(prefix="lelastic-demo-") as data_dir:
        log_path = Path(data_dir) / "stack.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed below; the processes' output goes here
        stack = Stack(StackConfig(port=port, workers=1, data_dir=Path(data_dir), output=log_file))
        finished = threading.Event()

        def run_job() -> None:
            try:
                with Client(stack.api_url) as client:
                    outcome["code"] = demo_job(client, out)
            except Exception as exc:  # reported below; the stack is stopped either way
                outcome["error"] = exc
            finally:
                finished.set()

        try:
            print(f"starting the stack on {stack.api_url} (data dir {data_dir}) ...", file=sys.stderr)
            stack.start()
            thread = threading.Thread(target=run_job, name="demo-job", daemon=True)
            thread.start()
            stack.run(until=finished)
        except BaseException as exc:
            outcome.setdefault("error", exc)
            raise
        finally:
            stack.stop()
            log_file.close()
            if "error" in outcome or outcome["code"] != 0:
                tail = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                print("last lines of the stack's log:\n" + "\n".join(tail), file=sys.stderr)
    if "error" in outcome:
        print(f"demo failed: {outcome['error']}", file=sys.stderr)
        return 1
    code: int = outcome["code"]
    return code


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def demo_job(client: Client, out: Path) -> int:
    """Submit the demo job, follow it, download its artifacts into `out` and print the results."""
    job = client.submit(DEMO_SPEC)
    print(
        f"job {job['id']}: digits 3 vs 5 (auxiliary 8, 9), 2-layer ReLU MLP width {DEMO_WIDTH}, "
        f"{DEMO_EPOCHS} epochs, kernelized similarity (small-step limit), kernel K-means k=2",
        file=sys.stderr,
    )
    record = follow_with_progress(client, job["id"], timeout=DEMO_TIMEOUT)
    if record["status"] != JobStatus.SUCCEEDED:
        print(f"job {job['id']} {record['status']}: {record.get('error') or ''}", file=sys.stderr)
        return 1
    result, paths = client.download_results(job["id"], out)
    print(format_table(result))
    timings = result.get("timings") or {}
    if timings:
        print(
            "timings: "
            + ", ".join(f"{k} {v:.2f} s" if isinstance(v, int | float) else f"{k} {v}" for k, v in timings.items())
        )
    print(f"device: {result.get('device')}")
    print(f"artifacts in {out.resolve()}:")
    for path in paths:
        print(f"  {path}")
    return 0
