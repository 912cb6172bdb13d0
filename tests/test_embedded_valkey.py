"""The embedded Valkey of `lelastic up` is private to its user: a password, a 0700 dir, 0600 files."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
import redis

from service.cli.supervisor import EmbeddedValkey, redacted


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_client_without_the_password_is_refused(embedded: EmbeddedValkey):
    anonymous = redis.Redis(host="127.0.0.1", port=embedded.server.port, socket_timeout=5)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.set("k", "v")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=embedded.server.port, password="guess", socket_timeout=5).ping()
    conn = redis.Redis.from_url(embedded.url, socket_timeout=5)
    assert conn.set("k", "v") and conn.get("k") == b"v"


def test_the_directory_and_every_file_in_it_are_private(embedded: EmbeddedValkey):
    conn = redis.Redis.from_url(embedded.url, socket_timeout=5)
    conn.set("k", "v")
    conn.bgrewriteaof()
    time.sleep(0.5)
    directory = embedded.directory
    assert mode(directory) == 0o700
    assert mode(directory / "password") == 0o600
    files = [path for path in directory.rglob("*") if path.is_file() and not path.is_socket()]
    assert any(path.name.endswith(".aof") for path in files), files
    assert {path.name: oct(mode(path)) for path in files if mode(path) & 0o077} == {}


def test_the_password_and_data_survive_a_restart(tmp_path: Path):
    server = EmbeddedValkey(tmp_path / "valkey")
    first_url = server.start()
    redis.Redis.from_url(first_url, socket_timeout=5).set("kept", "1")
    server.stop()
    second_url = server.start()
    try:
        assert second_url == first_url
        assert redis.Redis.from_url(second_url, socket_timeout=5).get("kept") == b"1"
    finally:
        server.stop()


def test_a_data_dir_from_an_older_version_is_made_private(tmp_path: Path):
    directory = tmp_path / "valkey"
    directory.mkdir(mode=0o755)
    (directory / "old.log").write_text("x")
    (directory / "old.log").chmod(0o644)
    server = EmbeddedValkey(directory)
    server.start()
    server.stop()
    assert mode(directory) == 0o700 and mode(directory / "old.log") == 0o600


def test_printed_urls_hide_the_password():
    assert redacted("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redacted("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
