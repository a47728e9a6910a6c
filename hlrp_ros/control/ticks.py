"""Timer ticks that land while inference still runs: skipped and counted, never queued.

rcl does not queue overrun timer periods: after a callback that ran longer than the period,
the timer fires once, immediately, and then realigns to its schedule. That immediate tick is
a leftover of the overrun, not a fresh period, so ``TickGate`` skips it and counts every
period the inference overran as skipped. (With a reentrant callback group a tick could even
arrive during inference; the gate skips and counts that one too.)
"""

from __future__ import annotations

import math
import threading


class TickGate:
    """Decides whether a timer tick may start an inference.

    Args:
        period: Timer period (seconds, > 0).
    """

    def __init__(self, period: float) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period}")
        self.period = period
        self.skipped = 0
        self._lock = threading.Lock()
        self._last_start: float | None = None
        self._last_end: float | None = None

    def begin(self, t: float) -> bool:
        """Called at the start of a tick at ``t``; False (and counted) when the tick must be skipped."""
        if not self._lock.acquire(blocking=False):
            self.skipped += 1
            return False
        if self._last_start is not None and self._last_end is not None:
            ran = self._last_end - self._last_start
            if ran >= self.period and t - self._last_end < 0.5 * self.period:
                self.skipped += max(1, int(math.floor(ran / self.period)))
                self._last_start = self._last_end = None  # the next tick is on schedule again
                self._lock.release()
                return False
        self._last_start = t
        return True

    def end(self, t: float) -> None:
        """Called when the inference started by the last successful ``begin`` finished at ``t``."""
        self._last_end = t
        self._lock.release()
