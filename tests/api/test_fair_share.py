"""One tenant cannot make the others wait: the status index and job counters (lists and /metrics cost the
same whatever the number of records), bounded /metrics labels, and the queue's round-robin order."""

from __future__ import annotations

from rq.exceptions import AbandonedJobError

from service.contract import jobstate, keys, queue, records, sharding
from service.contract.jobstate import JobStatus
from tests.factories import DIGITS_3_5, app_client, submit_id


def statuses_listed(client, status: str, **headers: str) -> list[str]:
    response = client.get("/v1/jobs", params={"status": status, "limit": 200}, headers=headers)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


def job_gauges(text: str) -> dict[str, int]:
    found = {}
    for line in text.splitlines():
        if line.startswith("lelastic_jobs{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = int(value)
    return found


def command_calls(conn) -> int:
    """Commands the server has run so far (INFO commandstats, INFO itself included)."""
    return sum(stats["calls"] for stats in conn.info("commandstats").values())


def test_each_move_keeps_the_status_index_and_counts(client, redis_conn):
    first, second, third = (submit_id(client) for _ in range(3))
    jobstate.mark_running(redis_conn, first, at=100.0)
    jobstate.mark_succeeded(redis_conn, first, {}, at=102.5)
    jobstate.mark_running(redis_conn, second, at=200.0)
    assert statuses_listed(client, "queued") == [third]
    assert statuses_listed(client, "running") == [second]
    assert statuses_listed(client, "succeeded") == [first]
    assert redis_conn.zscore(keys.status_index("running", "default"), second) is not None
    text = client.get("/metrics").text
    assert job_gauges(text) == {"queued": 1, "running": 1, "succeeded": 1, "failed": 0, "canceled": 0}
    assert 'lelastic_job_duration_seconds_sum{status="succeeded"} 2.500' in text
    assert 'lelastic_job_duration_seconds_count{status="succeeded"} 1' in text
    assert client.delete(f"/v1/jobs/{first}", params={"purge": "true"}).status_code == 204
    assert not jobstate.mark_running(redis_conn, first).done  # gone: no move, no count
    assert job_gauges(client.get("/metrics").text)["succeeded"] == 0
    assert statuses_listed(client, "succeeded") == []


def test_a_status_page_reads_only_jobs_of_that_status(client, redis_conn):
    """The page of running jobs does not walk the tenant's other records (it reads the status index)."""
    running = submit_id(client)
    jobstate.mark_running(redis_conn, running)
    for _ in range(1000):  # finished jobs, newer than the running one
        finished = records.create_job(redis_conn, spec={}).id
        jobstate.mark_canceled(redis_conn, finished)
    before = command_calls(redis_conn)
    assert statuses_listed(client, "running") == [running]
    assert command_calls(redis_conn) - before < 40


def test_records_written_before_the_index_are_indexed_at_start_up(settings, redis_conn):
    """A store from before the status index (no index, no counts): the API indexes it once when it starts."""
    with app_client(settings) as client:
        queued, canceled = submit_id(client), submit_id(client)
        client.delete(f"/v1/jobs/{canceled}")
    for status in JobStatus:
        redis_conn.delete(keys.status_index(status.value, "default"))
    redis_conn.delete(keys.JOB_COUNTS, keys.JOB_DURATIONS, keys.STATUS_INDEX_READY)
    with app_client(settings) as client:
        assert statuses_listed(client, "queued") == [queued]
        assert statuses_listed(client, "canceled") == [canceled]
        gauges = job_gauges(client.get("/metrics").text)
        assert (gauges["queued"], gauges["canceled"]) == (1, 1)
        assert redis_conn.get(keys.STATUS_INDEX_READY) is not None
        jobstate.mark_running(redis_conn, queued)
        assert jobstate.index_existing(redis_conn) == 0, "indexing again adds nothing"
        assert job_gauges(client.get("/metrics").text) == {
            "queued": 0,
            "running": 1,
            "succeeded": 0,
            "failed": 0,
            "canceled": 1,
        }


def test_a_record_moved_before_it_was_indexed_is_counted_once(redis_conn):
    record = records.create_job(redis_conn, spec={}, tenant="carol")
    redis_conn.delete(keys.status_index("queued", "carol"), keys.JOB_COUNTS)  # as if written before the index
    jobstate.mark_running(redis_conn, record.id)
    assert jobstate.index_existing(redis_conn) == 0
    counts = {k.decode(): int(v) for k, v in redis_conn.hgetall(keys.JOB_COUNTS).items()}
    assert counts == {"running": 1}
    assert redis_conn.zrange(keys.status_index("running", "carol"), 0, -1) == [record.id.encode()]


def test_indexing_from_scratch_rebuilds_exactly_what_the_moves_kept(redis_conn):
    for n in range(300):
        job_id = records.create_job(redis_conn, spec={}, tenant=f"t{n % 7}").id
        if n % 3:
            jobstate.mark_running(redis_conn, job_id, at=float(n))
        if n % 3 == 1:
            jobstate.mark_succeeded(redis_conn, job_id, {}, at=n + 0.25)
        elif n % 5 == 0:
            jobstate.mark_canceled(redis_conn, job_id, at=n + 1.0)
    kept = {name: redis_conn.hgetall(name) for name in (keys.JOB_COUNTS, keys.JOB_DURATIONS)}
    indexes = sorted(redis_conn.scan_iter(match=keys.status_index("*", "*")))
    members = {index: redis_conn.zrange(index, 0, -1, withscores=True) for index in indexes}
    redis_conn.delete(*indexes, keys.JOB_COUNTS, keys.JOB_DURATIONS)
    assert jobstate.index_existing(redis_conn, batch=64) == 300
    assert {name: redis_conn.hgetall(name) for name in kept} == kept
    assert {index: redis_conn.zrange(index, 0, -1, withscores=True) for index in indexes} == members


def test_a_metrics_scrape_costs_the_same_whatever_the_number_of_records(client, redis_conn):
    client.get("/metrics")
    before = command_calls(redis_conn)
    client.get("/metrics")
    few = command_calls(redis_conn) - before
    for n in range(5000):
        records.create_job(redis_conn, spec={}, tenant=f"t{n % 50}")
    before = command_calls(redis_conn)
    text = client.get("/metrics").text
    many = command_calls(redis_conn) - before
    assert job_gauges(text)["queued"] == 5000
    assert many == few and many < 15, (few, many)


def test_invented_methods_and_paths_fold_into_one_label(client):
    for n in range(200):
        client.request(f"X{n}METHOD", "/healthz")
        client.get(f"/no/such/path/{n}")
    text = client.get("/metrics").text
    assert "X1METHOD" not in text and "/no/such" not in text
    assert 'method="other",route="/healthz",status="405"' in text
    assert 'method="GET",route="<unmatched>",status="404"} 200' in text
    assert len(text) < 20_000


def queued_order(redis_conn, settings) -> list[str]:
    return [member.decode() for member in redis_conn.lrange(queue.queue_key(settings), 0, -1)]


def test_the_queue_takes_tenants_in_turn(keyed, redis_conn, settings):
    """Alice queues four jobs, then Bob one: Bob's is next after Alice's first. With Alice's first
    running, Bob's second goes after Alice's next one."""
    client, alice, bob, _ = keyed
    as_alice, as_bob = {"X-API-Key": alice}, {"X-API-Key": bob}

    def submit_as(headers: dict[str, str]) -> str:
        response = client.post("/v1/jobs", json=DIGITS_3_5, headers=headers)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    a1, a2, a3, a4 = (submit_as(as_alice) for _ in range(4))
    b1 = submit_as(as_bob)
    assert queued_order(redis_conn, settings) == [a1, b1, a2, a3, a4]
    assert redis_conn.lpop(queue.queue_key(settings)).decode() == a1  # a worker takes Alice's first
    jobstate.mark_running(redis_conn, a1)
    b2 = submit_as(as_bob)
    assert queued_order(redis_conn, settings) == [b1, a2, b2, a3, a4]
    rq_job = queue.fetch_rq_job(redis_conn, b2)
    assert rq_job is not None and rq_job.args == [b2], "the queue entry is still the RQ job of Bob's job"


def test_the_tiles_of_a_sharded_job_queue_for_their_jobs_tenant(keyed, redis_conn, settings):
    """Alice's sharded job runs and its tiles fill the queue: Bob's job goes before all of them, as the
    tiles are Alice's turns, not turns of tenants of their own."""
    client, alice, bob, _ = keyed
    response = client.post("/v1/jobs", json=DIGITS_3_5, headers={"X-API-Key": alice})
    assert response.status_code == 202, response.text
    a1 = response.json()["id"]
    assert redis_conn.lpop(queue.queue_key(settings)).decode() == a1
    jobstate.mark_running(redis_conn, a1)
    tiles = [sharding.tile_job_id(a1, i, j) for i, j in ((0, 0), (0, 1), (1, 1))]
    redis_conn.rpush(queue.queue_key(settings), *tiles)
    response = client.post("/v1/jobs", json=DIGITS_3_5, headers={"X-API-Key": bob})
    assert response.status_code == 202, response.text
    assert queued_order(redis_conn, settings) == [response.json()["id"], *tiles]


def test_a_job_queued_again_after_its_worker_was_lost_takes_its_tenants_next_turn(keyed, redis_conn, settings):
    """Alice's first job starts and its worker is lost: RQ's sweep queues it again at the tail (its
    Retry); the sweeping worker then places it at Alice's next turn, where it was, not behind every job
    submitted since."""
    client, alice, bob, _ = keyed

    def submit_as(key: str) -> str:
        response = client.post("/v1/jobs", json=DIGITS_3_5, headers={"X-API-Key": key})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    a1, a2, a3 = (submit_as(alice) for _ in range(3))
    b1 = submit_as(bob)
    assert queued_order(redis_conn, settings) == [a1, b1, a2, a3]
    assert redis_conn.lpop(queue.queue_key(settings)).decode() == a1
    jobstate.mark_running(redis_conn, a1)
    rq_job = queue.fetch_rq_job(redis_conn, a1)
    assert rq_job is not None and rq_job.retries_left == 1
    # What RQ's registry sweep does with an abandoned job: the failure callback, then the retry.
    queue.on_rq_failure(rq_job, redis_conn, AbandonedJobError, AbandonedJobError("lost"), None)
    with redis_conn.pipeline() as pipe:
        rq_job.retry(queue.get_queue(redis_conn, settings), pipe)
        pipe.execute()
    assert queued_order(redis_conn, settings) == [b1, a2, a3, a1]
    assert queue.place_requeued(redis_conn) == 1
    assert queued_order(redis_conn, settings) == [a1, b1, a2, a3]
    assert records.get_job(redis_conn, a1).status == JobStatus.QUEUED
    assert queue.place_requeued(redis_conn) == 0, "each requeued job is placed once"
