"""Joint position and velocity limits, and the ramp that guards chunk seams.

Every command goes through ``SafetyFilter.filter``:

1. the target is clamped to the position limits;
2. the step from the last command is limited to ``max_velocity * step_time``; the step time is
   the time since the last command, capped at ``max_step_time`` so that a long pause (a stopped
   controller, a starting one) never licenses a large jump;
3. seam guard: when a new chunk's first target is further than ``seam_threshold`` from the
   last command on any joint, the filter ramps there at ``seam_ramp_scale * max_velocity``
   (or, without velocity limits, at ``seam_ramp_velocity``) instead of jumping, until it has
   caught up with the chunk's (moving) target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits; ``inf`` entries mean "unlimited".

    Attributes:
        lower: ``(dof,)`` lowest position.
        upper: ``(dof,)`` highest position.
        max_velocity: ``(dof,)`` largest speed (position unit per second, > 0).
    """

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray

    @classmethod
    def build(cls, dof: int, lower=(), upper=(), max_velocity=()) -> JointLimits:
        """Limits from (possibly empty = unlimited) sequences; raises ``ValueError`` naming the bad one."""

        def vector(name: str, values, fill: float) -> np.ndarray:
            values = list(values)
            if not values:
                return np.full(dof, fill)
            if len(values) != dof:
                raise ValueError(f"{name} has {len(values)} entries, expected {dof} (one per joint) or none")
            return np.asarray(values, dtype=np.float64)

        lo = vector("position_limits_lower", lower, -math.inf)
        hi = vector("position_limits_upper", upper, math.inf)
        vel = vector("velocity_limits", max_velocity, math.inf)
        if np.isnan(lo).any() or np.isnan(hi).any() or np.any(lo > hi):
            raise ValueError("position_limits_lower must be <= position_limits_upper for every joint")
        if np.isnan(vel).any() or np.any(vel <= 0):
            raise ValueError("velocity_limits must be > 0 for every joint")
        return cls(lo, hi, vel)

    def clamp(self, positions: np.ndarray) -> np.ndarray:
        """``positions`` clamped to ``[lower, upper]``."""
        return np.clip(positions, self.lower, self.upper)


def step_towards(current: np.ndarray, target: np.ndarray, velocity: np.ndarray, dt: float) -> np.ndarray:
    """Move from ``current`` towards ``target`` at most ``velocity * dt`` per joint (``inf`` velocity: jump)."""
    finite = np.isfinite(velocity)
    max_step = np.where(finite, np.where(finite, velocity, 0.0) * max(dt, 0.0), np.inf)
    return current + np.clip(target - current, -max_step, max_step)


def limit_path(start: np.ndarray | None, start_time: float, times: np.ndarray, targets: np.ndarray,
               limits: JointLimits) -> np.ndarray:
    """Clamp a timed path to the limits: positions, and every segment's speed (from ``start``).

    Args:
        start: ``(dof,)`` position at ``start_time`` (None: the path starts at its first target).
        start_time: Time of ``start`` (seconds).
        times: ``(n,)`` increasing due times.
        targets: ``(n, dof)`` positions.
    Returns:
        ``(n, dof)`` feasible positions.
    """
    out = limits.clamp(np.asarray(targets, dtype=np.float64))
    previous, previous_time = (None, start_time) if start is None else (np.asarray(start, dtype=np.float64), start_time)
    for k in range(out.shape[0]):
        if previous is not None:
            out[k] = step_towards(previous, out[k], limits.max_velocity, float(times[k]) - previous_time)
        previous, previous_time = out[k], float(times[k])
    return out


@dataclass
class FilterResult:
    """One filtered command: ``positions``; ``ramping`` while the seam guard is active;
    ``seam_jump`` (largest jump, per joint index) when this call started a seam ramp."""

    positions: np.ndarray
    ramping: bool
    seam_jump: tuple[int, float] | None = None


class SafetyFilter:
    """Stateful clamp + velocity limit + seam ramp (see the module docstring).

    Args:
        limits: Position and velocity limits.
        seam_threshold: Largest per-joint jump accepted at a chunk seam (position unit); <= 0 disables the guard.
        seam_ramp_scale: Ramp speed as a fraction of ``max_velocity`` (0, 1].
        seam_ramp_velocity: Ramp speed for joints without a velocity limit (position unit per second).
        max_step_time: Cap of the time credited to one step (seconds).
    """

    def __init__(self, limits: JointLimits, seam_threshold: float, seam_ramp_scale: float = 0.5,
                 seam_ramp_velocity: float = 0.5, max_step_time: float = 0.1) -> None:
        if not 0 < seam_ramp_scale <= 1:
            raise ValueError(f"seam_ramp_scale must be in (0, 1], got {seam_ramp_scale}")
        if seam_ramp_velocity <= 0 or max_step_time <= 0:
            raise ValueError("seam_ramp_velocity and max_step_time must be > 0")
        self.limits = limits
        self.seam_threshold = seam_threshold
        ramp = seam_ramp_scale * limits.max_velocity
        self.ramp_velocity = np.where(np.isfinite(ramp), ramp, seam_ramp_velocity)
        self.max_step_time = max_step_time
        self.last: np.ndarray | None = None
        self.last_time: float | None = None
        self.ramping = False
        #: Seam ramps started (a chunk's first target further than ``seam_threshold`` from the last command).
        self.seam_activations = 0

    def reset(self, positions: np.ndarray | None, t: float | None = None) -> None:
        """Set the last command (e.g. from measured joint positions), or forget it (None)."""
        self.last = None if positions is None else np.asarray(positions, dtype=np.float64).copy()
        self.last_time = t
        self.ramping = False

    def _step_time(self, t: float) -> float:
        if self.last_time is None:
            return self.max_step_time
        return min(max(t - self.last_time, 0.0), self.max_step_time)

    def filter(self, target: np.ndarray, t: float, new_chunk: bool = False) -> FilterResult:
        """The safe command at ``t`` for ``target``; ``new_chunk`` marks a chunk's first target."""
        goal = self.limits.clamp(np.asarray(target, dtype=np.float64))
        seam_jump = None
        if self.last is None:
            command = goal
        else:
            if new_chunk and self.seam_threshold > 0:
                gap = np.abs(goal - self.last)
                joint = int(np.argmax(gap))
                if gap[joint] > self.seam_threshold:
                    self.ramping = True
                    self.seam_activations += 1
                    seam_jump = (joint, float(gap[joint]))
            dt = self._step_time(t)
            speed = self.ramp_velocity if self.ramping else self.limits.max_velocity
            command = step_towards(self.last, goal, speed, dt)
            if self.ramping and np.allclose(command, goal, atol=1e-9, rtol=0.0):
                self.ramping = False
        command = self.limits.clamp(command)
        self.last, self.last_time = command.copy(), t
        return FilterResult(command, self.ramping, seam_jump)
