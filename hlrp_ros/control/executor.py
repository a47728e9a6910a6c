"""Which action is due now, across a stream of chunks.

Switching rule: a newer chunk replaces the current one as soon as its first action is due
(immediately, when that time has already passed); it starts at the index due at that moment,
so steps whose time elapsed during inference and transport are dropped. With
``blend_time > 0`` the command moves linearly from the old chunk's action to the new one's
over ``blend_time`` seconds after the switch, for as long as the old chunk still has actions
(the overlap). Without blending the switch is immediate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hlrp_ros.control.chunk import INTERPOLATION_MODES, TimedChunk


def blend_weight(t: float, switch_time: float, blend_time: float) -> float:
    """Weight of the new chunk at ``t``: 0 at the switch, 1 after ``blend_time`` seconds."""
    if blend_time <= 0.0:
        return 1.0
    return float(min(max((t - switch_time) / blend_time, 0.0), 1.0))


@dataclass(frozen=True)
class Target:
    """The command due at one moment.

    Attributes:
        positions: ``(dof,)`` target positions.
        chunk_id: Id of the chunk it comes from.
        index: Index of the due action in that chunk.
        blending: Whether the previous chunk contributed.
        switched: True on the first target taken from a newly activated chunk.
    """

    positions: np.ndarray
    chunk_id: int
    index: int
    blending: bool
    switched: bool


class ChunkExecutor:
    """Holds the active and the pending chunk and answers "what is due at t".

    Args:
        blend_time: Seconds to blend from the old chunk into a new one (0 disables).
        interpolation: ``hold`` or ``linear`` between consecutive actions of a chunk.
    """

    def __init__(self, blend_time: float = 0.0, interpolation: str = "hold") -> None:
        if blend_time < 0:
            raise ValueError(f"blend_time must be >= 0, got {blend_time}")
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"interpolation must be one of {INTERPOLATION_MODES}, got {interpolation!r}")
        self.blend_time = blend_time
        self.interpolation = interpolation
        self.current: TimedChunk | None = None
        self.pending: TimedChunk | None = None
        self.previous: TimedChunk | None = None
        self.switch_time: float | None = None
        self._announced_id: int | None = None

    @property
    def last_id(self) -> int | None:
        """Id of the newest chunk accepted (pending or current)."""
        newest = self.pending or self.current
        return None if newest is None else newest.chunk_id

    def submit(self, chunk: TimedChunk) -> None:
        """Queue ``chunk`` as the next one; it replaces any pending chunk not yet started."""
        self.pending = chunk

    def clear(self) -> None:
        """Forget every chunk (e.g. on deactivation)."""
        self.current = self.pending = self.previous = None
        self.switch_time = None

    def _activate_pending(self, t: float) -> None:
        if self.pending is None or self.pending.index_at(t) < 0:
            return
        if self.pending.index_at(t) >= self.pending.horizon:  # ran out before it could start
            self.pending = None
            return
        self.previous, self.current, self.pending = self.current, self.pending, None
        self.switch_time = t

    def target(self, t: float) -> Target | None:
        """The command due at ``t``, or None when no chunk has an action due (ran out / none yet)."""
        self._activate_pending(t)
        chunk = self.current
        if chunk is None:
            return None
        positions = chunk.sample(t, self.interpolation)
        if positions is None:
            return None
        blending = False
        if self.previous is not None and self.switch_time is not None and self.blend_time > 0:
            w = blend_weight(t, self.switch_time, self.blend_time)
            old = self.previous.sample(t, self.interpolation) if w < 1.0 else None
            if old is not None:
                positions = (1.0 - w) * old + w * positions
                blending = True
            else:
                self.previous = None
        switched = self._announced_id != chunk.chunk_id
        self._announced_id = chunk.chunk_id
        return Target(np.asarray(positions, dtype=np.float64), chunk.chunk_id, chunk.index_at(t), blending, switched)

    def remaining(self, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Due times (> ``t``) and blended targets of the active chunk's remaining actions.

        For trajectory outputs: the actions still to come, with the blend applied at each due time.
        """
        chunk = self.current
        if chunk is None:
            return None
        first = max(chunk.index_at(t) + 1, 0)
        if first >= chunk.horizon:
            return None
        times = chunk.start + chunk.dt * np.arange(first, chunk.horizon)
        targets = chunk.actions[first:].astype(np.float64, copy=True)
        if self.previous is not None and self.switch_time is not None and self.blend_time > 0:
            for k, tk in enumerate(times):
                w = blend_weight(float(tk), self.switch_time, self.blend_time)
                old = self.previous.sample(float(tk), self.interpolation) if w < 1.0 else None
                if old is not None:
                    targets[k] = (1.0 - w) * old + w * targets[k]
        return times, targets
