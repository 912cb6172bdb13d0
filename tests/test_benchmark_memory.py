"""The benchmarks' peak-memory figure (benchmarks/rss.py) is the measuring process's own: a fresh
process spawned by a large parent reports its own small peak, where ru_maxrss would report the parent's."""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys

import numpy as np

from tests.factories import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import rss  # noqa: E402

MiB = 2**20


def _report_peaks(queue: mp.Queue) -> None:
    queue.put((rss.peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def test_a_spawned_process_reports_its_own_peak_not_its_parents() -> None:
    held = np.ones(384 * MiB // 8)  # the parent's RSS grows past 384 MiB while the child runs
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_report_peaks, args=(queue,))
    child.start()
    own, maxrss = queue.get(timeout=60)
    child.join(timeout=60)
    assert held.sum() == held.size
    assert own < 300 * MiB, f"the child's own peak {own / MiB:.0f} MiB includes its parent's"
    if sys.platform == "linux":  # the reason for VmHWM: Linux carries ru_maxrss across exec
        assert maxrss >= 384 * MiB


def test_peak_follows_an_allocation_and_restarts_on_reset() -> None:
    before = rss.current_rss()
    block = np.ones(256 * MiB // 8)
    assert rss.peak_rss() >= rss.current_rss() >= before + 250 * MiB
    del block
    if sys.platform == "linux":
        rss.reset_peak()
        assert rss.peak_rss() < rss.current_rss() + 64 * MiB
