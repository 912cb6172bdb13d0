"""Settings, read from `LELASTIC_*` environment variables (and a `.env` file), shared by every process.

Every setting is listed in the README's configuration table; a test keeps the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LELASTIC_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        None,
        description="Redis/Valkey URL. Unset: `lelastic up` starts the embedded Valkey server; "
        "`lelastic api` and `lelastic worker` require it.",
    )
    data_dir: Path = Field(Path(".lelastic"), description="Datasets, job artifacts and server files (shared storage).")
    queue: str = Field("lelastic", description="RQ queue name the API enqueues to and workers listen on.")
    job_timeout: int = Field(3600, ge=1, description="Seconds a job may run before it fails with reason `timeout`.")
    result_ttl: int = Field(
        7 * 24 * 3600, ge=60, description="Seconds RQ keeps its own bookkeeping of a finished job."
    )
    inline_matrix_max_n: int = Field(
        2000, ge=0, description="Results include the similarity matrix inline when n is at most this."
    )
    max_upload_bytes: int = Field(512 * 1024**2, ge=1024, description="Largest accepted upload, in bytes.")
    redis_socket_timeout: float = Field(10.0, gt=0, description="Seconds before a Redis call is abandoned.")
    device: str = Field("auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$", description="Worker device: auto, cpu or cuda[:N].")
    torch_threads: int = Field(0, ge=0, description="CPU threads per worker job (0: torch's default).")
    log_level: str = Field("INFO", description="Log level of every process.")
    api_keys_file: Path | None = Field(
        None,
        description="File of `<tenant> <sha256 hex>` lines (`lelastic keys create`). Unset: no auth, "
        "allowed only when the API is bound to loopback.",
    )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own `Settings` instead)."""
    return Settings()
