"""The policy side of real-time chunking: previous chunk on the new grid, delay estimate, the plan."""

from __future__ import annotations

import numpy as np
import pytest

from hlrp_ros.control.seams import (
    DelayEstimator,
    PublishedChunk,
    RtcConfig,
    SeamPlanner,
    delay_steps,
    due_actions,
)

MS = 1_000_000


def ramp_chunk(n: int = 8, start_ns: int = 1_000 * MS, dt: float = 0.1, instruction: str = "go") -> PublishedChunk:
    """Action i is (i, -i): easy to check interpolated positions."""
    return PublishedChunk(np.stack([np.arange(n), -np.arange(n)], axis=1).astype(float), start_ns, dt, instruction)


def test_due_actions_are_the_previous_chunk_from_the_new_first_action_on():
    due = due_actions(ramp_chunk(), 1_300 * MS, 0.1, horizon=16)
    assert due[:, 0].tolist() == pytest.approx([3, 4, 5, 6, 7])  # only the rows the previous chunk covers


def test_due_actions_between_rows_are_interpolated_as_the_controller_does():
    due = due_actions(ramp_chunk(), 1_250 * MS, 0.1, horizon=3)
    np.testing.assert_allclose(due, [[2.5, -2.5], [3.5, -3.5], [4.5, -4.5]])


def test_no_due_actions_when_the_previous_chunk_ran_out_or_has_not_started():
    assert due_actions(ramp_chunk(), 1_800 * MS, 0.1, 16) is None  # last row due at 1.7 s
    assert due_actions(ramp_chunk(), 900 * MS, 0.1, 16) is None
    assert due_actions(ramp_chunk(), 1_700 * MS, 0.1, 16).shape == (1, 2)


@pytest.mark.parametrize(("delay", "first", "steps"), [(0.25, 0.0, 3), (0.3, 0.0, 3), (0.35, 0.1, 3), (0.05, 0.1, 0),
                                                        (5.0, 0.0, 16)])
def test_delay_steps_count_the_new_actions_due_before_the_chunk_lands(delay, first, steps):
    assert delay_steps(delay, first, 0.1, horizon=16) == steps


def test_delay_estimate_skips_warm_up_takes_a_high_quantile_and_comes_back_down():
    est = DelayEstimator(window=5, quantile=0.9, warmup=2)
    est.add(3.0)
    est.add(2.0)
    assert est.estimate() is None  # warm-up only
    for latency in (0.10, 0.12, 0.11, 0.30, 0.10):
        est.add(latency)
    assert est.estimate() == pytest.approx(0.30)  # the high quantile sees the slow one
    for _ in range(5):
        est.add(0.05)
    assert est.estimate() == pytest.approx(0.05)  # the slow ones left the window
    est.add(float("nan"))
    assert est.estimate() == pytest.approx(0.05)


def test_planner_guides_only_with_a_usable_previous_chunk_of_the_same_instruction():
    planner = SeamPlanner(RtcConfig(mode="guided", delay_warmup=0), chunk_size=16, default_horizon=3)
    assert planner.plan("guided", 1_000 * MS, 0.1, 0.1, "go").reason == "no_previous"
    planner.published(ramp_chunk(), latency_s=0.34)
    plan = planner.plan("guided", 1_300 * MS, 0.1, 0.1, "go")
    assert plan.reason == "guided" and plan.delay == 3 and plan.execution_horizon == 3
    assert plan.due[0].tolist() == pytest.approx([3, -3])
    assert planner.plan("guided", 1_300 * MS, 0.1, 0.1, "stop").reason == "instruction_changed"
    assert planner.plan("guided", 2_000 * MS, 0.1, 0.1, "go").reason == "stale_previous"
    assert planner.plan("off", 1_300 * MS, 0.1, 0.1, "go").due is None
    assert planner.counts == {"guided": 1, "no_previous": 1, "stale_previous": 1, "instruction_changed": 1,
                              "state_diverged": 0, "off": 1}


def test_a_robot_that_has_left_the_previous_chunk_gets_a_fresh_chunk_not_a_continuation():
    planner = SeamPlanner(RtcConfig(mode="conditioned", fixed_delay_steps=2, max_state_divergence=0.5), 16, 3)
    planner.published(ramp_chunk(), latency_s=0.01)
    # observed at 1.25 s, where the previous chunk has (2.5, -2.5) due: tracking it within 0.5 continues it
    on_track = planner.plan("conditioned", 1_300 * MS, 0.1, 0.05, "go", np.array([2.2, -2.7]), 1_250 * MS)
    assert on_track.reason == "guided" and on_track.due is not None
    assert planner.last_divergence == pytest.approx(0.3)
    # the same instant after a reset or a teleport: sampled fresh from the observation
    moved = planner.plan("conditioned", 1_300 * MS, 0.1, 0.05, "go", np.array([0.0, 0.0]), 1_250 * MS)
    assert moved.reason == "state_diverged" and moved.due is None
    assert planner.counts["state_diverged"] == 1
    # no state to compare (the state is not the action's joints), or the check off: continued
    assert planner.plan("conditioned", 1_300 * MS, 0.1, 0.05, "go").reason == "guided"
    unchecked = SeamPlanner(RtcConfig(mode="conditioned", max_state_divergence=0.0), 16, 3)
    unchecked.published(ramp_chunk(), latency_s=0.01)
    assert unchecked.plan("conditioned", 1_300 * MS, 0.1, 0.05, "go", np.zeros(2), 1_250 * MS).reason == "guided"
    # observed before the previous chunk started: it cannot have been executed yet, nothing to hold it against
    assert planner.plan("conditioned", 1_100 * MS, 0.1, 0.05, "go", np.zeros(2), 900 * MS).reason == "guided"


def test_a_fixed_delay_replaces_the_estimate():
    planner = SeamPlanner(RtcConfig(mode="guided", fixed_delay_steps=5, execution_horizon=4), 16, 3)
    planner.published(ramp_chunk(), latency_s=0.01)
    plan = planner.plan("guided", 1_100 * MS, 0.1, 0.0, "go")
    assert plan.delay == 5 and plan.execution_horizon == 4


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mode"):
        RtcConfig(mode="blend")
    with pytest.raises(ValueError, match="beta"):
        RtcConfig(beta=0.0)
    with pytest.raises(ValueError, match="max_state_divergence"):
        RtcConfig(max_state_divergence=float("nan"))
    with pytest.raises(ValueError, match="window"):
        DelayEstimator(window=0)


def test_ticks_without_a_due_action_are_those_where_the_executed_chunk_has_run_out():
    from hlrp_ros.tools.seam_metrics import ChunkRecord, uncovered_ticks

    first = ChunkRecord(arrival=0.0, start=0.0, dt=0.1, actions=np.zeros((3, 1)))  # due 0.0..0.3
    second = ChunkRecord(arrival=0.5, start=0.6, dt=0.1, actions=np.ones((4, 1)))  # due 0.6..1.0
    early = ChunkRecord(arrival=0.9, start=1.0, dt=0.1, actions=np.ones((6, 1)))  # lands before it is due
    times = np.array([-0.1, 0.1, 0.25, 0.35, 0.45, 0.55, 0.65, 0.85, 0.95, 1.05])
    # -0.1: before any chunk (not counted); 0.35, 0.45, 0.55: the first ran out (the second not due yet);
    # 0.95: the second still covers it (a newer chunk that is not due yet does not replace it)
    assert uncovered_ticks([second, first, early], times) == (3, 9)
    assert uncovered_ticks([], times) == (0, 0)
