"""Fixtures of the end-to-end tests.

stack: a RunningStack (`lelastic up` with one worker, module scope) that answers /readyz; after the
module it is stopped with SIGTERM and must leave no process behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.factories import RunningStack, assert_all_gone


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(tmp_path_factory.mktemp("stack"), workers=1)
    try:
        running.wait_for("/readyz")
        yield running
    finally:
        pids = running.stop()
    assert len(pids) >= 3, "valkey, the API and a worker ran under the supervisor"
    assert_all_gone(pids)
