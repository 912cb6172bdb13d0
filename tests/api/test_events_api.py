"""GET /v1/jobs/{id}/events: Server-Sent Events from the job's Redis stream."""

from __future__ import annotations

import threading
import time

from rq.job import Job
from rq.serializers import JSONSerializer

from service.contract import jobstate, records
from tests.factories import assert_names, read_stream, submit


def run_to_success(conn, job_id: str) -> None:
    jobstate.mark_running(conn, job_id)
    records.set_progress(conn, job_id, fraction=0.5, stage="similarity", message="half way")
    jobstate.mark_succeeded(conn, job_id, {})


def test_stream_has_every_event_then_ends_after_the_final_status(client, redis_conn):
    job = submit(client).json()
    run_to_success(redis_conn, job["id"])
    events = read_stream(client, job["id"])
    assert [(e["event"], e["data"].get("status") or e["data"]["stage"]) for e in events] == [
        ("status", "queued"),
        ("status", "running"),
        ("progress", "similarity"),
        ("status", "succeeded"),
    ]
    assert events[2]["data"] == {"fraction": 0.5, "stage": "similarity", "message": "half way"}
    assert all(e["id"] for e in events)


def test_last_event_id_resumes_after_that_event(client, redis_conn):
    job = submit(client).json()
    run_to_success(redis_conn, job["id"])
    first = read_stream(client, job["id"])
    resumed = read_stream(client, job["id"], **{"Last-Event-ID": first[1]["id"]})
    assert resumed == first[2:]
    after_end = read_stream(client, job["id"], **{"Last-Event-ID": first[-1]["id"]})
    assert [e["data"]["status"] for e in after_end] == ["succeeded"], "a resumed client still learns the end"


def test_events_written_while_streaming_arrive_live(client, redis_conn):
    job = submit(client).json()
    writer = threading.Timer(0.3, run_to_success, args=(redis_conn, job["id"]))
    started = time.monotonic()
    writer.start()
    events = read_stream(client, job["id"])
    writer.join()
    assert [e["event"] for e in events] == ["status", "status", "progress", "status"]
    assert time.monotonic() - started < 5


def test_stream_of_a_lost_job_ends_failed(client, redis_conn):
    job = submit(client).json()
    Job.fetch(job["id"], connection=redis_conn, serializer=JSONSerializer).delete()
    jobstate.mark_running(redis_conn, job["id"])
    events = read_stream(client, job["id"])
    assert events[-1]["data"]["status"] == "failed" and "worker lost" in events[-1]["data"]["error"]


def test_unknown_job_and_bad_last_event_id(client):
    assert_names(client.get("/v1/jobs/nope/events"), 404, "job_id")
    job = submit(client).json()
    response = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "yesterday"})
    assert_names(response, 422, "last-event-id", "yesterday")
