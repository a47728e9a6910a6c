"""A control loop on its own thread, ticking at absolute deadlines.

An executor timer fires when the executor gets round to it: behind other callbacks of the
node, behind the Python GIL, behind any other process on the same cores (the policy infers on
them). Here a dedicated thread sleeps until just before each deadline ``t0 + k * period`` of
the steady clock and polls the clock for the last ``active_wait`` seconds (a sleep on a virtual
machine overshoots by up to ~2 ms), at real-time priority when the system permits it
(SCHED_FIFO: root, CAP_SYS_NICE or an rtprio limit), so the wake-up is not queued behind the
policy's threads. Deadlines are absolute: a late tick does not shift the ones after
it, and a tick missed entirely is skipped (and counted), never run twice in a row; the step
computes what is due from the time anyway.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np


def request_realtime(priority: int) -> str:
    """Put the calling thread under SCHED_FIFO at ``priority`` (1-99; 0: leave it); what happened, in words."""
    if priority <= 0:
        return "normal priority (realtime_priority 0)"
    if not hasattr(os, "sched_setscheduler"):
        return "normal priority (no SCHED_FIFO on this system)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        return (f"normal priority: SCHED_FIFO {priority} refused ({exc.strerror}); allow it with an rtprio limit "
                f"(/etc/security/limits.conf) or CAP_SYS_NICE")
    return f"real-time priority SCHED_FIFO {priority}"


class ControlLoop:
    """Calls ``step()`` every ``period`` seconds at absolute deadlines, on its own thread.

    Args:
        period: Seconds between deadlines (> 0).
        step: The work of one tick (exceptions are passed to ``on_error`` and the loop goes on).
        realtime_priority: SCHED_FIFO priority of the thread (0: normal scheduling).
        active_wait: The last part of each wait, in seconds, spent polling the clock instead of
            sleeping (a sleep may overshoot by a scheduler slice).
        on_error: Called with an exception raised by ``step``.
        clock: Steady time source (seconds).
    """

    def __init__(self, period: float, step: Callable[[], None], realtime_priority: int = 0,
                 active_wait: float = 0.002, on_error: Callable[[BaseException], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period}")
        self.period, self._step, self._priority = period, step, realtime_priority
        self.active_wait = min(active_wait, period / 4)
        self._on_error, self._clock = on_error, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.scheduling = "not started"
        self.missed = 0
        self.lateness: deque[float] = deque(maxlen=2000)  # seconds each tick started after its deadline
        self._started = threading.Event()

    def start(self) -> None:
        """Start ticking (the first deadline is one period from now); returns once the thread runs."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="control_loop", daemon=True)
        self._thread.start()
        self._started.wait(timeout=5.0)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the tick in progress; no step runs once this returns."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def late_percentile(self, q: float) -> float:
        """The ``q``-th percentile of the recent ticks' lateness (seconds; 0 before any tick)."""
        return float(np.percentile(np.asarray(self.lateness), q)) if self.lateness else 0.0

    def _wait_until(self, deadline: float) -> bool:
        """Sleep, then poll, until ``deadline``; False when stopped meanwhile."""
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return not self._stop.is_set()
            if remaining > self.active_wait:
                time.sleep(min(remaining - self.active_wait, 0.05))  # short naps: stop() is seen soon
                if self._stop.is_set():
                    return False
            elif self._stop.is_set():
                return False

    def _run(self) -> None:
        self.scheduling = request_realtime(self._priority)
        self._started.set()
        deadline = self._clock() + self.period
        while self._wait_until(deadline):
            now = self._clock()
            self.lateness.append(now - deadline)
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - a bad tick must not end the control loop
                if self._on_error is not None:
                    self._on_error(exc)
            deadline += self.period
            behind = self._clock() - deadline
            if behind > 0:  # whole periods passed during the step (or a stall): skip them, keep the grid
                skipped = int(behind // self.period) + 1
                self.missed += skipped
                deadline += skipped * self.period
