"""Typed dependencies: what a route may ask for, each as one `Annotated` alias.

The lifespan in `service.api.app` puts the settings, the Redis client and the data dir on `app.state`;
these functions hand them out (tests override them with `app.dependency_overrides` if they need to).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import redis
import redis.asyncio
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api import auth
from service.api.errors import Unauthorized
from service.contract import records
from service.contract.settings import Settings
from service.contract.storage import DataDir

log = logging.getLogger("lelastic.api")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


def get_async_redis(request: Request) -> redis.asyncio.Redis:
    return request.app.state.aredis


def get_data_dir(request: Request) -> DataDir:
    return request.app.state.data_dir


def get_tenant(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> str:
    """The caller's tenant, from `Authorization: Bearer <key>` or `X-API-Key: <key>`.

    Without a keys file the service is open and everyone is the `default` tenant.
    """
    key = bearer.credentials if bearer is not None else api_key
    tenant = tenant_for_key(request.app.state.settings.api_keys_file, key)
    if tenant is None:
        raise Unauthorized("missing API key" if not key else "unknown API key")
    return tenant


def key_from_headers(headers: dict[str, str]) -> str | None:
    """The API key of a request's (lower-cased) headers: `Authorization: Bearer <key>` or `X-API-Key`."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("x-api-key") or None


def tenant_for_key(keys_file: Path | None, key: str | None) -> str | None:
    """The tenant of an API key (None: missing or unknown). Without a keys file: the default tenant."""
    if keys_file is None:
        return records.DEFAULT_TENANT
    return auth.tenant_for(key, _load_keys(keys_file)) if key else None


def _load_keys(path: Path) -> list[tuple[str, str]]:
    """The keys file's entries, re-read when the file changes (keys added by `lelastic keys create`).

    A keys file that does not exist yet holds no keys: every request is refused until one is created.
    A file with a malformed line is logged (the line's number, never its text) and the last good entries
    stay in use; with none yet, the file's well-formed lines.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    cached = _KEYS_CACHE.get(path)
    if cached is None or cached[0] != (stat.st_mtime_ns, stat.st_size):
        try:
            entries, problems = auth.parse_keys(path.read_text(errors="replace"))
        except OSError as error:
            log.error("cannot read the keys file %s: %s; keeping the last good keys", path, error)
            return cached[1] if cached is not None else []
        if problems:
            kept = cached[1] if cached is not None else entries
            for number in problems[:10]:
                log.error("keys file %s:%d: expected '<tenant> <sha256 hex>'; line ignored", path, number)
            msg = "keys file %s has %d malformed line(s): keeping %d earlier good key(s)"
            log.error(msg, path, len(problems), len(kept))
            entries = kept
        cached = ((stat.st_mtime_ns, stat.st_size), entries)
        _KEYS_CACHE[path] = cached
    return cached[1]


#: path -> ((mtime, size), the entries in use)
_KEYS_CACHE: dict[Path, tuple[tuple[int, int], list[tuple[str, str]]]] = {}
bearer_scheme = HTTPBearer(auto_error=False, description="An API key from `lelastic keys create`.")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same API key, as a header.")


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[redis.asyncio.Redis, Depends(get_async_redis)]
DataDirDep = Annotated[DataDir, Depends(get_data_dir)]
TenantDep = Annotated[str, Depends(get_tenant)]
