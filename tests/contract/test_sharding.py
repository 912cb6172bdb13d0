"""The sharding glue on a real Valkey: the tile plan, progress figures, and a canceled job's queued tiles."""

from __future__ import annotations

from rq import Queue
from rq.group import Group
from rq.job import Job
from rq.serializers import JSONSerializer

from service.contract import sharding

JOB, OTHER = "a" * 32, "b" * 32


def test_square_plans_cover_each_unordered_pair_once_and_rectangular_ones_every_pair():
    square = sharding.plan(10, 10, 4, square=True)
    assert square == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    assert len(sharding.plan(10, 7, 4, square=False)) == 3 * 2


def test_tile_progress_reports_rate_and_time_left():
    tiles, message = sharding.tile_progress(30, 120, started_at=1000.0, now=1010.0)
    assert tiles == {"done": 30, "total": 120, "per_second": 3.0, "eta_seconds": 30.0}
    assert "30/120" in message and "3.00 tiles/s" in message and "30 s left" in message
    none_yet, _ = sharding.tile_progress(0, 120, started_at=1000.0, now=1010.0)
    assert none_yet["eta_seconds"] is None and none_yet["per_second"] == 0


def test_drop_queued_deletes_only_that_jobs_queued_tiles_and_workers_skip_their_ids(settings, redis_conn):
    info = {"n_rows": 6, "n_cols": 6, "block": 2, "square": True}
    sharding.enqueue_tiles(redis_conn, settings, JOB, sharding.plan(6, 6, 2, square=True), result_ttl=60)
    sharding.enqueue_tiles(redis_conn, settings, OTHER, [(0, 0), (0, 1)], result_ttl=60)
    started = Job.fetch(sharding.tile_job_id(JOB, 0, 1), connection=redis_conn, serializer=JSONSerializer)
    started.set_status("started")  # a worker runs this one: it keeps its job and stops by its watchdog
    assert sharding.drop_queued(redis_conn, JOB, info) == 5
    assert not redis_conn.exists(Job.key_for(sharding.tile_job_id(JOB, 0, 0)))
    assert redis_conn.exists(Job.key_for(sharding.tile_job_id(JOB, 0, 1)))
    assert redis_conn.exists(Job.key_for(sharding.tile_job_id(OTHER, 0, 0)))
    assert not redis_conn.exists(Group.get_key(JOB))
    # The ids still in the queue lead nowhere: a dequeue skips them and returns the other job's tiles.
    queue = Queue(sharding.tile_queue_name(settings), connection=redis_conn, serializer=JSONSerializer)
    popped = []
    while (found := Queue.dequeue_any([queue], None, connection=redis_conn, serializer=JSONSerializer)) is not None:
        popped.append(found[0].id)
    assert popped == [
        sharding.tile_job_id(JOB, 0, 1),
        sharding.tile_job_id(OTHER, 0, 0),
        sharding.tile_job_id(OTHER, 0, 1),
    ]
    assert sharding.drop_queued(redis_conn, JOB, info) == 0
