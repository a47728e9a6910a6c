"""controller_node as a process over real rclpy: due-time execution, chunk switching, watchdog, output modes.

Commands are checked by content: each command must be the action due at its own stamp (the
controller computes the index from the time, so a late tick still gets the right action);
timing is only used with wide margins.
"""

from __future__ import annotations

import numpy as np
import pytest
from ros_testing import STARTUP_TIMEOUT, SpinningNode, reliable_qos, wait_for

from hlrp_ros.chunk_codec import encode_chunk, time_to_ns
from hlrp_ros.control.chunk import TimedChunk

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]
CHUNK_TOPIC = "/hlrp_test/ctl/action_chunk"
COMMAND_TOPIC = "/hlrp_test/ctl/command"


def controller_params(**overrides) -> dict:
    params = {"joint_names": JOINTS, "control_rate": 50.0, "input_topic": CHUNK_TOPIC, "output_topic": COMMAND_TOPIC,
              "joint_states_topic": "", "require_joint_state": False, "seam_threshold": 0.0, "watchdog_timeout": 0.8, "max_chunk_age": 2.0,
              "diagnostics_period": 0.2}
    params.update(overrides)
    return params


class ChunkSender:
    """Publishes ActionChunks (columns in the order [elbow, shoulder], to exercise re-ordering)."""

    def __init__(self, spinner: SpinningNode) -> None:
        from hlrp_ros.msg import ActionChunk

        self.spinner = spinner
        self.pub = spinner.node.create_publisher(ActionChunk, CHUNK_TOPIC, reliable_qos(1))

    def wait_connected(self) -> bool:
        """Wait until the controller subscribed; then let discovery settle on its side too (a volatile
        reader drops samples written before it matched the writer)."""
        connected = bool(wait_for(lambda: self.pub.get_subscription_count() > 0, STARTUP_TIMEOUT))
        wait_for(lambda: False, 1.0)
        return connected

    def send(self, chunk_id: int, start_offset: float, shoulder, elbow, dt: float = 0.1) -> TimedChunk:
        """Chunk due from now + start_offset; returns it as a TimedChunk in [shoulder, elbow] order."""
        now = self.spinner.now_ns()
        start = now + int(start_offset * 1e9)
        actions = np.stack([np.asarray(elbow, dtype=np.float32), np.asarray(shoulder, dtype=np.float32)], axis=1)
        self.pub.publish(encode_chunk(actions, ["elbow", "shoulder"], chunk_id=chunk_id, stamp_ns=min(now, start),
                                      first_action_ns=start, dt=dt))
        return TimedChunk(chunk_id, start * 1e-9, dt, actions[:, ::-1].astype(np.float64))


def expected_indices(chunk: TimedChunk, t: float) -> set[int]:
    """Index due at t (both neighbours when t is within 10 us of a due time: float stamp rounding)."""
    return {chunk.index_at(t - 1e-5), chunk.index_at(t + 1e-5)}


def matches(chunk: TimedChunk, t: float, positions) -> bool:
    return any(0 <= i < chunk.horizon and np.allclose(positions, chunk.actions[i], atol=1e-6)
               for i in expected_indices(chunk, t))


def test_executes_at_due_times_switches_chunks_and_trips_watchdog(node_process, rclpy_context):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import JointState

    proc = node_process("controller_node", params=controller_params(watchdog_timeout=1.5))
    with SpinningNode(rclpy_context) as spinner:
        commands = spinner.collect(JointState, COMMAND_TOPIC)
        diagnostics = spinner.collect(DiagnosticArray, "/diagnostics")
        sender = ChunkSender(spinner)
        assert sender.wait_connected(), proc.output()
        steps = np.arange(25)
        first = sender.send(1, 0.2, shoulder=0.01 * steps, elbow=1.0 - 0.01 * steps)
        assert wait_for(lambda: len(commands) >= 10, 30.0), proc.output()
        # Computed from an observation 0.25 s ago: its first steps already elapsed. It lasts longer
        # than the watchdog timeout, so the watchdog (not the end of the chunk) stops it.
        second = sender.send(2, -0.25, shoulder=0.5 + 0.01 * steps, elbow=np.full(25, 0.3))
        # the first chunk may already have run out (a loaded machine): wait for the watchdog's own words
        assert wait_for(lambda: "watchdog: no valid chunk" in proc.output(), 30.0), proc.output()
        count = len(commands)
        assert wait_for(lambda: len(commands) >= count + 10, 30.0), "hold stopped publishing\n" + proc.output()

        def tripped():
            for _, array in list(diagnostics):
                for status in array.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if status.name.startswith("controller_node") and values.get("watchdog_tripped") == "True":
                        return values
            return None

        values = wait_for(tripped, 10.0)
        assert values is not None and values["state"] == "holding" and values["chunks_accepted"] == "2", values

    received = [(time_to_ns(m.header.stamp) * 1e-9, np.array(m.position)) for _, m in list(commands)]
    assert all(list(m.name) == JOINTS for _, m in commands)
    assert received[0][0] >= first.start - 1e-5, "commanded before the first action was due"
    switch = next(k for k, (_, q) in enumerate(received) if q[0] >= 0.5 - 1e-6)
    holding = next(k for k in range(switch, len(received)) if not matches(second, *received[k]))
    for t, q in received[:switch]:
        assert matches(first, t, q), (t - first.start, q)
    for t, q in received[switch:holding]:
        assert matches(second, t, q), (t - second.start, q)
    assert min(expected_indices(second, received[switch][0])) >= 2, "elapsed steps were not dropped"
    last = received[holding - 1][1]
    for _, q in received[holding:]:
        np.testing.assert_allclose(q, last)
    output = proc.output()
    assert output.count("holding the last command") == 1, output
    assert "watchdog: no valid chunk" in output
    assert proc.stop() == 0, output


def test_float64_array_output_stops_when_chunk_runs_out(node_process, rclpy_context):
    from std_msgs.msg import Float64MultiArray

    proc = node_process("controller_node", params=controller_params(output_mode="float64_array",
                                                                     on_timeout="stop", watchdog_timeout=5.0))
    with SpinningNode(rclpy_context) as spinner:
        commands = spinner.collect(Float64MultiArray, COMMAND_TOPIC)
        sender = ChunkSender(spinner)
        assert sender.wait_connected(), proc.output()
        # rows 0.5 s apart: every row is commanded even if the loaded machine stalls a tick or two
        chunk = sender.send(1, 0.2, shoulder=[0.1, 0.2, 0.3], elbow=[-0.1, -0.2, -0.3], dt=0.5)
        assert wait_for(lambda: "stopped publishing" in proc.output(), 30.0), proc.output()
        count = len(commands)
        wait_for(lambda: False, 1.0)
        assert len(commands) == count, "published after stopping"
    values = [tuple(np.round(m.data, 6)) for _, m in commands]
    assert set(values) == {tuple(np.round(row, 6)) for row in chunk.actions}, values
    order = [next(i for i, row in enumerate(chunk.actions) if np.allclose(v, row)) for v in values]
    assert order == sorted(order)
    assert "chunk 1 ran out, stopped publishing" in proc.output()
    assert proc.stop() == 0


def test_joint_trajectory_output_sends_the_remaining_chunk(node_process, rclpy_context):
    from trajectory_msgs.msg import JointTrajectory

    proc = node_process("controller_node", params=controller_params(output_mode="joint_trajectory",
                                                                     watchdog_timeout=5.0))
    with SpinningNode(rclpy_context) as spinner:
        trajectories = spinner.collect(JointTrajectory, COMMAND_TOPIC)
        sender = ChunkSender(spinner)
        assert sender.wait_connected(), proc.output()
        chunk = sender.send(1, 0.8, shoulder=[0.1, 0.2, 0.3, 0.4, 0.5], elbow=[0.0, 0.1, 0.2, 0.3, 0.4])
        assert wait_for(lambda: trajectories, 30.0), proc.output()
    traj = trajectories[0][1]
    assert list(traj.joint_names) == JOINTS
    stamp = time_to_ns(traj.header.stamp) * 1e-9
    times = [stamp + p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in traj.points]
    assert times == sorted(times) and times[0] > stamp
    # After the current command, every point is a remaining action at its due time.
    assert len(traj.points) >= 4
    for t, point in zip(times[1:], traj.points[1:]):
        i = int(round((t - chunk.start) / chunk.dt))
        assert abs(chunk.due_time(i) - t) < 1e-3
        np.testing.assert_allclose(point.positions, chunk.actions[i], atol=1e-6)
    assert proc.stop() == 0


@pytest.mark.parametrize("params,name", [
    ({"joint_names": ["a", "a"]}, "joint_names"),
    ({"velocity_limits": [1.0]}, "velocity_limits"),
    ({"output_mode": "effort"}, "output_mode"),
    ({"control_rate": 0.0}, "control_rate"),
])
def test_invalid_parameter_exits_nonzero_naming_it(node_process, params, name):
    proc = node_process("controller_node", params=controller_params(**params))
    code = proc.wait(timeout=STARTUP_TIMEOUT)
    assert code not in (None, 0), proc.output()
    assert f"invalid parameter '{name}'" in proc.output()


def test_seam_jump_from_measured_position_is_ramped_within_velocity_limit(rclpy_context, capfd):
    """In-process (no timing assumptions): ticks are driven by hand, steps checked against the limit."""
    import time

    from rclpy.parameter import Parameter
    from ros_testing import joint_state

    from hlrp_ros.nodes.controller_node import ControllerNode

    params = controller_params(joint_states_topic="/hlrp_test/seam/joint_states", velocity_limits=[1.0, 1.0],
                               seam_threshold=0.1, seam_ramp_scale=0.5, position_limits_upper=[0.4, 10.0],
                               position_limits_lower=[-10.0, -10.0], control_thread=False)
    node = ControllerNode("seam_controller", context=rclpy_context,
                          parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        node.trigger_configure()
        node.trigger_activate()
        now = node.get_clock().now().nanoseconds
        node.on_joint_state(joint_state(now, ["elbow", "shoulder"], [0.0, 0.0]))
        actions = np.tile(np.array([[0.3, 0.5]], dtype=np.float32), (200, 1))  # [elbow, shoulder]
        node.on_chunk(encode_chunk(actions, ["elbow", "shoulder"], chunk_id=1, stamp_ns=now, first_action_ns=now,
                                   dt=0.02))
        published = []
        node._cmd_pub.publish = lambda msg: published.append((time.monotonic(), list(msg.position)))
        for _ in range(40):
            node.on_tick()
            time.sleep(0.01)
        err = capfd.readouterr().err
        assert "seam: chunk 1 starts 0.400 away on joint 'shoulder'" in err, err
        positions = np.array([q for _, q in published])
        max_step = 0.5 * 1.0 * 2 * (1 / 50.0)  # ramp speed x step-time cap
        assert np.all(np.abs(np.diff(positions, axis=0)) <= max_step + 1e-9)
        assert np.all(np.abs(positions[0]) <= max_step + 1e-9), "jumped at the seam"
        assert positions[:, 0].max() <= 0.4 + 1e-9  # position limit of shoulder (the jump is to the clamped 0.4)
        assert positions[-1, 1] > positions[0, 1]  # moving towards the chunk
    finally:
        node.destroy_node()


def test_only_the_configured_chunk_publishers_drive_the_robot(node_process, rclpy_context):
    from sensor_msgs.msg import JointState

    proc = node_process("controller_node", params=controller_params(chunk_publishers=["/hlrp_trusted_policy"]))
    with SpinningNode(rclpy_context, "hlrp_stranger") as stranger, \
            SpinningNode(rclpy_context, "hlrp_trusted_policy") as trusted:
        commands = stranger.collect(JointState, COMMAND_TOPIC)
        intruder = ChunkSender(stranger)
        assert intruder.wait_connected(), proc.output()
        intruder.send(1, 0.0, shoulder=[0.5] * 20, elbow=[0.5] * 20)
        assert proc.wait_for_output(r"published by /hlrp_stranger, not one of chunk_publishers "
                                    r"\['/hlrp_trusted_policy'\]", STARTUP_TIMEOUT), proc.output()
        assert commands == []
        policy = ChunkSender(trusted)
        assert policy.wait_connected(), proc.output()
        policy.send(1, 0.0, shoulder=[0.1] * 20, elbow=[0.2] * 20)
        assert wait_for(lambda: len(commands) >= 3, 30.0), proc.output()
        assert np.allclose(list(commands[0][1].position), [0.1, 0.2])
    assert proc.stop() == 0, proc.output()
