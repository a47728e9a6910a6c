"""How continuous the commanded path is across chunk seams (numbers only; used by bench_rtc and the tests).

Two views of a seam, both in position units (rad for the demo arm):

* the **target gap**: at the moment a chunk arrives (and the controller switches to it), the distance
  between what it asks for and what the chunk it replaces asked for at that moment (largest joint); the
  jump the controller would command without blending or limits;
* the **commanded jump**: on the controller's output, the change of the step at the first command after
  the arrival, relative to the step before (largest joint, second difference): a steady motion scores 0,
  a jump or a sudden change of speed scores its size. Velocity limits and the seam guard cap it per tick.

Jerk is the RMS of the third difference of the commanded path divided by ``dt^3`` (rad/s^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as received: arrival time and due times in seconds on one clock."""

    arrival: float
    start: float
    dt: float
    actions: np.ndarray  # (n, dof)

    def sample(self, t: float) -> np.ndarray | None:
        """Linearly interpolated target at ``t`` (the controller's ``linear`` mode), None outside the chunk."""
        pos = (t - self.start) / self.dt
        last = self.actions.shape[0] - 1
        if pos < 0 or pos > last + 1:
            return None
        i = min(int(np.floor(pos)), last)
        j = min(i + 1, last)
        w = min(max(pos - i, 0.0), 1.0)
        return (1 - w) * self.actions[i] + w * self.actions[j]


def target_gaps(chunks: list[ChunkRecord]) -> list[float]:
    """The target gap of every chunk that replaced one still covering its arrival time."""
    gaps = []
    for old, new in zip(chunks, chunks[1:], strict=False):
        t = max(new.arrival, new.start)
        a, b = old.sample(t), new.sample(t)
        if a is not None and b is not None:
            gaps.append(float(np.max(np.abs(b - a))))
    return gaps


def commanded_jumps(times: np.ndarray, positions: np.ndarray, switch_times: list[float]) -> list[float]:
    """Second difference of the commanded path at the first command at or after each switch time."""
    jumps = []
    for ts in switch_times:
        k = int(np.searchsorted(times, ts))
        if 2 <= k < len(times):
            step_now = positions[k] - positions[k - 1]
            step_before = positions[k - 1] - positions[k - 2]
            jumps.append(float(np.max(np.abs(step_now - step_before))))
    return jumps


def uncovered_ticks(chunks: list[ChunkRecord], times: np.ndarray) -> tuple[int, int]:
    """``(ticks without a due action, ticks)``: commands after the first chunk's first action is due at which
    the chunk the controller executes (the newest received one whose first action is due) has run out."""
    if not chunks:
        return 0, 0
    first = min(max(c.arrival, c.start) for c in chunks)
    ticks = [float(t) for t in times if t >= first]
    missing = 0
    for t in ticks:
        executing = [c for c in chunks if c.arrival <= t and c.start <= t]
        newest = max(executing, key=lambda c: c.arrival)
        missing += newest.sample(t) is None
    return missing, len(ticks)


def jerk_rms(times: np.ndarray, positions: np.ndarray) -> float:
    """RMS jerk of the commanded path (third difference / median tick^3), largest joint."""
    if len(times) < 4:
        return float("nan")
    dt = float(np.median(np.diff(times)))
    jerk = np.diff(positions, n=3, axis=0) / dt**3
    return float(np.max(np.sqrt(np.mean(jerk**2, axis=0))))


def stats(values: list[float]) -> dict[str, float | int]:
    """``n``, mean, p95 and max of ``values`` (NaN when empty)."""
    if not values:
        return {"n": 0, "mean": float("nan"), "p95": float("nan"), "max": float("nan")}
    arr = np.asarray(values, dtype=float)
    return {"n": len(arr), "mean": float(arr.mean()), "p95": float(np.quantile(arr, 0.95)), "max": float(arr.max())}
