"""`Idempotency-Key` on POST /v1/jobs and POST /v1/datasets (draft-ietf-httpapi-idempotency-key-header).

A client that retries a POST with the same key gets the resource the first request created, never a
second one:

    same key, same body, first request done        the original status code and resource
    same key, same body, first still in progress   wait up to WAIT_SECONDS for it, else 409
    same key, different body                       422 naming the header

Keys are scoped by tenant and route. The body's fingerprint is the SHA-256 of the JSON body, or for an
upload of the file bytes, its name and the form fields (computed while the upload streams in).

Redis: `keys.idempotency(tenant, route, key)` (the key hashed) holds `<token> <JSON>`. A request claims
a key with SET NX (state "in-progress", a TTL of IN_PROGRESS_TTL in case it dies), creates the resource,
then stores a reference to the response (status, resource id, location, original body) for STORE_TTL.
A request that fails releases its claim, so the key can be used again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Protocol, TypeVar

import redis
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from service.api.errors import Conflict, InvalidInput
from service.contract import keys

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")
IN_PROGRESS_TTL = 300
STORE_TTL = 24 * 3600
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.05

HEADER_DESCRIPTION = (
    "Makes a retried POST safe: 1-255 printable ASCII characters (a UUID is best). The same key with the "
    "same body returns the resource the first request created; with a different body it is refused (422)."
)
HEADER_LOC = ["header", HEADER]


def checked_key(value: str | None) -> str | None:
    """The header's value, or InvalidInput when it is not 1-255 printable ASCII characters."""
    if value is None:
        return None
    if not KEY_PATTERN.fullmatch(value):
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise InvalidInput.at(
            HEADER_LOC,
            f"must be 1 to 255 printable ASCII characters (a UUID is best); got {len(value)} characters",
            shown,
        )
    return value


def key_header(
    idempotency_key: Annotated[str | None, Header(alias=HEADER, description=HEADER_DESCRIPTION)] = None,
) -> str | None:
    return checked_key(idempotency_key)


KeyDep = Annotated[str | None, Depends(key_header)]


async def json_fingerprint(request: Request, key: KeyDep) -> str | None:
    """SHA-256 of the raw request body, when the request has a key (the body is cached by then)."""
    if key is None:
        return None
    return hashlib.sha256(await request.body()).hexdigest()


FingerprintDep = Annotated[str | None, Depends(json_fingerprint)]


def upload_fingerprint(file_sha256: str, filename: str, fields: dict[str, str]) -> str:
    """Fingerprint of a multipart upload: its file's bytes and name, and the other form fields."""
    canonical = json.dumps({"file": file_sha256, "filename": filename, "fields": fields}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Stored:
    """The response a completed request with this key gave."""

    status_code: int
    resource_id: str
    location: str | None
    body: dict[str, Any]

    def with_current(self, body: dict[str, Any] | None) -> Stored:
        """This response with the resource as it is now; the original body once the resource is gone (None)."""
        return self if body is None else replace(self, body=body)


def replayed(stored: Stored) -> JSONResponse:
    """The response to a retry: the stored status, body and Location, marked `Idempotent-Replayed: true`."""
    headers = {"Idempotent-Replayed": "true"}
    if stored.location:
        headers["Location"] = stored.location
    return JSONResponse(stored.body, status_code=stored.status_code, headers=headers)


# KEYS[1]: the key. ARGV[1]: our token, ARGV[2]: new value or '' to delete, ARGV[3]: TTL.
# Changes the value only while it is still our claim (it may have expired and been claimed again).
_IF_OURS = """
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


@dataclass
class Claim:
    """This request holds the key: create the resource, then `complete` (or `release` on failure)."""

    conn: redis.Redis
    key: str
    token: str
    fingerprint: str

    def complete(self, status_code: int, resource_id: str, location: str | None, body: dict[str, Any]) -> None:
        state = {
            "state": "done",
            "fingerprint": self.fingerprint,
            "status_code": status_code,
            "resource_id": resource_id,
            "location": location,
            "body": body,
        }
        value = f"{self.token} {json.dumps(state)}"
        self.conn.eval(_IF_OURS, 1, self.key, self.token, value, STORE_TTL)

    def release(self) -> None:
        self.conn.eval(_IF_OURS, 1, self.key, self.token, "", 0)


def _parse(raw: bytes | str) -> dict[str, Any]:
    _, _, state = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
    parsed: dict[str, Any] = json.loads(state)
    return parsed


def begin(
    conn: redis.Redis,
    *,
    tenant: str,
    route: str,
    key: str,
    fingerprint: str,
    wait: float | None = None,
) -> Claim | Stored:
    """Claim `key` for this request, or the stored response of the request that used it before.

    Raises InvalidInput when the key was used with another body, Conflict when the request that holds
    it is still running after `wait` seconds (default WAIT_SECONDS). Blocking (it polls): call it from
    a thread.
    """
    wait = WAIT_SECONDS if wait is None else wait
    name = keys.idempotency(tenant, route, key)
    token = uuid.uuid4().hex
    claim_value = f"{token} {json.dumps({'state': 'in-progress', 'fingerprint': fingerprint})}"
    deadline = time.monotonic() + wait
    while True:
        if conn.set(name, claim_value, nx=True, ex=IN_PROGRESS_TTL):
            return Claim(conn, name, token, fingerprint)
        raw = conn.get(name)
        if raw is None:
            continue  # released or expired between the two calls: try to claim it again
        state = _parse(raw)
        if state["fingerprint"] != fingerprint:
            raise InvalidInput.at(
                HEADER_LOC,
                f"this key was already used on POST /v1/{route} with a different request body; "
                "send the same body to get the original response, or use a new key",
                key,
            )
        if state["state"] == "done":
            return Stored(state["status_code"], state["resource_id"], state["location"], state["body"])
        if time.monotonic() >= deadline:
            raise Conflict(
                [
                    {
                        "loc": HEADER_LOC,
                        "msg": f"a request with this key is still in progress after {wait:g} s; retry later",
                        "input": key,
                    }
                ],
                headers={"Retry-After": "1"},
            )
        time.sleep(POLL_SECONDS)


class Resource(Protocol):
    """What a POST creates: a response model with an id."""

    @property
    def id(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


ResourceT = TypeVar("ResourceT", bound=Resource)


def create_once(
    conn: redis.Redis,
    *,
    tenant: str,
    route: str,
    key: str | None,
    fingerprint: str | None,
    status_code: int,
    create: Callable[[], ResourceT],
    location: Callable[[str], str],
    current: Callable[[str], dict[str, Any] | None],
) -> ResourceT | Stored:
    """`create()`, at most once per key: without a key it simply runs.

    With a key, a retry gets the Stored response of the first request, refreshed with `current(id)`
    (the resource as it is now, None once it is gone). A failed `create` releases the key. Blocking:
    call it from a thread.
    """
    if key is None or fingerprint is None:
        return create()
    outcome = begin(conn, tenant=tenant, route=route, key=key, fingerprint=fingerprint)
    if isinstance(outcome, Stored):
        return outcome.with_current(current(outcome.resource_id))
    try:
        resource = create()
    except BaseException:
        outcome.release()
        raise
    outcome.complete(status_code, resource.id, location(resource.id), resource.model_dump(mode="json"))
    return resource
