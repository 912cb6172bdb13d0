"""Every Redis key lelastic uses, each built by one function here (as `rq.job.Job.key_for` builds RQ's).

No other module spells a key: they all call these functions. Key strings are part of the stored data,
so they never change::

    key (function)                                  type    written by   holds
    ----------------------------------------------  ------  -----------  ----------------------------------------
    lelastic:job:<id>  (job)                        hash    API, worker  id, tenant, spec (JSON), status (only
                                                                         through `jobstate`), created_at,
                                                                         started_at, finished_at, error,
                                                                         progress (JSON), result (JSON)
    lelastic:job:<id>:events  (job_events)          stream  API, worker  {"event": "progress" | "status",
                                                                         "data": JSON}; its entry ids are the SSE
                                                                         event ids; about EVENTS_MAXLEN entries
    lelastic:job:<id>:tiles  (job_tiles)            set     worker       names ("I-J") of a sharded job's tiles whose
                                                                         outputs are written; the tile that completes
                                                                         it queues the reduce step
    lelastic:job:<id>:fold:<r>                      string  worker       the token of the process folding the tiles'
        (job_fold_lock)                                                  partial top-k lists into row block r's
                                                                         list; expires after FOLD_LOCK_SECONDS
    lelastic:jobs:<tenant>  (jobs_index)            zset    API          job id -> creation time
    lelastic:jobs-by-status:<status>:<tenant>       zset    API, worker  job id -> creation time, for the jobs
        (status_index)                                                   whose status is <status> (only
                                                                         through `jobstate`)
    lelastic:job-counts  (JOB_COUNTS)               hash    API, worker  status -> jobs indexed with it (only
                                                                         through `jobstate`)
    lelastic:job-durations  (JOB_DURATIONS)         hash    API, worker  "<status>:sum" / "<status>:count": run
                                                                         time of jobs that ended in <status>
    lelastic:status-index:ready  (STATUS_INDEX_READY)  string  API      set once every record is indexed
    lelastic:streams:<tenant>  (event_streams)      zset    API          open event stream token -> lease expiry
    lelastic:uploads:<tenant>                       zset    API          upload in progress token -> lease expiry
        (uploads_in_progress)
    lelastic:dataset:<id>  (dataset)                hash    API          id, tenant, kind ("dataset" |
                                                                         "weights"), name, meta (JSON), created_at
    lelastic:datasets:<tenant>  (datasets_index)    zset    API          dataset id -> creation time
    lelastic:storage-reservations:<tenant>          hash    API          dataset id -> "<bytes> <expiry unix
        (storage_reservations)                                           seconds>": uploads in progress, counted
                                                                         against the tenant's storage quota
    lelastic:active:<tenant>  (active_jobs)         zset    API          queued + running job id -> creation time
                                                                         (minus the admission time while its
                                                                         record is being created)
    lelastic:rate:<tenant>:<window>  (rate)         string  API          requests in one one-minute window
    lelastic:idempotency:<tenant>:<route>:<sha256>  string  API          `<token> <JSON>`: the claim, then the
        (idempotency)                                                    response, of an Idempotency-Key
    lelastic:retention:lock  (RETENTION_LOCK)       string  API, CLI     the token of the process sweeping now

RQ's own keys (`rq:job:<id>`, `rq:queue:<name>`, its registries) are built by RQ; the RQ job that runs
a lelastic job has the lelastic job's id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

PREFIX = "lelastic:"
#: The entries a job's event stream keeps (trimmed approximately).
EVENTS_MAXLEN = 1000
RETENTION_LOCK = f"{PREFIX}retention:lock"
#: What every `status_index` key starts with (Lua scripts build them as prefix .. status .. ":" .. tenant).
STATUS_INDEX_PREFIX = f"{PREFIX}jobs-by-status:"
JOB_COUNTS = f"{PREFIX}job-counts"
JOB_DURATIONS = f"{PREFIX}job-durations"
STATUS_INDEX_READY = f"{PREFIX}status-index:ready"

#: A function that builds a key from one id or tenant, such as `job` or `jobs_index`.
KeyFor = Callable[[str], str]


def job(job_id: str) -> str:
    """The job record hash."""
    return f"{PREFIX}job:{job_id}"


def job_events(job_id: str) -> str:
    """The job's event stream (progress and status)."""
    return f"{PREFIX}job:{job_id}:events"


def job_tiles(job_id: str) -> str:
    """The tiles of a sharded job whose outputs are written (a set of tile names: the counter barrier)."""
    return f"{PREFIX}job:{job_id}:tiles"


def job_fold_lock(job_id: str, row_block: int) -> str:
    """The lock of a sharded job's row block while a process folds partial top-k lists into its list."""
    return f"{PREFIX}job:{job_id}:fold:{row_block}"


def jobs_index(tenant: str) -> str:
    """The tenant's job ids by creation time."""
    return f"{PREFIX}jobs:{tenant}"


def status_index(status: str, tenant: str) -> str:
    """The tenant's job ids whose status is `status`, by creation time."""
    return f"{STATUS_INDEX_PREFIX}{status}:{tenant}"


def event_streams(tenant: str) -> str:
    """The tenant's open event streams (the streams-per-tenant limit)."""
    return f"{PREFIX}streams:{tenant}"


def uploads_in_progress(tenant: str) -> str:
    """The tenant's uploads in progress (the uploads-per-tenant limit)."""
    return f"{PREFIX}uploads:{tenant}"


def dataset(dataset_id: str) -> str:
    """The upload (dataset or weights) record hash."""
    return f"{PREFIX}dataset:{dataset_id}"


def datasets_index(tenant: str) -> str:
    """The tenant's upload ids by creation time."""
    return f"{PREFIX}datasets:{tenant}"


def storage_reservations(tenant: str) -> str:
    """The bytes the tenant's uploads in progress have reserved of its storage quota (by dataset id)."""
    return f"{PREFIX}storage-reservations:{tenant}"


def active_jobs(tenant: str) -> str:
    """The tenant's queued and running job ids (the active-jobs limit)."""
    return f"{PREFIX}active:{tenant}"


def rate(tenant: str, window: int) -> str:
    """The tenant's request counter of one-minute window `window` (minutes since the epoch)."""
    return f"{PREFIX}rate:{tenant}:{window}"


def idempotency(tenant: str, route: str, idempotency_key: str) -> str:
    """The claim or stored response of an Idempotency-Key (the header's value is hashed)."""
    return f"{PREFIX}idempotency:{tenant}:{route}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def pattern(key_for: KeyFor) -> str:
    """SCAN pattern of every key `key_for` builds: `pattern(job)` is `lelastic:job:*`.

    A job's event stream matches `pattern(job)` too; `id_in` tells them apart.
    """
    return key_for("*")


def id_in(key: str, key_for: KeyFor) -> str | None:
    """The id (or tenant) `key_for` built `key` from, or None when `key` is not such a key.

    `id_in("lelastic:job:ab12", job)` is "ab12"; `id_in("lelastic:job:ab12:events", job)` is None.
    """
    prefix = key_for("")
    rest = key[len(prefix) :] if key.startswith(prefix) else ""
    return rest if rest and ":" not in rest else None
