"""Settings, read from `LELASTIC_*` environment variables (and a `.env` file).

    CommonSettings   what every process reads: the Redis server, the data dir, the queue, logging
    ApiSettings      + what the API reads: limits, queueing of new jobs, retention, API keys
    WorkerSettings   + what a worker reads: device, threads, heartbeats
    Settings         all of them: the `lelastic` command (which starts both) and tests

Every setting is listed in the README's configuration table, with the processes that read it; a test
keeps the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Settings every process reads."""

    model_config = SettingsConfigDict(env_prefix="LELASTIC_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis/Valkey URL. Unset: `lelastic up` starts the embedded Valkey server; "
        "`lelastic api` and `lelastic worker` require it.",
    )
    data_dir: Path = Field(
        default=Path(".lelastic"), description="Datasets, job artifacts and server files (shared storage)."
    )
    queue: str = Field(default="lelastic", description="RQ queue name the API enqueues to and workers listen on.")
    job_timeout: int = Field(
        default=3600, ge=1, description="Seconds a job may run before it fails with reason `timeout`."
    )
    redis_socket_timeout: float = Field(default=10.0, gt=0, description="Seconds before a Redis call is abandoned.")
    log_level: str = Field(default="INFO", description="Log level of every process.")
    log_format: str = Field(
        default="auto",
        pattern="^(auto|json|text)$",
        description="Log lines as JSON objects (json), plain text (text), or auto: text on a terminal, else JSON.",
    )

    # Sharded jobs: one similarity job cut into tiles that every worker can run (the API and the workers
    # resolve `auto` the same way).
    shard_above_n: int = Field(
        default=20_000,
        ge=2,
        description="execution.mode auto runs a job sharded when its primary examples exceed this.",
    )
    tile_queue: str | None = Field(
        default=None, description="RQ queue of the tiles of sharded jobs. Unset: the job queue (LELASTIC_QUEUE)."
    )
    max_tiles: int = Field(default=20_000, ge=1, description="Most tiles one sharded job may be cut into.")
    max_sharded_matrix_bytes: int = Field(
        default=64 * 1024**3,
        ge=1024,
        description="Disk budget of a sharded job's full float32 matrix, in bytes (output.matrix auto: written "
        "when it fits).",
    )
    nystrom_landmarks: int = Field(
        default=1000,
        ge=2,
        description="Landmark columns of Nyström kernel k-means (sharded jobs above exact_clustering_max_n).",
    )
    exact_clustering_max_n: int = Field(
        default=20_000, ge=2, description="Largest sharded job clustered (with its full matrix) by the exact methods."
    )


class ApiSettings(CommonSettings):
    """Settings the API reads (and `lelastic gc`, `lelastic keys`)."""

    inline_matrix_max_n: int = Field(
        default=2000, ge=0, description="Results include the similarity matrix inline when n is at most this."
    )
    max_upload_bytes: int = Field(default=512 * 1024**2, ge=1024, description="Largest accepted upload, in bytes.")
    max_dataset_bytes: int = Field(
        default=512 * 1024**2,
        ge=1024,
        description="Largest uploaded dataset once decoded as float32 (n × features × 4), in bytes.",
    )
    max_json_body_bytes: int = Field(
        default=1024**2, ge=1024, description="Largest request body other than an upload (JSON), in bytes."
    )
    max_tenant_storage_bytes: int = Field(
        default=20 * 1024**3, ge=1024, description="Bytes of stored datasets and weights one tenant may keep."
    )
    upload_reservation_seconds: int = Field(
        default=3600,
        ge=60,
        description="Seconds an upload in progress holds its bytes of the tenant's storage quota unless it ends "
        "first (the reservation of an API process that died lapses then).",
    )
    max_weight_tensors: int = Field(default=4096, ge=1, description="Most tensors in an uploaded .safetensors file.")
    max_safetensors_header_bytes: int = Field(
        default=1024**2, ge=1024, description="Largest JSON header of an uploaded .safetensors file, in bytes."
    )

    # Limits: requests beyond them are refused with the limit named in the answer.
    max_examples: int = Field(default=50_000, ge=2, description="Most primary examples of a single-mode job.")
    max_dataset_examples: int = Field(
        default=1_000_000,
        ge=2,
        description="Most examples (rows) in an uploaded dataset (a sharded job may use them all; a single one "
        "selects at most max_examples).",
    )
    max_features: int = Field(default=100_000, ge=1, description="Most features per example.")
    max_parameters: int = Field(default=200_000_000, ge=1, description="Most model parameters a job may ask for.")
    max_epochs: int = Field(default=10_000, ge=1, description="Most training epochs a job may ask for.")
    max_clusters: int = Field(default=100, ge=2, description="Largest clustering.k.")
    max_matrix_bytes: int = Field(
        default=4 * 1024**3, ge=1024, description="Largest n × n float32 similarity matrix a job may produce, in bytes."
    )
    max_job_memory: int = Field(
        default=8 * 1024**3,
        ge=2**20,
        description="Largest estimated peak memory of a single-mode job (its work-horse), in bytes.",
    )
    max_sharded_examples: int = Field(
        default=1_000_000, ge=2, description="Most primary (and observed) examples of a sharded job."
    )
    max_slice_bytes: int = Field(
        default=256 * 1024**2, ge=1024, description="Largest answer of GET /v1/jobs/{id}/similarity?rows=A:B, in bytes."
    )
    max_active_jobs: int = Field(default=100, ge=1, description="Queued + running jobs one tenant may have at once.")
    rate_limit_per_minute: int = Field(default=600, ge=1, description="Requests per minute one tenant may make to /v1.")

    # Queueing: set on each RQ job when the API enqueues it.
    result_ttl: int = Field(
        default=7 * 24 * 3600, ge=60, description="Seconds RQ keeps its own bookkeeping of a finished job."
    )
    job_retries: int = Field(
        default=1, ge=0, description="Times a job whose worker was lost is run again before it fails."
    )

    # Retention: what expires is removed from disk too.
    job_retention_seconds: int = Field(
        default=30 * 24 * 3600, ge=60, description="Seconds a finished job's record, result and artifacts are kept."
    )
    dataset_retention_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        description="Seconds an upload is kept (never while a queued or running job uses it).",
    )
    retention_sweep_seconds: int = Field(
        default=300, ge=1, description="Seconds between two sweeps for expired records."
    )

    # Fair use of the API process: streams, uploads, connections and slow clients.
    max_event_streams_per_tenant: int = Field(
        default=20, ge=1, description="Event streams (GET /v1/jobs/{id}/events) one tenant may have open at once."
    )
    max_uploads_per_tenant: int = Field(
        default=4,
        ge=1,
        description="Uploads (POST /v1/datasets) one tenant may have in progress at once: receiving, parsing or "
        "storing (429 beyond).",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open connections (or requests in progress) beyond which an API process "
        "answers 503 (uvicorn's limit_concurrency).",
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Seconds a connection may take to send a request's headers before it is closed."
    )
    keep_alive_seconds: int = Field(default=5, ge=1, description="Seconds an idle keep-alive connection is kept open.")
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="Largest request line + headers, in bytes (larger: 400)."
    )
    body_read_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest pause while a request body arrives; also the grace period of "
        "body_min_bytes_per_second. Past it: 408.",
    )
    body_min_bytes_per_second: int = Field(
        default=1024,
        ge=0,
        description="Slowest average rate a request body may arrive at once "
        "body_read_timeout_seconds have passed (0: no minimum). Slower: 408.",
    )

    api_keys_file: Path | None = Field(
        default=None,
        description="File of `<tenant> <sha256 hex>` lines (`lelastic keys create`). Unset: no auth, "
        "allowed only when the API is bound to loopback.",
    )


class WorkerSettings(CommonSettings):
    """Settings a worker reads."""

    device: str = Field(
        default="auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$", description="Worker device: auto, cpu or cuda[:N]."
    )
    torch_threads: int = Field(default=0, ge=0, description="CPU threads per worker job (0: torch's default).")
    work_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness added to each work-horse (the process that computes a job or tile): on a host "
        "shared with the API the computation yields the CPU to requests (0: same priority).",
    )
    worker_heartbeat_seconds: int = Field(
        default=10,
        ge=1,
        description="How often a worker proves it is alive while a job runs (RQ job monitoring interval).",
    )
    maintenance_interval: int = Field(
        default=30, ge=1, description="Seconds between a worker's sweeps for jobs abandoned by lost workers."
    )


class Settings(ApiSettings, WorkerSettings):
    """Every setting: what the `lelastic` command (which starts the API and workers) and tests use."""


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own `Settings` instead)."""
    return Settings()
