"""The job state machine: TRANSITIONS is what the `mark_*` functions do on a real Valkey, and no other
module writes a job's status or spells the active statuses by hand."""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from service.contract import jobstate, keys, records
from service.contract.jobstate import ACTIVE, FINAL, TRANSITIONS, JobStatus, Move

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("service", "workers", "benchmarks", "tests")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = JobStatus

#: The moves a job may make, written out once more by hand: the table must say exactly this.
EXPECTED_TRANSITIONS = {
    QUEUED: {RUNNING, FAILED, CANCELED},
    RUNNING: {RUNNING, QUEUED, SUCCEEDED, FAILED, CANCELED},
    SUCCEEDED: set(),
    FAILED: set(),
    CANCELED: set(),
}

#: The one function that moves a job to each status.
MARK: dict[JobStatus, Callable[[redis.Redis, str], Move]] = {
    RUNNING: jobstate.mark_running,
    QUEUED: lambda conn, job_id: jobstate.mark_requeued(conn, job_id, "worker lost: in a test"),
    SUCCEEDED: lambda conn, job_id: jobstate.mark_succeeded(conn, job_id, {"n": 2}),
    FAILED: lambda conn, job_id: jobstate.mark_failed(conn, job_id, "failed in a test"),
    CANCELED: jobstate.mark_canceled,
}

#: How a fresh job reaches each status: the moves after its creation.
PATH_TO: dict[JobStatus, tuple[JobStatus, ...]] = {
    QUEUED: (),
    RUNNING: (RUNNING,),
    SUCCEEDED: (RUNNING, SUCCEEDED),
    FAILED: (FAILED,),
    CANCELED: (CANCELED,),
}

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))
ALLOWED = [(before, after) for before, after in ALL_PAIRS if after in EXPECTED_TRANSITIONS[before]]
REFUSED = [(before, after) for before, after in ALL_PAIRS if after not in EXPECTED_TRANSITIONS[before]]


def pair_id(pair: tuple[JobStatus, JobStatus]) -> str:
    return f"{pair[0]}->{pair[1]}"


def job_in(conn: redis.Redis, status: JobStatus) -> str:
    """A new job record moved to `status`."""
    job_id = records.create_job(conn, spec={"dataset": {"builtin": "digits"}}).id
    for step in PATH_TO[status]:
        assert MARK[step](conn, job_id).done
    assert records.get_job(conn, job_id).status == status
    return job_id


def snapshot(conn: redis.Redis, job_id: str) -> tuple[dict, list]:
    """Everything a status write could change: the job's hash and its event stream."""
    return conn.hgetall(keys.job(job_id)), conn.xrange(keys.job_events(job_id))


def last_event(conn: redis.Redis, job_id: str) -> tuple[str, dict]:
    _, fields = conn.xrevrange(keys.job_events(job_id), count=1)[0]
    return fields[b"event"].decode(), json.loads(fields[b"data"])


# ------------------------------------------------------------------------------------------ the table


def test_statuses_are_the_five_the_api_shows():
    assert [status.value for status in JobStatus] == ["queued", "running", "succeeded", "failed", "canceled"]
    assert ACTIVE == {QUEUED, RUNNING} and FINAL == {SUCCEEDED, FAILED, CANCELED}
    assert ACTIVE | FINAL == set(JobStatus) and not ACTIVE & FINAL
    assert f"{RUNNING}" == "running" and RUNNING == "running"


def test_the_table_lists_every_status_and_exactly_the_expected_moves():
    assert {before: set(after) for before, after in TRANSITIONS.items()} == EXPECTED_TRANSITIONS


def test_only_final_statuses_are_never_left():
    assert {status for status in JobStatus if not TRANSITIONS[status]} == FINAL


@pytest.mark.parametrize("pair", ALLOWED, ids=pair_id)
def test_each_allowed_move_is_made_by_its_mark_function(redis_conn, pair):
    before, after = pair
    job_id = job_in(redis_conn, before)
    move = MARK[after](redis_conn, job_id)
    assert move == Move(True, before)
    record = records.get_job(redis_conn, job_id)
    assert record.status == after
    event, data = last_event(redis_conn, job_id)
    assert event == "status" and data["status"] == after.value


@pytest.mark.parametrize("pair", REFUSED, ids=pair_id)
def test_each_refused_move_changes_nothing(redis_conn, pair):
    before, after = pair
    job_id = job_in(redis_conn, before)
    unchanged = snapshot(redis_conn, job_id)
    assert MARK[after](redis_conn, job_id) == Move(False, before)
    assert snapshot(redis_conn, job_id) == unchanged


@pytest.mark.parametrize("pair", REFUSED, ids=pair_id)
def test_a_move_the_table_refuses_is_never_sent_to_redis(redis_conn, pair):
    before, after = pair
    job_id = job_in(redis_conn, before)
    unchanged = snapshot(redis_conn, job_id)
    with pytest.raises(ValueError, match=f"no job moves from {before.value} to {after.value}"):
        jobstate._move(redis_conn, job_id, after, {before}, {})
    assert snapshot(redis_conn, job_id) == unchanged


def test_a_missing_job_is_not_created_by_a_move(redis_conn):
    for status in JobStatus:
        assert MARK[status](redis_conn, "no-such-job") == Move(False, None)
    assert redis_conn.keys("*") == []


# ------------------------------------------------------------------------------ what each move writes


def test_a_new_job_is_queued_with_one_status_event(redis_conn):
    job_id = records.create_job(redis_conn, spec={}).id
    assert records.get_job(redis_conn, job_id).status == QUEUED
    assert [entry[1] for entry in redis_conn.xrange(keys.job_events(job_id))] == [
        {b"event": b"status", b"data": b'{"status": "queued"}'}
    ]


def test_running_sets_started_at_and_clears_an_earlier_error(redis_conn):
    job_id = job_in(redis_conn, QUEUED)
    jobstate.mark_running(redis_conn, job_id, at=1000.5)
    record = records.get_job(redis_conn, job_id)
    assert record.started_at == 1000.5 and record.error is None
    assert last_event(redis_conn, job_id) == ("status", {"status": "running", "error": ""})


def test_requeued_says_why_in_the_progress(redis_conn):
    job_id = job_in(redis_conn, RUNNING)
    jobstate.mark_requeued(redis_conn, job_id, "worker lost: gone")
    assert records.get_job(redis_conn, job_id).progress == {
        "fraction": 0.0,
        "stage": "queued",
        "message": "worker lost: gone; queued to run again",
    }


def test_succeeded_stores_the_result_and_the_finish_time(redis_conn):
    job_id = job_in(redis_conn, RUNNING)
    jobstate.mark_succeeded(redis_conn, job_id, {"n": 3, "artifacts": ["result.json"]}, at=2000.0)
    record = records.get_job(redis_conn, job_id)
    assert record.result == {"n": 3, "artifacts": ["result.json"]} and record.finished_at == 2000.0
    assert last_event(redis_conn, job_id) == ("status", {"status": "succeeded"})


def test_failed_stores_the_reason_in_the_record_and_the_event(redis_conn):
    job_id = job_in(redis_conn, QUEUED)
    jobstate.mark_failed(redis_conn, job_id, "timeout: too long", at=3000.0)
    record = records.get_job(redis_conn, job_id)
    assert record.error == "timeout: too long" and record.finished_at == 3000.0
    assert last_event(redis_conn, job_id) == ("status", {"status": "failed", "error": "timeout: too long"})


@pytest.mark.parametrize("before", [QUEUED, RUNNING], ids=str)
def test_failed_from_one_expected_status_only(redis_conn, before):
    other = RUNNING if before == QUEUED else QUEUED
    job_id = job_in(redis_conn, before)
    assert jobstate.mark_failed(redis_conn, job_id, "x", expected={other}) == Move(False, before)
    assert jobstate.mark_failed(redis_conn, job_id, "x", expected={before}) == Move(True, before)


def test_canceled_sets_the_finish_time(redis_conn):
    job_id = job_in(redis_conn, RUNNING)
    jobstate.mark_canceled(redis_conn, job_id, at=4000.0)
    assert records.get_job(redis_conn, job_id).finished_at == 4000.0
    assert last_event(redis_conn, job_id) == ("status", {"status": "canceled"})


# ------------------------------------------------------------------------------------ the source tree


def source_files() -> Iterator[Path]:
    for directory in SOURCE_DIRS:
        yield from sorted((ROOT / directory).rglob("*.py"))


HASH_WRITES = {"hset", "hsetnx", "hmset"}
LUA_STATUS_WRITE = re.compile(r"""H(M)?SET(NX)?['"]?\s*,[^\n]*['"]status['"]""", re.IGNORECASE)


def _is_status(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "status"


def _dict_with_status_key(node: ast.AST) -> bool:
    return any(isinstance(d, ast.Dict) and any(k is not None and _is_status(k) for k in d.keys) for d in ast.walk(node))


def status_writes(path: Path) -> list[int]:
    """Lines of `path` that write a `status` hash field: an HSET naming it (in Python, or in a Lua
    script), or a dict with a "status" key (or a `x["status"] = ...`) that a function passes to HSET."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and LUA_STATUS_WRITE.search(node.value)
    ]
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]
    for scope in scopes:
        calls = [
            node
            for node in ast.walk(scope)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in HASH_WRITES
        ]
        names = {node.id for call in calls for node in ast.walk(call) if isinstance(node, ast.Name)}
        lines += [call.lineno for call in calls if any(_is_status(node) for node in ast.walk(call))]
        lines += [call.lineno for call in calls if _dict_with_status_key(call)]
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in names and _dict_with_status_key(node.value):
                        lines.append(node.lineno)
                    if (
                        isinstance(target, ast.Subscript)
                        and isinstance(target.value, ast.Name)
                        and target.value.id in names
                        and _is_status(target.slice)
                    ):
                        lines.append(node.lineno)
    return sorted(set(lines))


def test_the_status_write_finder_finds_the_writes_of_jobstate():
    assert len(status_writes(ROOT / "service" / "contract" / "jobstate.py")) >= 2  # Lua and the first status


def test_the_status_write_finder_sees_a_mapping_built_beforehand(tmp_path):
    module = tmp_path / "writer.py"
    module.write_text(
        "def create(conn, job_id):\n"
        "    fields = {'id': job_id, 'status': 'queued'}\n"
        "    conn.hset(job_id, mapping=fields)\n"
        "def update(conn, job_id):\n"
        "    fields = {}\n"
        "    fields['status'] = 'running'\n"
        "    conn.hset(job_id, mapping=fields)\n"
        "SCRIPT = \"redis.call('HSET', KEYS[1], 'status', ARGV[1])\"\n"
    )
    assert status_writes(module) == [2, 6, 8]


def test_no_module_but_jobstate_writes_a_status():
    allowed = {ROOT / "service" / "contract" / "jobstate.py", Path(__file__).resolve()}  # this file: samples
    writers = {
        str(path.relative_to(ROOT)): found
        for path in source_files()
        if path not in allowed and (found := status_writes(path))
    }
    assert writers == {}, f"status written outside service/contract/jobstate.py: {writers}"


ACTIVE_PAIR = re.compile(
    r"""[(\[{]\s*(["'])(queued|running)\1\s*,\s*(["'])(queued|running)\3\s*,?\s*[)\]}]""",
)


def test_the_active_statuses_are_never_spelled_as_a_literal_pair():
    found = {
        str(path.relative_to(ROOT)): [match.group(0) for match in ACTIVE_PAIR.finditer(path.read_text())]
        for path in source_files()
    }
    found = {path: matches for path, matches in found.items() if matches}
    assert found == {}, f"use service.contract.jobstate.ACTIVE instead: {found}"
