"""Scripted expert for the planar-arm world: inverse kinematics + a joint-space move.

The expert picks one joint configuration per target (the end effector approaches the
target along the ray from the base, always with the same elbow, so the goal is a smooth
function of the target and never of the current state) and moves every joint
along a straight line in joint space at a fixed speed, all joints arriving together.
"""

from __future__ import annotations

import math

import numpy as np

from hlrp_ros.sim.world import ArmSpec, forward_kinematics

#: Joint-space speed of the expert (rad/s, max over joints); below the arm's velocity limits.
EXPERT_SPEED = 1.8


def _wrap_into(angle: float, lower: float, upper: float) -> float:
    """``angle`` shifted by multiples of 2*pi into [lower, upper] if possible (else nearest)."""
    best = angle
    for k in (-2, -1, 0, 1, 2):
        a = angle + 2 * math.pi * k
        if lower <= a <= upper:
            return a
        if abs(a - (lower + upper) / 2) < abs(best - (lower + upper) / 2):
            best = a
    return best


def inverse_kinematics(spec: ArmSpec, target: np.ndarray) -> np.ndarray:
    """Joint positions putting the end effector on ``target`` (2,), approaching from the base.

    The last link points along the bearing of the target and the elbow always bends the same
    way, so the goal pose varies smoothly with the target. Raises ``ValueError`` if unreachable.
    """
    if spec.dof != 3:
        raise ValueError("the scripted expert handles 3-joint arms")
    l1, l2, l3 = spec.link_lengths
    phi = math.atan2(float(target[1]), float(target[0]))
    if phi < -math.pi / 2:  # bearings behind the base on the left: keep phi in [-pi/2, 3pi/2)
        phi += 2 * math.pi
    wrist = np.asarray(target, float) - l3 * np.array([math.cos(phi), math.sin(phi)])
    r2 = float(wrist @ wrist)
    c2 = (r2 - l1 * l1 - l2 * l2) / (2 * l1 * l2)
    if not -1.0 <= c2 <= 1.0:
        raise ValueError(f"target {target} out of reach")
    elbow = 1.0  # one elbow for every target: the goal pose is a smooth function of the target
    q2 = elbow * math.acos(c2)
    q1 = math.atan2(wrist[1], wrist[0]) - math.atan2(l2 * math.sin(q2), l1 + l2 * math.cos(q2))
    q1 = _wrap_into(q1, spec.lower[0], spec.upper[0])
    q3 = math.atan2(math.sin(phi - q1 - q2), math.cos(phi - q1 - q2))
    q = np.array([q1, q2, q3])
    if not np.allclose(forward_kinematics(spec, q)[-1], target, atol=1e-6):
        raise ValueError(f"IK failed for target {target}")
    return q


def expert_step(q: np.ndarray, goal: np.ndarray, dt: float, speed: float = EXPERT_SPEED) -> np.ndarray:
    """Next joint positions after ``dt`` seconds on the straight joint-space line to ``goal``."""
    delta = np.asarray(goal, float) - q
    norm = float(np.max(np.abs(delta))) if delta.size else 0.0
    if norm <= speed * dt:
        return np.asarray(goal, float).copy()
    return q + delta * (speed * dt / norm)


def expert_chunk(q: np.ndarray, goal: np.ndarray, horizon: int, dt: float,
                 speed: float = EXPERT_SPEED) -> np.ndarray:
    """The expert's next ``horizon`` joint targets from ``q``: (horizon, dof); row i is due at (i + 1) * dt."""
    out = np.empty((horizon, len(q)))
    cur = np.asarray(q, float)
    for i in range(horizon):
        cur = expert_step(cur, goal, dt, speed)
        out[i] = cur
    return out
