"""The control loop thread: absolute deadlines, skipped (never doubled) ticks, clean stop."""

from __future__ import annotations

import threading
import time

from hlrp_ros.control.loop import ControlLoop, request_realtime


class FakeClock:
    """Steady time the test advances; ``step`` advances it too, as work that takes time."""

    def __init__(self) -> None:
        self.t = 100.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.t += 1e-4  # every read costs a little time, so waits always end
            return self.t


def test_ticks_land_on_the_absolute_grid_and_a_long_step_skips_periods():
    clock = FakeClock()
    ticks: list[float] = []
    stop = threading.Event()

    def step() -> None:
        ticks.append(clock.t)
        if len(ticks) == 3:
            with clock.lock:
                clock.t += 0.035  # this step overran 3.5 periods
        if len(ticks) == 6:
            stop.set()

    loop = ControlLoop(0.01, step, clock=clock)
    loop.start()
    assert stop.wait(10.0)
    loop.stop()
    deadlines = [100.0 + 0.01 * k for k in range(1, 12)]
    on_grid = [min(abs(t - d) for d in deadlines) for t in ticks]
    assert max(on_grid) < 1e-3, ticks  # every tick starts at a deadline of the original grid
    assert loop.missed == 3 and ticks[3] - ticks[2] > 0.035


def test_an_exception_in_a_step_is_reported_and_the_loop_goes_on():
    errors: list[BaseException] = []
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bad tick")

    loop = ControlLoop(0.002, step, on_error=errors.append)
    loop.start()
    deadline = time.monotonic() + 10.0
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    assert len(calls) >= 3 and [str(e) for e in errors] == ["bad tick"]


def test_no_step_runs_after_stop_returns():
    calls = []
    loop = ControlLoop(0.001, lambda: calls.append(1))
    loop.start()
    time.sleep(0.05)
    loop.stop()
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count and not loop.running


def test_realtime_priority_zero_leaves_the_thread_alone():
    assert request_realtime(0) == "normal priority (realtime_priority 0)"
