"""Chunk watchdog and the controller's output state, reported once per change."""

from __future__ import annotations

import enum


class OutputState(enum.Enum):
    """What the controller is doing."""

    #: No valid chunk yet: nothing is published.
    WAITING = "waiting"
    #: Executing a chunk.
    RUNNING = "running"
    #: The chunk ran out or the watchdog tripped: holding the last safe command.
    HOLDING = "holding"
    #: The chunk ran out or the watchdog tripped: publishing nothing.
    STOPPED = "stopped"


class Watchdog:
    """Trips when no chunk started executing for ``timeout`` seconds.

    Args:
        timeout: Seconds without a valid chunk before tripping (> 0).
    """

    def __init__(self, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"watchdog timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.last_feed: float | None = None

    def feed(self, t: float) -> None:
        """A chunk started executing at ``t``."""
        self.last_feed = t

    def reset(self) -> None:
        """Forget the last feed (the clock was reset): not tripped until fed again."""
        self.last_feed = None

    def age(self, t: float) -> float | None:
        """Seconds since the last valid chunk (None before the first)."""
        return None if self.last_feed is None else t - self.last_feed

    def expired(self, t: float) -> bool:
        """Whether the last valid chunk is older than the timeout (False before the first)."""
        age = self.age(t)
        return age is not None and age > self.timeout


class StateTracker:
    """Remembers the output state and tells when it changes, so each change is logged once."""

    def __init__(self) -> None:
        self.state = OutputState.WAITING
        self.reason = "no chunk received yet"

    def update(self, state: OutputState, reason: str) -> bool:
        """Set the state; True when it differs from the previous one."""
        changed = state != self.state
        self.state, self.reason = state, reason
        return changed
