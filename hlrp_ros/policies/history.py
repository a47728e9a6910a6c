"""The observation history of policies that condition on several observations (``config.n_obs_steps > 1``).

:class:`ObservationBuffer` keeps stamped observations as they arrive (at any rate at least as fast as the
policy's observation period) and builds the :class:`~hlrp_ros.policies.base.Observation` a policy needs:
the newest one, with ``history`` = the ones nearest to ``period``, ``2 * period``, ... before it. A missing
one (a gap in the stream longer than the tolerance) is a named :class:`ObservationHistoryError`, never a
silently shortened history. At the start of an episode the buffer can, like LeRobot's observation queues,
repeat the first observation (``pad_start=True``), or reject until enough time has passed.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from hlrp_ros.policies.base import Observation, ObservationHistoryError


class ObservationBuffer:
    """Stamped observations -> an observation carrying its history.

    Args:
        n_obs_steps: Observations per policy input (the current one included).
        period: Seconds between two observations of the history (the policy's ``observation_period``).
        tolerance: Largest allowed distance (seconds) between a wanted time and the observation used for it;
            None -> ``period / 2``.
        pad_start: Until the first observation is ``(n_obs_steps - 1) * period`` old, repeat it for the
            missing older steps (LeRobot's behaviour after ``reset``); False rejects with ``history_short``.
    """

    def __init__(self, n_obs_steps: int, period: float, tolerance: float | None = None,
                 pad_start: bool = True) -> None:
        if n_obs_steps < 1 or period <= 0:
            raise ValueError(f"need n_obs_steps >= 1 and period > 0 (got {n_obs_steps}, {period})")
        self.n_obs_steps = n_obs_steps
        self.period = float(period)
        self.tolerance = self.period / 2 if tolerance is None else float(tolerance)
        self.pad_start = pad_start
        self._items: deque[tuple[float, Observation]] = deque()
        self._first_stamp: float | None = None

    def reset(self) -> None:
        """Forgets every observation (a new episode)."""
        self._items.clear()
        self._first_stamp = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def newest_stamp(self) -> float | None:
        """Stamp (seconds) of the newest observation; None when empty."""
        return self._items[-1][0] if self._items else None

    def push(self, observation: Observation, stamp: float) -> None:
        """Adds an observation stamped ``stamp`` seconds; an older stamp than the newest resets the buffer
        (the clock jumped back)."""
        if self._items and stamp < self._items[-1][0]:
            self.reset()
        if self._items and stamp == self._items[-1][0]:
            self._items[-1] = (stamp, observation)
        else:
            self._items.append((stamp, observation))
        if self._first_stamp is None:
            self._first_stamp = stamp
        keep_after = stamp - (self.n_obs_steps - 1) * self.period - self.tolerance
        while len(self._items) > 1 and self._items[0][0] < keep_after:
            self._items.popleft()

    def current(self) -> Observation:
        """The newest observation with ``history`` (oldest first) filled in.

        Raises:
            ObservationHistoryError: ``history_empty`` (nothing pushed), ``history_short`` (episode younger
                than the history and ``pad_start`` off) or ``history_gap`` (no observation near a wanted time).
        """
        if not self._items:
            raise ObservationHistoryError("history_empty", "no observation yet")
        now, newest = self._items[-1]
        history: list[Observation] = []
        for k in range(self.n_obs_steps - 1, 0, -1):
            wanted = now - k * self.period
            if self._first_stamp is not None and wanted < self._first_stamp - self.tolerance:
                if not self.pad_start:
                    raise ObservationHistoryError(
                        "history_short", f"the policy needs {self.n_obs_steps} observations {self.period:g} s "
                                         f"apart; the first arrived only {now - self._first_stamp:.3f} s ago")
                history.append(self._items[0][1])
                continue
            stamp, obs = min(self._items, key=lambda item: abs(item[0] - wanted))
            if abs(stamp - wanted) > self.tolerance:
                raise ObservationHistoryError(
                    "history_gap", f"no observation within {self.tolerance:g} s of {k * self.period:g} s before "
                                   f"the newest (nearest is {now - stamp:.3f} s before it): a gap in the inputs")
            history.append(obs)
        return dataclasses.replace(newest, history=history)
