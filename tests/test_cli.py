"""The `lelastic` command line and the `up` supervisor, against real processes and a real Valkey."""

from __future__ import annotations

import io
import socket
import sys
import time
from pathlib import Path

import pytest
import redis

from service.cli import demo, supervisor
from service.cli import main as cli
from service.cli.client import ProgressBar, parse_sse
from service.cli.supervisor import Child, EmbeddedValkey, Stack, StackConfig, StackError
from tests.factories import options, subcommands

# ------------------------------------------------------------------------------------------- parser


def test_parser_has_every_command_with_its_documented_flags():
    commands = subcommands(cli.build_parser())
    assert set(commands) == {
        *("up", "api", "worker", "submit", "demo", "keys", "gc"),
        *("status", "result", "list", "cancel", "download"),
    }
    assert options(commands["up"]) == {"--host", "--port", "--workers", "--data-dir", "--gpus"}
    assert options(commands["api"]) == {"--host", "--port"}
    assert options(commands["worker"]) == {"--queues", "--burst"}
    assert options(commands["submit"]) == {"--dataset", "--label-column", "--wait", "--out", "--url", "--api-key"}
    for name in ("status", "result", "list", "cancel", "download"):
        assert {"--url", "--api-key"} <= options(commands[name]), name
    assert options(commands["demo"]) == {"--out"}
    assert options(commands["gc"]) == {"--data-dir"}


def test_up_defaults_and_values():
    args = cli.build_parser().parse_args(["up"])
    assert (args.host, args.port, args.workers, args.data_dir) == ("127.0.0.1", 8000, 1, None)
    args = cli.build_parser().parse_args(
        ["up", "--host", "0.0.0.0", "--port", "9001", "--workers", "3", "--data-dir", "d"]
    )
    assert (args.host, args.port, args.workers, args.data_dir) == ("0.0.0.0", 9001, 3, Path("d"))


def test_up_spreads_workers_over_the_given_gpus():
    args = cli.build_parser().parse_args(["up", "--workers", "3", "--gpus", "0, 2"])
    assert args.gpus == ["0", "2"]
    env = {"PATH": "/bin", "LELASTIC_TORCH_THREADS": "3"}
    assert [supervisor.worker_env(env, k, args.gpus)["CUDA_VISIBLE_DEVICES"] for k in range(3)] == ["0", "2", "0"]
    assert supervisor.worker_env(env, 0, None) == env
    assert cli.build_parser().parse_args(["up"]).gpus is None


def test_up_refuses_a_negative_worker_count(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up", "--workers", "-1"])
    assert "must be 0 or more" in capsys.readouterr().err


def test_submit_and_worker_arguments():
    args = cli.build_parser().parse_args(["submit", "spec.json", "--dataset", "x.npz", "--wait", "--out", "o"])
    assert (args.spec, args.dataset, args.wait, args.out, args.url) == (
        Path("spec.json"),
        Path("x.npz"),
        True,
        Path("o"),
        None,
    )
    assert cli.client_target(args)[0] in (cli.DEFAULT_URL, __import__("os").environ.get("LELASTIC_URL"))
    args = cli.build_parser().parse_args(["worker", "--queues", "a", "b", "--burst"])
    assert args.queues == ["a", "b"] and args.burst


def test_demo_spec_is_a_valid_job_spec():
    from service.contract.spec import JobSpec

    spec = JobSpec.model_validate(demo.DEMO_SPEC)
    assert spec.model.width == demo.DEMO_WIDTH and spec.weights.epochs == demo.DEMO_EPOCHS
    assert spec.primary.labels == [3, 5] and spec.auxiliary.labels == [8, 9]
    assert spec.clustering_method() == "kernel_kmeans"


def test_api_command_needs_a_redis_url(monkeypatch):
    from service.contract.settings import get_settings

    monkeypatch.delenv("LELASTIC_REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="LELASTIC_REDIS_URL"):
            cli.main(["api", "--port", "1"])
    finally:
        get_settings.cache_clear()


def test_api_refuses_a_public_address_without_keys(monkeypatch):
    from service.contract.settings import get_settings

    monkeypatch.setenv("LELASTIC_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.delenv("LELASTIC_API_KEYS_FILE", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="without API keys"):
            cli.main(["api", "--host", "0.0.0.0", "--port", "1"])
        with pytest.raises(SystemExit, match="lelastic up: refusing to serve on 0.0.0.0 without API keys"):
            cli.main(["up", "--host", "0.0.0.0", "--port", "1"])
    finally:
        get_settings.cache_clear()


def test_keys_create_appends_a_hashed_key(tmp_path, capsys):
    from service.api import auth

    path = tmp_path / "keys"
    assert cli.main(["keys", "create", "alice", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert auth.tenant_for(key, auth.load_keys(path)) == "alice"
    assert key not in path.read_text()


def test_submit_reports_an_unreachable_api(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text('{"dataset": {"builtin": "digits"}}')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    assert cli.main(["submit", str(spec), "--url", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the API" in err and f"http://127.0.0.1:{port}" in err


def test_client_commands_read_the_url_and_key_from_the_environment(monkeypatch):
    args = cli.build_parser().parse_args(["status", "abc"])
    monkeypatch.setenv("LELASTIC_URL", "http://example.test:9")
    monkeypatch.setenv("LELASTIC_API_KEY", "k1")
    assert cli.client_target(args) == ("http://example.test:9", "k1")
    args = cli.build_parser().parse_args(["list", "--url", "http://other:1", "--api-key", "k2"])
    assert cli.client_target(args) == ("http://other:1", "k2")
    monkeypatch.delenv("LELASTIC_URL")
    monkeypatch.delenv("LELASTIC_API_KEY")
    assert cli.client_target(cli.build_parser().parse_args(["status", "abc"])) == (cli.DEFAULT_URL, None)


def test_submit_help_names_every_dataset_format(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["submit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(fmt in help_text for fmt in (".npz", ".npy", ".csv"))


def test_up_divides_the_cores_among_its_workers(monkeypatch):
    monkeypatch.setattr(supervisor.os, "cpu_count", lambda: 8)
    env = {"PATH": "/bin"}
    assert supervisor.worker_env(env, 0, None, workers=2)["LELASTIC_TORCH_THREADS"] == "4"
    assert supervisor.worker_env(env, 0, None, workers=16)["LELASTIC_TORCH_THREADS"] == "1"
    assert (
        supervisor.worker_env({**env, "LELASTIC_TORCH_THREADS": "0"}, 0, None, workers=1)["LELASTIC_TORCH_THREADS"]
        == "8"
    )
    assert (
        supervisor.worker_env({**env, "LELASTIC_TORCH_THREADS": "3"}, 0, None, workers=2)["LELASTIC_TORCH_THREADS"]
        == "3"
    )


def test_gc_builds_the_url_of_the_stack_valkey_from_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LELASTIC_REDIS_URL", raising=False)
    assert supervisor.embedded_valkey_url(tmp_path) is None
    valkey = EmbeddedValkey(tmp_path / "valkey")
    url = valkey.start()
    try:
        assert supervisor.embedded_valkey_url(tmp_path) == url
        assert cli.main(["gc", "--data-dir", str(tmp_path)]) == 0
    finally:
        valkey.stop()


# ---------------------------------------------------------------------------------- output helpers


def test_format_table_puts_le_clustering_next_to_the_baselines():
    result = {
        "metrics": {"accuracy": 0.95, "ari": 0.81, "nmi": 0.72, "within_between_ratio": 2.5},
        "baselines": {"kmeans_raw": {"accuracy": 0.9, "ari": 0.64, "nmi": 0.55}},
    }
    lines = demo.format_table(result).splitlines()
    assert lines[0].split() == ["method", "accuracy", "ARI", "NMI"]
    assert lines[1].split() == ["LE", "clustering", "0.950", "0.810", "0.720"]
    assert lines[2].split() == ["kmeans_raw", "0.900", "0.640", "0.550"]
    assert "2.500" in lines[3]


def test_parse_sse_reads_ids_events_and_json_data():
    lines = [
        ": keep-alive",
        "id: 1-0",
        "event: progress",
        'data: {"fraction": 0.5}',
        "",
        "event: status",
        "data: x",
        "",
    ]
    assert list(parse_sse(iter(lines))) == [("1-0", "progress", {"fraction": 0.5}), ("1-0", "status", "x")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_one_line_on_a_terminal():
    stream = Terminal()
    bar = ProgressBar(stream, width=10)
    bar({"fraction": 0.5, "stage": "training", "message": "epoch 5"})
    bar.done()
    assert stream.getvalue().startswith("\r[#####.....]  50.0% training epoch 5")
    assert stream.getvalue().endswith("\n")


def test_progress_bar_off_a_terminal_writes_a_line_every_few_seconds_within_a_stage():
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10, every=0.05)
    bar({"fraction": 0.1, "stage": "train", "message": "epoch 1/200"})
    bar({"fraction": 0.11, "stage": "train", "message": "epoch 2/200"})  # too soon: no line
    time.sleep(0.06)
    bar({"fraction": 0.2, "stage": "train", "message": "epoch 40/200"})
    assert [line.split(maxsplit=2)[2] for line in stream.getvalue().splitlines()] == ["epoch 1/200", "epoch 40/200"]


def test_progress_bar_writes_one_line_per_stage_to_a_pipe():
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10, every=3600)
    for fraction, stage in ((0.1, "train"), (0.2, "train"), (0.6, "similarity"), (0.9, "write"), (1.0, "write")):
        bar({"fraction": fraction, "stage": stage, "message": ""})
    bar.done()
    assert "\r" not in stream.getvalue()
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["train", "similarity", "write", "write"]
    assert lines[-1].startswith("100.0%")


# ------------------------------------------------------------------------------- the Valkey server


def test_embedded_valkey_persists_in_the_data_dir(tmp_path):
    directory = tmp_path / "data" / "valkey"
    server = EmbeddedValkey(directory)
    url = server.start()
    try:
        redis.Redis.from_url(url, socket_timeout=5).set("persistence-check", "kept")
        assert (directory / "valkey.log").stat().st_size > 0
        assert list((directory / "appendonlydir").glob("*.aof")), "no AOF file in the data dir"
        assert (directory / supervisor.PID_FILE).exists()
    finally:
        server.stop()
    assert not server.is_alive()

    again = EmbeddedValkey(directory)
    assert again.start() == url, "the port kept in the data dir is reused"
    try:
        assert redis.Redis.from_url(url, socket_timeout=5).get("persistence-check") == b"kept"
    finally:
        again.stop()


def test_a_valkey_left_behind_by_a_killed_supervisor_is_stopped(tmp_path):
    directory = tmp_path / "valkey"
    first = EmbeddedValkey(directory)
    first.start()
    orphan = first.server._process
    first.server = None  # as if the supervisor had been SIGKILLed: nobody stops it
    second = EmbeddedValkey(directory)
    try:
        second.start()
        assert orphan.wait(timeout=10) is not None
        assert second.is_alive()
    finally:
        second.stop()
        if orphan.poll() is None:
            orphan.kill()


# --------------------------------------------------------------------------------- the supervisor


def test_one_supervisor_per_data_dir(tmp_path):
    first, second = Stack(StackConfig(data_dir=tmp_path)), Stack(StackConfig(data_dir=tmp_path))
    first._take_lock()
    try:
        with pytest.raises(StackError, match="already running"):
            second._take_lock()
    finally:
        first.stop()
    second._take_lock()
    second.stop()


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(StackError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            Stack(StackConfig(port=port, data_dir=tmp_path)).start()
    assert not (tmp_path / "valkey").exists(), "nothing is started when the port is taken"


def test_a_child_that_dies_is_restarted(tmp_path):
    stack = Stack(StackConfig(data_dir=tmp_path))
    child = Child("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], env={})
    stack.children = [child]
    child.start()
    first_pid = child.pid
    child.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while child.pid == first_pid and time.monotonic() < deadline:
        stack.check_children()
        time.sleep(0.05)
    assert child.pid != first_pid and child.restarts == 1
    stack.stop()


def test_stop_escalates_and_leaves_no_descendants(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "STOP_GRACE", (0.5, 0.5))
    # A child that ignores SIGTERM and has a grandchild in a process group of its own (like a work-horse).
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    out = tmp_path / "out"
    with open(out, "wb") as handle:
        child = Child("stubborn", [sys.executable, "-c", script], env={})
        child.start(handle)
    deadline = time.monotonic() + 10
    while not out.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(out.read_text())
    stack = Stack(StackConfig(data_dir=tmp_path))
    stack.children = [child]
    stack.stop()
    assert child.process.poll() is not None
    assert not supervisor._alive(grandchild)
