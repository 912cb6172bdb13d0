"""This process's resident set size, now and at its peak, for the benchmarks' memory figures.

The peak is the kernel's VmHWM (/proc/self/status), the high-water mark of this process's own address
space. `resource.getrusage(RUSAGE_SELF).ru_maxrss` is not: Linux carries it across exec, so a fresh
process started by multiprocessing's "spawn" (fork, then exec of a new interpreter) reports at least
the peak of the process that started it. Without /proc (not Linux), both fall back to ru_maxrss.
"""

from __future__ import annotations

import resource
from pathlib import Path


def _status_bytes(field: str) -> int | None:
    """A `field: <n> kB` line of /proc/self/status in bytes, or None without /proc."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    """Peak resident set size of this process's own address space (bytes)."""
    peak = _status_bytes("VmHWM")
    return _maxrss_bytes() if peak is None else peak


def current_rss() -> int:
    """Resident set size now (bytes)."""
    now = _status_bytes("VmRSS")
    return _maxrss_bytes() if now is None else now


def reset_peak() -> None:
    """Restart the VmHWM mark from the current RSS (Linux; a no-op where /proc/self/clear_refs is absent)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
