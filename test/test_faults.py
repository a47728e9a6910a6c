"""Faults injected into the real executables: a policy killed and restarted, a camera that stalls,
a publisher of NaN chunks, a controller started before anything else, simulated time that is
missing or jumps back.

Every node runs as its own process over DDS; inputs come from other processes or from the test's
own node. Assertions are on what happened (states, commands, log lines), with generous timeouts;
the latencies a fault costs are printed, not asserted (they depend on the machine's load).
"""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest
from ros_testing import (
    STARTUP_TIMEOUT,
    SpinningNode,
    joint_state,
    latched_qos,
    make_tiny_checkpoint,
    reliable_qos,
    wait_for,
)

from hlrp_ros.chunk_codec import encode_chunk
from hlrp_ros.graph import python_process, stop_process_group

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]
CAMERA, POLICY_JS, CONTROLLER_JS = "/fault/camera", "/fault/policy_joint_states", "/fault/joint_states"
CHUNKS, COMMANDS = "/fault/action_chunk", "/fault/command"

# A camera + joint state source for the policy, as its own process (so that it can be stopped).
SENSOR_SOURCE = f"""
import time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
rclpy.init()
node = rclpy.create_node("fault_sensor_source")
cam = node.create_publisher(Image, "{CAMERA}", qos_profile_sensor_data)
js = node.create_publisher(JointState, "{POLICY_JS}", qos_profile_sensor_data)
pixels = np.random.default_rng(0).integers(0, 256, size=64 * 64 * 3, dtype=np.uint8).tobytes()
def tick():
    stamp = node.get_clock().now().to_msg()
    image = Image(height=64, width=64, encoding="rgb8", step=64 * 3, data=pixels)
    image.header.stamp = stamp
    cam.publish(image)
    state = JointState(name={JOINTS!r}, position=[0.1, 0.2])
    state.header.stamp = stamp
    js.publish(state)
node.create_timer(0.1, tick)
rclpy.spin(node)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("fault_ckpt"))


def policy_params(ckpt) -> dict:
    return {"checkpoint": str(ckpt), "camera_topics": [CAMERA], "camera_names": ["top"],
            "joint_states_topic": POLICY_JS, "instruction_topic": "/fault/instruction", "output_topic": CHUNKS,
            "inference_period": 0.3, "action_period": 0.1, "max_observation_age": 1.0, "torch_threads": 1,
            "seed": 0, "diagnostics_period": 0.5}


def controller_params(**overrides) -> dict:
    params = {"joint_names": JOINTS, "control_rate": 50.0, "input_topic": CHUNKS, "output_topic": COMMANDS,
              "joint_states_topic": CONTROLLER_JS, "watchdog_timeout": 1.0, "max_chunk_age": 3.0,
              "velocity_limits": [2.0, 2.0], "seam_threshold": 0.2, "diagnostics_period": 0.2}
    params.update(overrides)
    return params


class Bench:
    """The test's side: collects commands and controller diagnostics, publishes the instruction and,
    when told to, the controller's measured joint states."""

    def __init__(self, spinner: SpinningNode) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String

        self.spinner = spinner
        node = spinner.node
        self.commands = spinner.collect(JointState, COMMANDS)
        self.diagnostics = spinner.collect(DiagnosticArray, "/diagnostics")
        node.create_publisher(String, "/fault/instruction", latched_qos()).publish(String(data="go to the red one"))
        self._js_pub = node.create_publisher(JointState, CONTROLLER_JS, qos_profile_sensor_data)
        self.measured: list[float] | None = None
        node.create_timer(0.05, self._publish_measured)

    def _publish_measured(self) -> None:
        if self.measured is not None:
            self._js_pub.publish(joint_state(self.spinner.now_ns(), JOINTS, self.measured))

    def controller(self) -> dict | None:
        """The controller's latest diagnostics values (with ``message``), or None."""
        for _, array in reversed(list(self.diagnostics)):
            for status in array.status:
                if status.name.startswith("controller_node"):
                    return {"message": status.message, **{kv.key: kv.value for kv in status.values}}
        return None

    def controller_state(self) -> str | None:
        values = self.controller()
        return None if values is None else values["state"]

    def positions_since(self, t: float) -> np.ndarray:
        return np.array([list(m.position) for rt, m in list(self.commands) if rt >= t]).reshape(-1, len(JOINTS))


def run_id(policy) -> str:
    match = policy.wait_for_output(r"run id ([0-9a-f]{32})", STARTUP_TIMEOUT)
    assert match, policy.output()
    return match.group(1)


def test_waits_for_a_measured_state_then_survives_a_policy_kill_and_restart(node_process, checkpoint,
                                                                             rclpy_context, ros_env):
    with SpinningNode(rclpy_context) as spinner:
        bench = Bench(spinner)
        controller = node_process("controller_node", params=controller_params())
        sensors = python_process(["-c", SENSOR_SOURCE], env=ros_env)
        try:
            policy = node_process("policy_node", params=policy_params(checkpoint))
            first_run = run_id(policy)
            # chunks arrive, but nothing measured the arm yet: nothing may be commanded
            assert wait_for(lambda: int((bench.controller() or {}).get("chunks_accepted", 0)) >= 3,
                            STARTUP_TIMEOUT), controller.output()
            values = bench.controller()
            assert values["state"] == "waiting" and "waiting for a measured joint state" in values["message"]
            assert bench.commands == [] and "not commanding: waiting for a measured joint state" in controller.output()

            bench.measured = [0.3, -0.2]
            assert wait_for(lambda: len(bench.commands) >= 10, STARTUP_TIMEOUT), controller.output()
            np.testing.assert_allclose(list(bench.commands[0][1].position), [0.3, -0.2], atol=1e-6)
            steps = np.abs(np.diff(bench.positions_since(0.0), axis=0))
            assert steps.max() <= 2.0 * 2 * 0.02 + 1e-6  # within the velocity limit (step time capped at 2 ticks)

            killed = time.monotonic()
            os.killpg(policy.pid, signal.SIGKILL)
            assert wait_for(lambda: bench.controller_state() == "holding", STARTUP_TIMEOUT), controller.output()
            held = time.monotonic()
            time.sleep(0.5)
            hold = bench.positions_since(time.monotonic() - 0.4)
            assert len(hold) >= 3 and np.allclose(hold, hold[0]), "the hold must repeat one command"
            print(f"\npolicy killed -> controller holding: {held - killed:.2f} s (watchdog_timeout 1 s, "
                  f"diagnostics every 0.2 s)")

            restarted = node_process("policy_node", params=policy_params(checkpoint))
            second_run = run_id(restarted)
            ready = time.monotonic()
            assert second_run != first_run
            assert wait_for(lambda: (bench.controller() or {}).get("run_id") == second_run and
                            bench.controller_state() == "running", STARTUP_TIMEOUT), controller.output()
            print(f"restarted policy ready -> its chunks executing: {time.monotonic() - ready:.2f} s "
                  f"(inference_period 0.3 s)")
            assert f"policy run {second_run[:8]} took over from run {first_run[:8]}" in controller.output()
            assert "rejected" not in controller.output(), controller.output()
        finally:
            stop_process_group(sensors)
    assert controller.stop() == 0, controller.output()


def test_a_stalled_camera_and_nan_chunks_hold_the_arm_until_the_camera_resumes(node_process, checkpoint,
                                                                                rclpy_context, ros_env):
    from hlrp_ros.msg import ActionChunk

    with SpinningNode(rclpy_context) as spinner:
        bench = Bench(spinner)
        bench.measured = [0.0, 0.0]
        nan_pub = spinner.node.create_publisher(ActionChunk, CHUNKS, reliable_qos(1))
        sensors = python_process(["-c", SENSOR_SOURCE], env=ros_env)
        try:
            controller = node_process("controller_node", params=controller_params())
            policy = node_process("policy_node", params=policy_params(checkpoint))
            assert wait_for(lambda: bench.controller_state() == "running", STARTUP_TIMEOUT), controller.output()

            os.killpg(sensors.pid, signal.SIGSTOP)  # the camera driver hangs
            stopped = time.monotonic()
            nan = np.full((6, 2), np.nan, dtype=np.float32)
            for i in range(10):  # a broken policy publishes NaN chunks meanwhile
                now = spinner.now_ns()
                nan_pub.publish(encode_chunk(nan, JOINTS, chunk_id=i + 1, stamp_ns=now, first_action_ns=now,
                                             dt=0.1, run_id="broken"))
                time.sleep(0.1)
            assert wait_for(lambda: bench.controller_state() == "holding", STARTUP_TIMEOUT), controller.output()
            print(f"\ncamera stopped -> controller holding: {time.monotonic() - stopped:.2f} s")
            assert policy.wait_for_output(rf"camera 'top' image on {CAMERA} is [0-9.]+ s old", STARTUP_TIMEOUT), \
                policy.output()
            assert "non-finite action values" in controller.output()
            assert np.isfinite(bench.positions_since(0.0)).all()

            os.killpg(sensors.pid, signal.SIGCONT)
            resumed = time.monotonic()
            assert wait_for(lambda: bench.controller_state() == "running", STARTUP_TIMEOUT), controller.output()
            print(f"camera resumed -> controller running: {time.monotonic() - resumed:.2f} s")
        finally:
            try:
                os.killpg(sensors.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            stop_process_group(sensors)


def test_sim_time_waits_for_the_clock_and_a_clock_jump_back_drops_pending_chunks(node_process, checkpoint,
                                                                                 rclpy_context):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    from hlrp_ros.chunk_codec import ns_to_time
    from hlrp_ros.msg import ActionChunk

    sim = {"ns": None}

    with SpinningNode(rclpy_context) as spinner:
        bench = Bench(spinner)
        clock_pub = spinner.node.create_publisher(Clock, "/clock", QoSProfile(depth=1,
                                                                             reliability=ReliabilityPolicy.RELIABLE))
        chunk_pub = spinner.node.create_publisher(ActionChunk, CHUNKS, reliable_qos(1))

        def advance() -> None:  # the simulator: 10 ms of sim time per 10 ms of wall time, once started
            if sim["ns"] is not None:
                sim["ns"] += 10_000_000
                clock_pub.publish(Clock(clock=ns_to_time(sim["ns"])))
                if bench.measured is not None:
                    bench._js_pub.publish(joint_state(sim["ns"], JOINTS, bench.measured))

        spinner.node.create_timer(0.01, advance)
        controller = node_process("controller_node", params=controller_params(use_sim_time=True))
        policy = node_process("policy_node", params={**policy_params(checkpoint), "use_sim_time": True})
        for proc in (controller, policy):
            assert proc.wait_for_output(r"waiting for /clock: use_sim_time is true", STARTUP_TIMEOUT), proc.output()
        assert wait_for(lambda: (bench.controller() or {}).get("message", "").startswith("waiting for /clock"),
                        STARTUP_TIMEOUT)
        assert policy.stop() == 0, policy.output()

        def send(value: float, chunk_id: int) -> None:
            now = sim["ns"]
            chunk_pub.publish(encode_chunk(np.full((100, 2), value, dtype=np.float32), JOINTS, chunk_id=chunk_id,
                                           stamp_ns=now, first_action_ns=now, dt=0.1, run_id="sim"))

        sim["ns"] = 100 * 10**9
        bench.measured = [0.0, 0.0]
        assert controller.wait_for_output(r"/clock is running", STARTUP_TIMEOUT), controller.output()
        time.sleep(0.3)
        send(0.1, 1)
        assert wait_for(lambda: bench.controller_state() == "running", STARTUP_TIMEOUT), controller.output()
        send(0.3, 2)  # then the simulator is reset before this one finished
        time.sleep(0.2)
        sim["ns"] = 5 * 10**9
        assert controller.wait_for_output(r"clock jumped back 9\d\.\d+ s \(simulator reset\?\): dropped every "
                                          r"pending chunk", STARTUP_TIMEOUT), controller.output()
        assert wait_for(lambda: bench.controller_state() == "holding", STARTUP_TIMEOUT), controller.output()
        time.sleep(0.3)
        send(-0.1, 3)  # the same run on the new timeline
        assert wait_for(lambda: bench.controller_state() == "running" and
                        (bench.controller() or {}).get("chunk_id") == "3", STARTUP_TIMEOUT), controller.output()
        assert not re.search(r"rejected ActionChunk 3 ", controller.output()), controller.output()
    assert controller.stop() == 0, controller.output()


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["ctrl-c under ros2 launch", "sigterm"])
def test_every_node_exits_cleanly_on_a_signal_and_the_controller_ends_with_a_hold(
        node_process, checkpoint, rclpy_context, ros_env, signals):
    """Ctrl-C in a terminal under ``ros2 launch`` signals the whole process group, then launch signals each
    node again: two SIGINTs, while the policy may be inferring."""
    from trajectory_msgs.msg import JointTrajectory

    with SpinningNode(rclpy_context) as spinner:
        bench = Bench(spinner)
        bench.measured = [0.0, 0.0]
        trajectories = spinner.collect(JointTrajectory, "/fault/trajectory")
        sensors = python_process(["-c", SENSOR_SOURCE], env=ros_env)
        try:
            nodes = [node_process("demo_sim"),
                     node_process("controller_node", params=controller_params(output_mode="joint_trajectory",
                                                                          output_topic="/fault/trajectory")),
                     node_process("policy_node", params={**policy_params(checkpoint), "inference_period": 0.05})]
            assert wait_for(lambda: len(trajectories) >= 5, STARTUP_TIMEOUT), nodes[1].output()
            for sig in signals:
                for proc in nodes:
                    os.killpg(proc.pid, sig)
                time.sleep(0.05)
            codes = {proc.node_name: proc.wait(timeout=30.0) for proc in nodes}
        finally:
            stop_process_group(sensors)
        time.sleep(0.5)  # the final hold is in flight
        last = list(trajectories)[-1][1]
    for proc in nodes:
        assert codes[proc.node_name] == 0, proc.output()
        for symptom in ("Traceback", "KeyboardInterrupt", "RCLError", "Failed to publish", "context is invalid"):
            assert symptom not in proc.output(), proc.output()
    assert len(last.points) == 1, "the last trajectory must be a one-point hold"
    assert "shutting down: published a hold of the last command" in nodes[1].output()
