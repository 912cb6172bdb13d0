"""API keys: `<tenant> <sha256 hex of the key>` per line in the file named by LELASTIC_API_KEYS_FILE.

Only hashes are stored; a presented key is hashed and compared in constant time against every entry.
Lines starting with `#` and blank lines are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEY_PREFIX = "lel_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyFileError(ValueError):
    """The keys file has a line that is not `<tenant> <64 hex digits>`."""


def parse_keys(text: str) -> tuple[list[tuple[str, str]], list[int]]:
    """(tenant, key hash) pairs of a keys file's text, and the numbers of its malformed lines."""
    entries, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not TENANT_PATTERN.match(parts[0]) or not re.fullmatch(r"[0-9a-f]{64}", parts[1]):
            problems.append(number)
            continue
        entries.append((parts[0], parts[1]))
    return entries, problems


def load_keys(path: Path) -> list[tuple[str, str]]:
    """(tenant, key hash) pairs of the keys file; KeyFileError names its first malformed line."""
    entries, problems = parse_keys(path.read_text())
    if problems:
        raise KeyFileError(f"{path}:{problems[0]}: expected '<tenant> <sha256 hex>'")
    return entries


def tenant_for(key: str, entries: list[tuple[str, str]]) -> str | None:
    """The tenant whose key this is, or None. Every entry is compared, so timing reveals nothing."""
    presented = hash_key(key)
    found = None
    for tenant, stored in entries:
        if hmac.compare_digest(presented, stored):
            found = tenant
    return found


def create_key(path: Path, tenant: str) -> str:
    """Append a new random key for `tenant` to the keys file (created 0600) and return the key."""
    if not TENANT_PATTERN.match(tenant):
        raise ValueError(f"tenant must match {TENANT_PATTERN.pattern}, got {tenant!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f"{tenant} {hash_key(key)}\n")
    return key
