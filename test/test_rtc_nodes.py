"""Real-time chunking in the nodes over real rclpy: policy_node guides each chunk onto the one it published.

The first test runs policy_node in this process on a tiny random checkpoint and calls its inference
directly (no timer), so what is compared is exactly what it published; the second brings up the demo
world, the shipped checkpoint and both nodes as processes with an injected inference delay and compares
the seams of plain switching and guided chunking.
"""

from __future__ import annotations

import numpy as np
import pytest
from ros_testing import (
    STARTUP_TIMEOUT,
    SpinningNode,
    camera_image,
    joint_state,
    latched_qos,
    make_tiny_checkpoint,
    reliable_qos,
    wait_for,
)

from hlrp_ros.control.seams import due_actions

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # 4 denoising steps: enough for the guidance to act (2 steps, as other node tests use, is too coarse).
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), num_steps=4, chunk_size=16, n_action_steps=16)


@pytest.fixture(scope="module")
def conditioned_checkpoint(tmp_path_factory):
    # Marked as trained to continue chunk prefixes of up to 8 actions (rtc_max_delay); random weights.
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt_cond"), num_steps=4, chunk_size=16, n_action_steps=16,
                                rtc_max_delay=8)


def in_process_policy(context, checkpoint, name: str, **params):
    from rclpy.parameter import Parameter

    from hlrp_ros.nodes.policy_node import PolicyNode

    values = {"checkpoint": str(checkpoint), "camera_topics": ["/rtc_test/top"], "camera_names": ["top"],
              "joint_states_topic": "/rtc_test/joint_states", "instruction_topic": "/rtc_test/instruction",
              "output_topic": "/rtc_test/action_chunk", "inference_period": 1000.0, "action_period": 0.1,
              "max_observation_age": 1000.0, "torch_threads": 1, "rtc_fixed_delay_steps": 3,
              # no robot executes these random-weight chunks: the fed joint states are unrelated to them
              "rtc_max_state_divergence": 0.0, **params}
    return PolicyNode(name, context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def feed(node, seed: int, instruction: str = "pick up the cube", positions=None) -> None:
    """Inputs as the subscriptions keep them: a camera frame, joint states and the instruction."""
    from std_msgs.msg import String

    now = node.get_clock().now().nanoseconds
    image = camera_image(now, seed=seed)
    node.latest["/rtc_test/top"] = (image, now)
    positions = [0.3 * seed, -0.2 * seed] if positions is None else [float(v) for v in positions]
    node.latest["/rtc_test/joint_states"] = (joint_state(now, JOINTS, positions), now)
    node.latest["/rtc_test/instruction"] = (String(data=instruction), now)


def seam_gap(node, seed: int) -> float:
    """Publish two chunks from different observations; the largest gap between the second's first d = 3
    actions and the first chunk's actions due at the same times."""
    feed(node, seed)
    assert node.infer_once()
    first = node.seams.previous
    feed(node, seed + 1)
    assert node.infer_once()
    second = node.seams.previous
    due = due_actions(first, second.first_action_ns, second.dt, 16)
    assert due is not None and len(due) >= 3
    return float(np.max(np.abs(second.actions[:3] - due[:3])))


def test_policy_node_guides_a_chunk_onto_the_actions_its_previous_chunk_has_due(checkpoint, rclpy_context):
    guided = in_process_policy(rclpy_context, checkpoint, "policy_rtc_guided", rtc_mode="guided")
    plain = in_process_policy(rclpy_context, checkpoint, "policy_rtc_off", rtc_mode="off")
    try:
        gaps = {"guided": seam_gap(guided, 1), "off": seam_gap(plain, 1)}
        assert gaps["off"] > 0.2, gaps  # random weights: the two chunks really differ
        assert gaps["guided"] < 0.25 * gaps["off"], gaps
        assert guided.seams.counts["guided"] == 1 and guided.seams.counts["no_previous"] == 1
        values = guided._rtc_values()
        assert values["rtc.mode"] == "guided" and values["rtc.delay_steps_last"] == 3
        assert guided.seams.delays.seen == 2  # a gather-to-publish latency per published chunk
        # A new instruction starts from fresh noise.
        feed(guided, 5, instruction="push the cube")
        assert guided.infer_once() and guided.seams.counts["instruction_changed"] == 1
    finally:
        guided.destroy_node()
        plain.destroy_node()


def test_policy_node_hands_a_conditioned_model_the_actions_its_previous_chunk_has_due(conditioned_checkpoint,
                                                                                       rclpy_context):
    node = in_process_policy(rclpy_context, conditioned_checkpoint, "policy_rtc_conditioned", rtc_mode="conditioned")
    try:
        feed(node, 1)
        assert node.infer_once()
        first = node.seams.previous
        feed(node, 2)
        assert node.infer_once()
        second = node.seams.previous
        due = due_actions(first, second.first_action_ns, second.dt, 16)
        # d = 3 (rtc_fixed_delay_steps) and the row the controller interpolates towards on arrival: 4 rows
        assert np.max(np.abs(second.actions[:4] - due[:4])) < 1e-4
        assert np.max(np.abs(second.actions[4:8] - due[4:8])) > 0.05
        assert node.seams.counts["guided"] == 1 and node._rtc_values()["rtc.mode"] == "conditioned"
    finally:
        node.destroy_node()


def test_a_conditioned_chunk_continues_the_plan_only_while_the_arm_follows_it(conditioned_checkpoint,
                                                                              rclpy_context):
    node = in_process_policy(rclpy_context, conditioned_checkpoint, "policy_rtc_divergence", rtc_mode="conditioned",
                             rtc_max_state_divergence=0.5, first_action_delay=0.0)
    try:
        feed(node, 1)
        assert node.infer_once()
        first = node.seams.previous
        # the arm where the plan has it now: continued
        now = node.get_clock().now().nanoseconds
        feed(node, 2, positions=due_actions(first, now, first.dt, 1)[0] + 0.1)
        assert node.infer_once() and node.seams.counts["guided"] == 1
        assert 0.0 <= node._rtc_values()["rtc.state_divergence_last"] < 0.5
        # the arm 1 rad away from the plan (a reset, a teleport): a fresh chunk, not bent onto the old plan
        second = node.seams.previous
        now = node.get_clock().now().nanoseconds
        feed(node, 3, positions=due_actions(second, now, second.dt, 1)[0] + np.array([1.0, 0.0]))
        assert node.infer_once() and node.seams.counts["state_diverged"] == 1
        third = node.seams.previous
        due = due_actions(second, third.first_action_ns, third.dt, 16)
        assert np.max(np.abs(third.actions[:4] - due[:4])) > 0.05  # not the old plan's rows
        assert node._rtc_values()["rtc.chunks.state_diverged"] == 1
    finally:
        node.destroy_node()


def test_guided_mode_on_an_unknown_value_exits_naming_the_parameter(node_process, checkpoint):
    proc = node_process("policy_node", params={"checkpoint": str(checkpoint), "rtc_mode": "blend",
                                               "camera_names": ["top"], "camera_topics": ["/rtc_test/top"]})
    assert proc.wait(timeout=STARTUP_TIMEOUT) not in (None, 0), proc.output()
    assert "invalid parameter 'rtc_mode'" in proc.output()


def test_conditioned_mode_on_a_model_not_trained_for_it_exits_naming_the_parameter(node_process, checkpoint):
    proc = node_process("policy_node", params={"checkpoint": str(checkpoint), "rtc_mode": "conditioned",
                                               "camera_names": ["top"], "camera_topics": ["/rtc_test/top"]})
    assert proc.wait(timeout=STARTUP_TIMEOUT) not in (None, 0), proc.output()
    assert "invalid parameter 'rtc_mode'" in proc.output() and "rtc_max_delay" in proc.output()


class SeamWatcher:
    """Feeds policy_node static inputs and records its chunks (with arrival time) and the controller's commands."""

    def __init__(self, spinner) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        from hlrp_ros.msg import ActionChunk

        node = spinner.node
        self.spinner = spinner
        self.chunks: list = []
        self.commands: list = []
        image = camera_image(0)
        camera = node.create_publisher(Image, "/rtc_seam/top", qos_profile_sensor_data)
        joints = node.create_publisher(JointState, "/rtc_seam/joint_states", qos_profile_sensor_data)
        node.create_publisher(String, "/rtc_seam/instruction", latched_qos()).publish(String(data="pick up the cube"))

        def tick() -> None:
            image.header.stamp = node.get_clock().now().to_msg()
            camera.publish(image)
            joints.publish(joint_state(spinner.now_ns(), JOINTS, [0.1, -0.1]))

        node.create_timer(0.1, tick)
        node.create_subscription(ActionChunk, "/rtc_seam/action_chunk", self._on_chunk, reliable_qos())
        node.create_subscription(JointState, "/rtc_seam/joint_command", self._on_command, reliable_qos(500))

    def _on_chunk(self, msg) -> None:
        from hlrp_ros.chunk_codec import time_to_ns
        from hlrp_ros.tools.seam_metrics import ChunkRecord

        actions = np.asarray(msg.actions, dtype=float).reshape(-1, len(msg.joint_names))
        order = [list(msg.joint_names).index(j) for j in JOINTS]
        self.chunks.append(ChunkRecord(self.spinner.now_ns() * 1e-9, time_to_ns(msg.first_action_time) * 1e-9,
                                       float(msg.dt), actions[:, order]))

    def _on_command(self, msg) -> None:
        from hlrp_ros.chunk_codec import time_to_ns

        self.commands.append((time_to_ns(msg.header.stamp) * 1e-9, np.asarray(msg.position, dtype=float)))

    def departures(self) -> list[float]:
        """At every switch: how far the first command after the new chunk's arrival is from what the chunk it
        replaced had due at that instant (largest joint)."""
        out = []
        for old, new in zip(self.chunks, self.chunks[1:], strict=False):
            t_switch = max(new.arrival, new.start)
            after = [(t, q) for t, q in self.commands if t >= t_switch]
            if not after:
                continue
            t, q = after[0]
            due = old.sample(t)
            if due is not None:
                out.append(float(np.max(np.abs(q - due))))
        return out


def seam_departures(node_process, checkpoint, rtc_mode: str, seams: int = 6) -> list[float]:
    import rclpy
    from rclpy.context import Context

    policy = {"checkpoint": str(checkpoint), "camera_topics": ["/rtc_seam/top"], "camera_names": ["top"],
              "joint_states_topic": "/rtc_seam/joint_states", "instruction_topic": "/rtc_seam/instruction",
              "output_topic": "/rtc_seam/action_chunk", "inference_period": 0.5, "action_period": 0.1,
              "max_observation_age": 2.0, "torch_threads": 1, "seed": 0, "rtc_mode": rtc_mode,
              "extra_inference_delay": 0.3, "rtc_delay_warmup": 1,
              "rtc_max_state_divergence": 0.0}  # static joint states: nothing executes these random plans
    controller = {"joint_names": JOINTS, "control_rate": 50.0, "input_topic": "/rtc_seam/action_chunk",
                  "output_topic": "/rtc_seam/joint_command", "joint_states_topic": "", "require_joint_state": False,
                  "interpolation": "linear", "seam_threshold": 0.0, "max_chunk_age": 3.0, "watchdog_timeout": 3.0}
    context = Context()
    rclpy.init(context=context)
    try:
        with SpinningNode(context, f"rtc_seam_{rtc_mode}") as spinner:
            watcher = SeamWatcher(spinner)
            procs = [node_process("controller_node", params=controller), node_process("policy_node", params=policy)]
            try:
                # warm-up chunks, then `seams` measured switches (events, not sleeps, bound the wait)
                assert wait_for(lambda: len(watcher.departures()) >= seams + 2, STARTUP_TIMEOUT + 60), \
                    f"{len(watcher.chunks)} chunks, {len(watcher.commands)} commands"
            finally:  # the next mode's nodes must not hear these
                for proc in reversed(procs):
                    proc.stop()
            return watcher.departures()[2:]
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.slow
def test_with_an_injected_delay_guided_and_conditioned_seams_stay_small_where_switching_jumps(
        node_process, checkpoint, conditioned_checkpoint):
    # 0.3 s of extra inference delay: ~3 actions of every new chunk are already due when it lands.
    switching = seam_departures(node_process, checkpoint, "off")
    guided = seam_departures(node_process, checkpoint, "guided")
    conditioned = seam_departures(node_process, conditioned_checkpoint, "conditioned")
    bound = 0.25 * float(np.median(switching))
    assert np.median(switching) > 0.3, switching  # random weights: plain switching jumps
    assert np.median(guided) < bound, (guided, switching)
    assert np.median(conditioned) < bound, (conditioned, switching)
