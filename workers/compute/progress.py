"""Progress reports from long loops, at most once per interval."""

from __future__ import annotations

import time
from collections.abc import Callable

Progress = Callable[[float, str], None]


class Throttle:
    """Forwards (fraction, message) to `progress` at most every `every` seconds, and always at 1.0.

    `Throttle(None)` accepts reports and drops them, so loops can report unconditionally.
    """

    def __init__(self, progress: Progress | None, every: float = 1.0) -> None:
        self.progress, self.every = progress, every
        self.last = time.monotonic()

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if fraction >= 1.0 or now - self.last >= self.every:
            self.last = now
            self.progress(fraction, message)
