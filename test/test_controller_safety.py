"""controller_node under restarts, missing measurements and odd timing: what may execute, and from where.

The controller runs in this process with its clock driven by the test (``controller_node._sec``
is replaced), so every case is exact and independent of the machine's load: chunks are
delivered through the node's subscription callback and ticks are called by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from ros_testing import joint_state

from hlrp_ros.chunk_codec import encode_chunk
from hlrp_ros.control.watchdog import OutputState

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]
JS = "/safety/joint_states"
T0 = 1000.0


class Clock:
    """The controller's time, in seconds, set by the test."""

    def __init__(self) -> None:
        self.now = T0

    def ns(self, offset: float = 0.0) -> int:
        return int(round((self.now + offset) * 1e9))


@pytest.fixture(scope="module")
def context():
    import rclpy

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture
def clock(monkeypatch):
    from hlrp_ros.nodes import controller_node

    clock = Clock()
    monkeypatch.setattr(controller_node, "_sec", lambda _ros_clock: clock.now)
    return clock


@pytest.fixture
def make_controller(context, clock):
    from rclpy.parameter import Parameter

    from hlrp_ros.nodes.controller_node import ControllerNode

    nodes = []

    def make(**overrides):
        params = {"joint_names": JOINTS, "input_topic": "/safety/chunk", "output_topic": "/safety/command",
                  "joint_states_topic": JS, "control_rate": 50.0, "max_chunk_age": 1.0, "watchdog_timeout": 0.5,
                  "velocity_limits": [1.0, 1.0], "seam_threshold": 0.0,
                  "control_thread": False}  # the test drives the ticks
        params.update(overrides)
        node = ControllerNode(f"safety_controller_{len(nodes)}", context=context,
                              parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        nodes.append(node)
        node.trigger_configure()
        if node.config_error is None:
            node.trigger_activate()
            node.commands = []
            node._cmd_pub.publish = lambda msg: node.commands.append((clock.now, list(msg.position)))
        return node

    yield make
    for node in nodes:
        node.destroy_node()


def send(node, clock: Clock, *, run: str = "run-a", chunk_id: int = 1, value=(0.1, 0.2), horizon: int = 50,
         age: float = 0.0, start: float = 0.0):
    """An ActionChunk through the subscription callback: observation ``age`` s old, first action due at +``start``.
    Returns the message (to replay it)."""
    actions = np.tile(np.asarray(value, dtype=np.float32), (horizon, 1))
    msg = encode_chunk(actions, JOINTS, chunk_id=chunk_id, stamp_ns=clock.ns(-age), first_action_ns=clock.ns(start),
                       dt=0.02, run_id=run)
    node.on_chunk(msg)
    return msg


def measure(node, clock: Clock, positions=(0.0, 0.0), age: float = 0.0) -> None:
    node.on_joint_state(joint_state(clock.ns(-age), JOINTS, list(positions)))


def tick(node, clock: Clock, seconds: float = 0.02) -> None:
    clock.now += seconds
    node.on_tick()


# ------------------------------------------------------------------------------------------ restarts
def test_a_restarted_policy_takes_control_with_its_first_chunk(make_controller, clock, capfd):
    node = make_controller()
    measure(node, clock)
    for i in range(1, 44):  # the first run: ids 1..43
        send(node, clock, run="first", chunk_id=i, value=(0.1, 0.1))
        tick(node, clock)
    before = len(node.commands)
    clock.now += 0.3  # kill -9 and restart: ids start again at 1, built on a newer observation
    measure(node, clock)
    send(node, clock, run="second", chunk_id=1, value=(0.1, 0.3))
    tick(node, clock)
    assert node.accepted == 44 and node.reject.total == 0
    assert node.executor_.current.chunk_id == 1 and node.admission.run_id == "second"
    assert len(node.commands) == before + 1
    assert "policy run second took over from run first" in capfd.readouterr().err


def test_the_replaced_run_never_executes_again(make_controller, clock, capfd):
    node = make_controller()
    measure(node, clock)
    send(node, clock, run="old", chunk_id=5)
    tick(node, clock)
    send(node, clock, run="new", chunk_id=1)
    tick(node, clock)
    send(node, clock, run="old", chunk_id=6)  # an old policy still alive, even with a newer observation
    tick(node, clock)
    assert node.executor_.current.chunk_id == 1 and node.reject.counts == {"chunk_retired_run": 1}
    assert "was replaced by run new: is an old policy_node still publishing?" in capfd.readouterr().err


@pytest.mark.parametrize("absurd_id", [2**64 - 1, 43])
def test_an_absurd_or_replayed_id_cannot_lock_the_controller(make_controller, clock, absurd_id):
    node = make_controller()
    measure(node, clock)
    msg = send(node, clock, run="run-a", chunk_id=absurd_id)  # from anyone on the domain
    tick(node, clock)
    node.on_chunk(msg)  # the very same chunk again (a replay): refused
    assert node.reject.counts == {"chunk_replayed": 1}
    tick(node, clock, 0.1)
    send(node, clock, run="run-a", chunk_id=1)  # the real policy's next observation gets through
    tick(node, clock)
    assert node.executor_.current.chunk_id == 1 and node.accepted == 2


def test_a_chunk_built_on_an_older_observation_than_the_current_one_is_refused(make_controller, clock):
    node = make_controller()
    measure(node, clock)
    send(node, clock, run="a", chunk_id=1)
    send(node, clock, run="b", chunk_id=9, age=0.2)  # another run, but older information
    assert node.reject.counts == {"chunk_older_observation": 1} and node.executor_.pending.chunk_id == 1


# ------------------------------------------------------------------------------------------ measured state
def test_no_command_until_a_measured_joint_state_then_a_ramp_from_it(make_controller, clock, capfd):
    node = make_controller()
    for i in range(1, 26):  # half a second of chunks far from where the arm is
        send(node, clock, chunk_id=i, value=(3.0, -2.0))
        tick(node, clock)
    assert node.commands == [] and node.tracker.state == OutputState.WAITING
    assert node.tracker.reason == f"waiting for a measured joint state: none received on {JS} yet"
    err = capfd.readouterr().err
    assert err.count("not commanding: waiting for a measured joint state") == 1, err
    measure(node, clock, (0.5, 0.5))
    send(node, clock, chunk_id=26, value=(3.0, -2.0))
    for _ in range(10):
        tick(node, clock)
    positions = np.array([q for _, q in node.commands])
    np.testing.assert_allclose(positions[0], [0.5, 0.5])  # starts where the arm is
    steps = np.abs(np.diff(positions, axis=0))
    assert np.all(steps <= 1.0 * 0.02 + 1e-9) and positions[-1][0] > 0.5  # within 1 rad/s, towards the chunk


def test_a_measured_state_older_than_max_joint_state_age_does_not_count(make_controller, clock):
    node = make_controller(max_joint_state_age=0.2)
    measure(node, clock, (0.5, 0.5))
    clock.now += 0.5
    send(node, clock)
    tick(node, clock)
    assert node.commands == [] and "0.52 s old (max_joint_state_age 0.2 s)" in node.tracker.reason


def test_an_older_joint_state_arriving_late_does_not_replace_the_newer_one(make_controller, clock, capfd):
    node = make_controller()
    measure(node, clock, (0.5, 0.5))
    measure(node, clock, (-1.0, -1.0), age=0.4)
    send(node, clock)
    tick(node, clock)
    np.testing.assert_allclose(node.commands[0][1], [0.5, 0.5])
    assert node.dropped_inputs.counts == {"joint_state_out_of_order": 1}
    assert f"dropped a joint state on {JS} stamped 0.400 s before the one already kept" in capfd.readouterr().err


def test_a_restart_after_a_stop_ramps_from_the_measured_state_again(make_controller, clock):
    node = make_controller(on_timeout="stop")
    measure(node, clock, (0.0, 0.0))
    send(node, clock, horizon=5)
    for _ in range(10):
        tick(node, clock)
    assert node.tracker.state == OutputState.STOPPED
    measure(node, clock, (-0.4, 0.4))  # something else moved the arm meanwhile
    send(node, clock, chunk_id=2)
    tick(node, clock)
    np.testing.assert_allclose(node.commands[-1][1], [-0.4, 0.4])


def test_opting_out_of_the_measured_state_is_explicit_and_warned(make_controller, clock, capfd):
    node = make_controller(require_joint_state=False, joint_states_topic="")
    assert "require_joint_state is false" in capfd.readouterr().err
    send(node, clock, value=(0.3, 0.1))
    tick(node, clock)
    np.testing.assert_allclose(node.commands[0][1], [0.3, 0.1])


def test_requiring_a_measured_state_without_a_topic_is_a_configuration_error(make_controller):
    node = make_controller(joint_states_topic="")
    assert node.config_error is not None and node.config_error.name == "joint_states_topic"
    assert "require_joint_state false" in str(node.config_error)


# ------------------------------------------------------------------------------------------ timing
def test_a_chunk_due_an_hour_from_now_is_rejected(make_controller, clock, capfd):
    node = make_controller()
    measure(node, clock)
    send(node, clock, start=3600.0)
    assert node.reject.counts == {"chunk_too_early": 1} and node.executor_.pending is None
    assert "first action due 3600.000 s from now (more than max_start_delay 1 s)" in capfd.readouterr().err


def test_only_chunks_that_execute_feed_the_watchdog(make_controller, clock):
    node = make_controller(watchdog_timeout=0.5, max_start_delay=1.0)
    measure(node, clock)
    send(node, clock, chunk_id=1, horizon=5)  # 0.1 s of actions
    tick(node, clock)
    for i in range(2, 12):  # then chunks that keep arriving but are never due yet (each replaces the last)
        send(node, clock, chunk_id=i, start=0.9)
        tick(node, clock, 0.06)
    assert node.accepted == 11 and node.watchdog.expired(clock.now)
    assert node.tracker.state == OutputState.HOLDING and node.tracker.reason.startswith("watchdog")


def test_a_chunk_not_yet_due_keeps_the_controller_waiting_without_tripping_the_watchdog(make_controller, clock):
    node = make_controller(watchdog_timeout=0.05)
    measure(node, clock)
    send(node, clock, start=0.9)
    tick(node, clock, 0.1)
    tick(node, clock, 0.1)
    assert node.commands == [] and node.tracker.state == OutputState.WAITING
    assert not node.watchdog.expired(clock.now)
    measure(node, clock)
    tick(node, clock, 0.71)  # due now: it executes
    assert len(node.commands) == 1 and node.tracker.state == OutputState.RUNNING


def test_the_watchdog_trips_while_waiting_for_a_measured_state_and_nothing_is_published(make_controller, clock,
                                                                                         capfd):
    node = make_controller(watchdog_timeout=0.1)
    send(node, clock, horizon=100)
    for _ in range(10):
        tick(node, clock)
    assert node.commands == [] and node.tracker.state == OutputState.STOPPED
    assert capfd.readouterr().err.count("before any command, stopped publishing") == 1


def test_a_robot_moved_while_running_is_commanded_from_where_it_is(make_controller, clock, capfd):
    node = make_controller(resync_threshold=[0.1, 0.0])  # the second joint never resyncs
    measure(node, clock, (0.0, 0.0))
    send(node, clock, chunk_id=1, value=(0.9, 0.0))
    for _ in range(5):
        tick(node, clock)
    assert node.commands[-1][1][0] == pytest.approx(0.08, abs=1e-6)  # 1.0/s from 0: four 20 ms steps
    measure(node, clock, (0.8, 0.5))  # teleported (a simulator reset that kept its clock), or pushed by hand
    tick(node, clock)
    tick(node, clock)
    first, second = node.commands[-2][1], node.commands[-1][1]
    # joint 0 continues from the measured 0.8 towards 0.9 at 1.0/s; joint 1 stays on its command
    assert first[0] == pytest.approx(0.8, abs=1e-6) and first[1] == pytest.approx(0.0, abs=1e-9), first
    assert second[0] == pytest.approx(0.82, abs=1e-6), second
    assert "resync" in capfd.readouterr().err and node.resyncs == 1


def test_a_steady_gap_between_command_and_measurement_is_no_resync(make_controller, clock):
    """A hand pressing on an object lags its command for good: that is no move, the command stays."""
    node = make_controller(resync_threshold=[0.1, 0.1])
    measure(node, clock, (0.0, 0.0))
    send(node, clock, chunk_id=1, value=(0.9, 0.0))
    for step in range(20):  # within the 0.5 s watchdog
        measure(node, clock, (min(0.05, 0.01 * step), 0.0))  # stuck at 0.05 while the command moves on
        tick(node, clock)
    assert node.commands[-1][1][0] == pytest.approx(0.38, abs=1e-6) and node.resyncs == 0


def test_without_resync_a_moved_robot_is_ramped_from_the_last_command(make_controller, clock):
    node = make_controller()  # resync_threshold 0: off
    measure(node, clock, (0.0, 0.0))
    send(node, clock, chunk_id=1, value=(0.9, 0.0))
    for _ in range(5):
        tick(node, clock)
    measure(node, clock, (0.8, 0.5))
    tick(node, clock)
    assert node.commands[-1][1][0] == pytest.approx(0.10, abs=1e-6) and node.resyncs == 0


def test_a_resync_threshold_per_joint_must_match_the_joints(make_controller):
    node = make_controller(resync_threshold=[0.1, 0.1, 0.1])
    assert node.config_error is not None and node.config_error.name == "resync_threshold"


def test_a_clock_jumping_back_drops_pending_chunks_and_holds(make_controller, clock, capfd):
    node = make_controller()
    measure(node, clock)
    send(node, clock, chunk_id=1, value=(0.0, 0.0))
    tick(node, clock)
    send(node, clock, chunk_id=2, value=(0.2, 0.2), start=0.5)
    clock.now = 5.0  # the simulator was reset
    node.on_tick()
    assert node.executor_.pending is None and node.executor_.current is None
    assert node.tracker.state == OutputState.HOLDING
    assert "clock jumped back 995.020 s (simulator reset?): dropped every pending chunk" in capfd.readouterr().err
    measure(node, clock)
    send(node, clock, chunk_id=3, value=(0.0, 0.1))  # the same run on the new timeline is accepted again
    tick(node, clock)
    assert node.executor_.current.chunk_id == 3
