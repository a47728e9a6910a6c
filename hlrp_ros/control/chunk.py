"""A chunk of actions with due times: action ``i`` is due at ``start + i * dt``.

Times are seconds on one clock (the node clock of the controller; ROS time with
``use_sim_time``). Nothing here counts ticks: the action for a moment is computed from the
moment itself, so a late or early control tick still gets the action that is due.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Due times are compared with this slack (seconds) so that a tick landing exactly on a due
# time, up to float rounding of epoch seconds (~0.2 us), gets that action.
TIME_EPS = 1e-6

INTERPOLATION_MODES = ("hold", "linear")


@dataclass(frozen=True)
class TimedChunk:
    """Actions with due times.

    Attributes:
        chunk_id: Strictly increasing id from the producer.
        start: Due time of ``actions[0]`` (seconds).
        dt: Period between consecutive actions (seconds, > 0).
        actions: ``(horizon, dof)`` float64 targets, columns in the consumer's joint order.
        stamp: Time of the observation the chunk was computed from (seconds).
    """

    chunk_id: int
    start: float
    dt: float
    actions: np.ndarray
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt must be finite and > 0, got {self.dt}")
        if self.actions.ndim != 2 or self.actions.shape[0] < 1:
            raise ValueError(f"actions must be (horizon >= 1, dof), got shape {self.actions.shape}")

    @property
    def horizon(self) -> int:
        """Number of actions."""
        return int(self.actions.shape[0])

    @property
    def end(self) -> float:
        """Time at which the chunk runs out: the last action is due until ``end``."""
        return self.start + self.horizon * self.dt

    def due_time(self, index: int) -> float:
        """Due time of ``actions[index]``."""
        return self.start + index * self.dt

    def index_at(self, t: float) -> int:
        """Index of the action due at ``t``: the last one whose due time is <= ``t``.

        Returns -1 before the first action is due and ``horizon`` once the chunk ran out.
        """
        if t + TIME_EPS < self.start:
            return -1
        i = int(math.floor((t - self.start) / self.dt + TIME_EPS / self.dt))
        return min(max(i, 0), self.horizon)

    def covers(self, t: float) -> bool:
        """Whether an action is due at ``t`` (started and not run out)."""
        return 0 <= self.index_at(t) < self.horizon

    def sample(self, t: float, interpolation: str = "hold") -> np.ndarray | None:
        """The command at ``t``, or None when no action is due.

        ``hold`` returns the due action (zero-order hold until the next one is due);
        ``linear`` interpolates towards the next action (the last one is held).
        """
        i = self.index_at(t)
        if not 0 <= i < self.horizon:
            return None
        if interpolation == "linear" and i + 1 < self.horizon:
            w = min(max((t - self.due_time(i)) / self.dt, 0.0), 1.0)
            return (1.0 - w) * self.actions[i] + w * self.actions[i + 1]
        return self.actions[i]
