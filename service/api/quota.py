"""The per-tenant storage quota (max_tenant_storage_bytes), kept under concurrent uploads.

A tenant uses the bytes on disk of its indexed datasets and weights, plus the bytes its uploads in
progress have reserved. An upload reserves its size before it looks at what is stored, and holds the
reservation until its dataset is recorded (indexed) or it fails:

    1. reserve   set this upload's reservation; read the sum of the tenant's other live ones (`others`)
    2. scan      `used` = bytes on disk of the tenant's indexed uploads (`tenant_storage_bytes`)
    3. check     used + others + adding <= max_tenant_storage_bytes, else 413 (and the reservation goes)

An upload reserves once with the size of the received file, and again with its parsed size before
anything is written to its folder. Reading the reservations before scanning is what makes the bound
hold: an upload running alongside this one either still held its reservation when this one reserved
(counted in `others`), or had already been indexed, before this one scanned (counted in `used`), or
reserved after this one and sees this one's reservation. Two concurrent uploads may both be refused
when only one of them would have fit; that is the conservative side.

Redis key (`service.contract.keys`)::

    storage_reservations(tenant)   hash: dataset id -> "<bytes> <expiry unix seconds>". A reservation
                                   lapses after upload_reservation_seconds (that of an API process that
                                   died with an upload in progress); lapsed ones are dropped whenever an
                                   upload reserves, and the key expires once they all have.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import cast

import redis

from service.api import limits
from service.api.errors import PayloadTooLarge
from service.contract import keys, records
from service.contract.settings import Settings
from service.contract.storage import DataDir

log = logging.getLogger("lelastic.api")

# KEYS[1]: the tenant's reservations. ARGV: dataset id, bytes, now (unix seconds), TTL seconds.
# Sets this upload's reservation to expire at now + TTL, drops the lapsed (or unreadable) ones,
# extends the key's expiry to at least TTL, and returns the bytes the other live reservations hold.
_RESERVE = """
local now = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%s %.3f', ARGV[2], now + ttl))
local fields = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] then
    local size, expiry = string.match(fields[i + 1], '^(%d+) (%S+)$')
    if size and tonumber(expiry) and tonumber(expiry) > now then
      others = others + tonumber(size)
    else
      redis.call('HDEL', KEYS[1], fields[i])
    end
  end
end
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return others
"""


def reserve(conn: redis.Redis, tenant: str, dataset_id: str, nbytes: int, ttl: int, *, now: float | None = None) -> int:
    """Hold `nbytes` of the tenant's quota for upload `dataset_id` until now + `ttl` seconds (replacing
    what it held). Returns the bytes the tenant's other live reservations hold; lapsed ones are dropped."""
    now = time.time() if now is None else now
    return int(conn.eval(_RESERVE, 1, keys.storage_reservations(tenant), dataset_id, int(nbytes), repr(now), ttl))


def release(conn: redis.Redis, tenant: str, dataset_id: str) -> None:
    """Drop the upload's reservation (the key goes with the last one)."""
    conn.hdel(keys.storage_reservations(tenant), dataset_id)


def tenant_storage_bytes(conn: redis.Redis, data_dir: DataDir, tenant: str) -> int:
    """Bytes on disk of the tenant's stored (indexed) datasets and weights."""
    total = 0
    for member in cast(list[bytes], conn.zrange(keys.datasets_index(tenant), 0, -1)):
        folder = data_dir.dataset_dir(records.text(member))
        with contextlib.suppress(OSError):
            total += sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return total


def check_quota(used: int, adding: int, settings: Settings, *, reserved: int = 0) -> None:
    """PayloadTooLarge when `adding` bytes, on top of `used` stored and `reserved` by other uploads in
    progress, would take the tenant past max_tenant_storage_bytes; None when they fit."""
    allowed = settings.max_tenant_storage_bytes
    total = used + reserved + adding
    if total > allowed:
        found = limits.limit_issue(
            ["body", "file"], "the tenant's stored bytes with this upload", total, "max_tenant_storage_bytes", allowed
        )
        found["msg"] += f"; {used} bytes are stored now"
        if reserved:
            found["msg"] += f" and {reserved} bytes are reserved by uploads in progress"
        found["msg"] += ": delete datasets to make room"
        raise PayloadTooLarge([found])


class StorageReservation:
    """One upload's hold on its tenant's storage quota (see the module's docstring for the protocol)."""

    def __init__(self, conn: redis.Redis, data_dir: DataDir, settings: Settings, tenant: str, dataset_id: str):
        self.conn = conn
        self.data_dir = data_dir
        self.settings = settings
        self.tenant = tenant
        self.dataset_id = dataset_id

    def reserve(self, nbytes: int) -> None:
        """Hold `nbytes` (replacing what this upload held) and check the quota with them. Returns None
        when they fit; else drops the reservation and raises PayloadTooLarge naming the limit."""
        others = reserve(self.conn, self.tenant, self.dataset_id, nbytes, self.settings.upload_reservation_seconds)
        used = tenant_storage_bytes(self.conn, self.data_dir, self.tenant)  # after reserving: see the docstring
        try:
            check_quota(used, nbytes, self.settings, reserved=others)
        except PayloadTooLarge:
            self.release()
            raise

    def release(self) -> None:
        """Drop the reservation. A Redis error is logged, not raised: the reservation lapses on its own."""
        try:
            release(self.conn, self.tenant, self.dataset_id)
        except redis.RedisError as exc:
            log.warning(
                "storage reservation of upload %s not released (%s); it lapses in %s s",
                self.dataset_id,
                exc,
                self.settings.upload_reservation_seconds,
            )


@contextlib.contextmanager
def storage_reservation(
    conn: redis.Redis, data_dir: DataDir, settings: Settings, tenant: str, dataset_id: str
) -> Iterator[StorageReservation]:
    """The upload's StorageReservation (nothing held until its `reserve`), released on the way out
    whatever happens: exit only once the upload is recorded (indexed) or has failed."""
    reservation = StorageReservation(conn, data_dir, settings, tenant, dataset_id)
    try:
        yield reservation
    finally:
        reservation.release()
