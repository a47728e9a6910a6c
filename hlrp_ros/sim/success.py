"""The demo world's success rule, shared by the simulator node, the in-process closed loop and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

# Slack on the dwell comparison: times are sums of float periods (0.1 + 0.1 + ... is not exactly 0.5).
_TIME_SLACK = 1e-9


@dataclass
class GoalDwell:
    """Success: the end effector stays on the goal for ``dwell`` seconds without leaving; latched once met.

    Call :meth:`update` after every world step with whether the effector is on the goal and the world time.
    The dwell counts from the first time seen on the goal, so a dwell of 0 succeeds on arrival.
    """

    dwell: float
    reached: bool = False                # was on the goal at some update
    success_time: float | None = None    # world time the dwell was complete
    _on_since: float | None = None

    @property
    def success(self) -> bool:
        return self.success_time is not None

    def update(self, on_target: bool, time: float) -> None:
        if not on_target:
            self._on_since = None
            return
        self.reached = True
        if self._on_since is None:
            self._on_since = time
        if self.success_time is None and time - self._on_since >= self.dwell - _TIME_SLACK:
            self.success_time = time
