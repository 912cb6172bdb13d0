"""Typed dependencies: what a route may ask for, each as one `Annotated` alias.

The lifespan in `service.app` puts the settings, the Redis client and the data dir on `app.state`;
these functions hand them out (tests override them with `app.dependency_overrides` if they need to).
"""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Request

from service import records
from service.config import Settings
from service.storage import DataDir


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


def get_data_dir(request: Request) -> DataDir:
    return request.app.state.data_dir


def get_tenant() -> str:
    """The caller's tenant. Everyone is `default` for now; API-key auth will map a key to a tenant here."""
    return records.DEFAULT_TENANT


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
DataDirDep = Annotated[DataDir, Depends(get_data_dir)]
TenantDep = Annotated[str, Depends(get_tenant)]
