"""Clamping, velocity limits, seam ramp, watchdog and tick gating (hlrp_ros.control), no ROS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hlrp_ros.control.limits import JointLimits, SafetyFilter, limit_path
from hlrp_ros.control.ticks import TickGate
from hlrp_ros.control.watchdog import OutputState, StateTracker, Watchdog


def limits(vel=(1.0, 1.0)) -> JointLimits:
    return JointLimits.build(2, lower=(-1.0, -2.0), upper=(1.0, 2.0), max_velocity=vel)


def test_build_validates_each_vector():
    with pytest.raises(ValueError, match="position_limits_lower"):
        JointLimits.build(2, lower=(0.0,))
    with pytest.raises(ValueError, match="velocity_limits"):
        JointLimits.build(2, max_velocity=(1.0, 0.0))
    with pytest.raises(ValueError, match="lower must be <="):
        JointLimits.build(1, lower=(1.0,), upper=(0.0,))
    free = JointLimits.build(3)
    assert np.all(np.isinf(free.max_velocity))


def test_position_clamp():
    np.testing.assert_allclose(limits().clamp(np.array([5.0, -5.0])), [1.0, -2.0])


def test_velocity_limit_per_step():
    f = SafetyFilter(limits(), seam_threshold=0.0, max_step_time=0.1)
    f.reset(np.zeros(2), 0.0)
    out = f.filter(np.array([1.0, -1.0]), 0.02)
    np.testing.assert_allclose(out.positions, [0.02, -0.02])
    # A long pause credits at most max_step_time.
    out = f.filter(np.array([1.0, -1.0]), 5.0)
    np.testing.assert_allclose(out.positions, [0.12, -0.12])


def test_first_command_without_history_is_the_clamped_target():
    f = SafetyFilter(limits(), seam_threshold=0.1)
    np.testing.assert_allclose(f.filter(np.array([3.0, 0.5]), 0.0).positions, [1.0, 0.5])


def test_seam_jump_is_ramped_at_reduced_speed_then_tracks():
    f = SafetyFilter(limits(vel=(2.0, 2.0)), seam_threshold=0.2, seam_ramp_scale=0.5, max_step_time=0.1)
    f.reset(np.zeros(2), 0.0)
    out = f.filter(np.array([0.5, 0.0]), 0.1, new_chunk=True)
    assert out.seam_jump == (0, pytest.approx(0.5)) and out.ramping
    assert out.positions[0] == pytest.approx(0.1)  # 0.5 * 2.0 rad/s * 0.1 s
    t, q = 0.1, out.positions
    while out.ramping:
        t += 0.1
        out = f.filter(np.array([0.5, 0.0]), t)
        assert out.positions[0] - q[0] <= 0.1 + 1e-12
        q = out.positions
    assert q[0] == pytest.approx(0.5)
    # Small seams are not ramped (only the velocity limit applies).
    out = f.filter(np.array([0.6, 0.0]), t + 0.1, new_chunk=True)
    assert out.seam_jump is None and out.positions[0] == pytest.approx(0.6)
    assert f.seam_activations == 1  # counted once per ramp started, not per ramping tick


def test_seam_ramp_without_velocity_limits_uses_ramp_velocity():
    f = SafetyFilter(JointLimits.build(1), seam_threshold=0.1, seam_ramp_velocity=1.0, max_step_time=0.1)
    f.reset(np.zeros(1), 0.0)
    out = f.filter(np.array([5.0]), 0.05, new_chunk=True)
    assert out.positions[0] == pytest.approx(0.05)


def test_limit_path_respects_speed_from_start():
    lim = JointLimits.build(1, max_velocity=(1.0,))
    path = limit_path(np.zeros(1), 0.0, np.array([0.1, 0.2, 0.3]), np.array([[1.0], [1.0], [0.05]]), lim)
    np.testing.assert_allclose(path[:, 0], [0.1, 0.2, 0.1])


def test_watchdog():
    w = Watchdog(0.5)
    assert not w.expired(100.0) and w.age(1.0) is None
    w.feed(1.0)
    assert not w.expired(1.5) and w.expired(1.51)
    with pytest.raises(ValueError):
        Watchdog(0.0)


def test_state_tracker_reports_changes_once():
    s = StateTracker()
    assert s.update(OutputState.RUNNING, "a")
    assert not s.update(OutputState.RUNNING, "b")
    assert s.update(OutputState.HOLDING, "c")


def test_tick_gate_skips_the_overdue_tick_and_counts_overrun_periods():
    gate = TickGate(0.1)
    assert gate.begin(0.0)
    gate.end(0.05)  # on time
    assert gate.begin(0.1)
    gate.end(0.35)  # ran 2.5 periods: rcl fires once right away
    assert not gate.begin(0.351)
    assert gate.skipped == 2
    assert gate.begin(0.4)  # back on schedule
    # A tick arriving while inference runs (reentrant group) is skipped, not queued.
    assert not gate.begin(0.45)
    assert gate.skipped == 3
    gate.end(0.46)
    assert math.isclose(gate.period, 0.1)


def test_unlimited_velocity_with_zero_step_time_jumps():
    lim = JointLimits.build(2)
    path = limit_path(np.zeros(2), 1.0, np.array([1.0, 1.1]), np.array([[0.3, 0.4], [0.5, 0.6]]), lim)
    np.testing.assert_allclose(path, [[0.3, 0.4], [0.5, 0.6]])
