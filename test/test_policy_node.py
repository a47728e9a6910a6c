"""policy_node over real rclpy: parameters, the chunk it publishes, instruction updates, tick skipping.

The end-to-end tests run the node as its own process (timing matters there) with a tiny real
HLRP checkpoint saved into tmp_path; the tick-skipping test runs it in-process to look at its
counters. Timeouts are generous (2 shared cores); assertions are on content.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from ros_testing import (
    INSTRUCTION_PUBLISHER,
    STARTUP_TIMEOUT,
    SpinningNode,
    camera_image,
    compressed_image,
    joint_state,
    latched_qos,
    make_tiny_checkpoint,
    reliable_qos,
    wait_for,
)

from hlrp_ros.graph import python_process, stop_process_group

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]
TOPICS = {"top": "/hlrp_test/top/image_raw", "wrist": "/hlrp_test/wrist/image_raw/compressed"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), camera_names=["top", "wrist"])


def policy_params(ckpt, **overrides) -> dict:
    params = {
        "checkpoint": str(ckpt), "camera_topics": list(TOPICS.values()), "camera_names": list(TOPICS),
        "joint_states_topic": "/hlrp_test/joint_states", "instruction_topic": "/hlrp_test/instruction",
        "output_topic": "/hlrp_test/action_chunk", "inference_period": 0.4, "action_period": 0.05,
        "max_observation_age": 2.0, "torch_threads": 1, "seed": 0, "diagnostics_period": 0.5,
    }
    params.update(overrides)
    return params


def start_sensor_stream(spinner: SpinningNode, joint_names=("elbow", "extra", "shoulder")) -> None:
    """Publish both cameras and joint states (re-ordered, with an extra joint) at 10 Hz from the test node."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState

    node = spinner.node
    pubs = (node.create_publisher(Image, TOPICS["top"], qos_profile_sensor_data),
            node.create_publisher(CompressedImage, TOPICS["wrist"], qos_profile_sensor_data),
            node.create_publisher(JointState, "/hlrp_test/joint_states", qos_profile_sensor_data))
    top, wrist = camera_image(0, encoding="bgr8"), compressed_image(0)

    def tick() -> None:
        now = spinner.now_ns()
        for msg in (top, wrist):
            msg.header.stamp = node.get_clock().now().to_msg()
        pubs[0].publish(top)
        pubs[1].publish(wrist)
        pubs[2].publish(joint_state(now, joint_names, [0.1 * i for i in range(len(joint_names))]))

    node.create_timer(0.1, tick)


@pytest.mark.parametrize("params,name", [
    ({"inference_period": -1.0}, "inference_period"),
    ({"checkpoint": "/nonexistent/ckpt"}, "checkpoint"),
    ({"camera_names": ["top"]}, "camera_names"),
    ({"dtype": "float16"}, "dtype"),  # no family runs float16: rejected up front, naming the parameter
    ({"device": "tpu"}, "device"),
    ({"cuda_graphs": True}, "cuda_graphs"),  # on device cpu
])
def test_invalid_parameter_exits_nonzero_naming_it(node_process, checkpoint, params, name):
    proc = node_process("policy_node", params=policy_params(checkpoint, **params))
    code = proc.wait(timeout=STARTUP_TIMEOUT)
    assert code not in (None, 0), proc.output()
    assert f"invalid parameter '{name}'" in proc.output()


def test_chunks_from_synthetic_inputs_and_a_new_instruction_from_another_process(
        node_process, checkpoint, rclpy_context, ros_env):
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    from hlrp_ros.chunk_codec import decode_chunk, time_to_ns
    from hlrp_ros.msg import ActionChunk

    with SpinningNode(rclpy_context) as spinner:
        # Latched before the node exists: transient local must deliver it to the late joiner.
        instruction_pub = spinner.node.create_publisher(String, "/hlrp_test/instruction", latched_qos())
        instruction_pub.publish(String(data="pick up the red cube"))
        chunks = spinner.collect(ActionChunk, "/hlrp_test/action_chunk", reliable_qos())
        diagnostics = spinner.collect(DiagnosticArray, "/diagnostics")
        start_sensor_stream(spinner)
        proc = node_process("policy_node", params=policy_params(checkpoint))
        assert wait_for(lambda: len(chunks) >= 2 or proc.returncode() is not None, STARTUP_TIMEOUT), proc.output()
        assert len(chunks) >= 2, proc.output()
        # start-up says, in plain words, what was loaded from where and how long it took
        assert f"loading the policy from {checkpoint} on cpu (float32)" in proc.output()
        assert re.search(r"policy loaded in \d+\.\d s: HLRPPolicy, [\d.]+ M parameters", proc.output()), proc.output()

        _, first = chunks[0]
        chunk = decode_chunk(first, JOINTS)
        assert list(first.joint_names) == JOINTS
        assert (first.horizon, first.action_dim) == (6, 2) and chunk.actions.shape == (6, 2)
        assert first.dt == pytest.approx(0.05)
        assert first.instruction == "pick up the red cube"
        assert first.inference_latency > 0
        # actions[0] is due when the inputs were gathered: after the observation, before publication.
        stamp, due = time_to_ns(first.header.stamp), time_to_ns(first.first_action_time)
        assert 0 <= due - stamp <= 2.0e9 and due <= spinner.now_ns()
        ids = [m.chunk_id for _, m in chunks]
        assert ids == sorted(set(ids)) and ids[0] >= 1

        publisher = python_process(["-c", INSTRUCTION_PUBLISHER, "/hlrp_test/instruction", "place it in the bowl",
                                    "60"], env=ros_env)
        try:
            switched = wait_for(lambda: next((i for i, (_, m) in enumerate(list(chunks))
                                              if m.instruction == "place it in the bowl"), None), STARTUP_TIMEOUT)
            assert switched is not None, proc.output()
            assert wait_for(lambda: len(chunks) >= switched + 2, STARTUP_TIMEOUT)
            assert all(m.instruction == "place it in the bowl" for _, m in list(chunks)[switched:])
        finally:
            stop_process_group(publisher)

        def policy_status():
            # The latest report: the first ones can predate the first chunk (the diagnostics timer
            # starts with the node, before the model has run).
            for _, array in reversed(list(diagnostics)):
                for status in array.status:
                    if status.name.startswith("policy_node"):
                        return {kv.key: kv.value for kv in status.values}
            return None

        values = wait_for(policy_status, 30.0)
        assert values is not None, "no diagnostics from policy_node"
        assert int(values["chunks_published"]) >= 1 and "skipped_ticks" in values
        assert float(values["inference_latency_max"]) > 0
        # each camera's received rate, newest frame age and transport losses (sent at 10 Hz)
        assert float(values["camera.top.rate_hz"]) > 0 and 0 <= float(values["camera.wrist.age_s"]) < 2.0
        assert values["camera.top.lost"] == "0"
    assert proc.returncode() is None, proc.output()
    assert proc.stop() == 0, proc.output()


def test_a_plain_topic_pub_instruction_is_heard_and_an_incompatible_publisher_is_named(
        node_process, checkpoint, rclpy_context, ros_env):
    from diagnostic_msgs.msg import DiagnosticArray

    from hlrp_ros.msg import ActionChunk

    topic = "/hlrp_test/instruction"
    with SpinningNode(rclpy_context) as spinner:
        chunks = spinner.collect(ActionChunk, "/hlrp_test/action_chunk", reliable_qos())
        diagnostics = spinner.collect(DiagnosticArray, "/diagnostics")
        start_sensor_stream(spinner)
        proc = node_process("policy_node", params=policy_params(checkpoint))
        # what `ros2 topic pub --once` does: reliable, volatile, published once a subscriber matched
        plain = python_process(["-c", INSTRUCTION_PUBLISHER, topic, "go to the blue target", "60", "plain"],
                               env=ros_env)
        try:
            assert wait_for(lambda: any(m.instruction == "go to the blue target" for _, m in list(chunks)),
                            STARTUP_TIMEOUT), proc.output()
        finally:
            stop_process_group(plain)
        best_effort = python_process(["-c", INSTRUCTION_PUBLISHER, topic, "never heard", "60", "best_effort"],
                                     env=ros_env)
        try:
            expected = (f"{topic}: a publisher's QoS is incompatible with this node's subscription (reliable): "
                        f"its reliability policy differs, so none of its messages arrive. Publish it reliable")
            assert wait_for(lambda: expected in proc.output(), STARTUP_TIMEOUT), proc.output()

            def mismatch_entry():
                for _, array in reversed(list(diagnostics)):
                    for status in array.status:
                        values = {kv.key: kv.value for kv in status.values}
                        if status.name.startswith("policy_node") and f"incompatible_qos.{topic}" in values:
                            return values[f"incompatible_qos.{topic}"]
                return None

            assert wait_for(mismatch_entry, 30.0) == "RELIABILITY"
        finally:
            stop_process_group(best_effort)
        assert proc.output().count(expected) == 1, proc.output()
        assert "offering incompatible QoS" not in proc.output()  # rclpy's generic line is replaced, not added to
        assert not any(m.instruction == "never heard" for _, m in list(chunks))
    assert proc.stop() == 0, proc.output()


def test_slow_inference_skips_ticks_while_subscriptions_keep_flowing(checkpoint, rclpy_context):
    import threading

    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from hlrp_ros.nodes.policy_node import PolicyNode

    params = policy_params(checkpoint, inference_period=0.02, num_steps=8)
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = PolicyNode("policy_node_inprocess", context=rclpy_context, parameter_overrides=overrides)
    executor = MultiThreadedExecutor(num_threads=3, context=rclpy_context)
    executor.add_node(node)
    received_during_inference = []
    original = node.policy.sample_chunk

    def slow_sample(*args, **kwargs):  # the real model, made slower than the 20 ms period
        before = node.latest.get("/hlrp_test/joint_states")
        time.sleep(0.15)
        result = original(*args, **kwargs)
        received_during_inference.append(node.latest.get("/hlrp_test/joint_states") is not before)
        return result

    node.policy.sample_chunk = slow_sample
    with SpinningNode(rclpy_context, "sensor_source") as spinner:
        instruction_pub = spinner.node.create_publisher(__import__("std_msgs.msg").msg.String,
                                                        "/hlrp_test/instruction", latched_qos())
        instruction_pub.publish(__import__("std_msgs.msg").msg.String(data="pick"))
        start_sensor_stream(spinner)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        try:
            assert wait_for(lambda: node.published >= 5, STARTUP_TIMEOUT)
        finally:
            executor.shutdown()
            thread.join(timeout=10)
    assert node.gate.skipped >= node.published, (node.gate.skipped, node.published)
    assert any(received_during_inference), "joint states did not arrive while inference ran"
    node.destroy_node()


def test_joint_states_are_reordered_by_name(checkpoint, rclpy_context):
    from rclpy.parameter import Parameter

    from hlrp_ros.nodes.policy_node import PolicyNode

    overrides = [Parameter(k, value=v) for k, v in policy_params(checkpoint, inference_period=1000.0).items()]
    node = PolicyNode("policy_node_order", context=rclpy_context, parameter_overrides=overrides)
    try:
        now = node.get_clock().now().nanoseconds
        node.latest["/hlrp_test/joint_states"] = (joint_state(now, ["x", "elbow", "shoulder"], [9.0, 2.0, 1.0]), now)
        state, _ = node._state(node.latest, now)
        np.testing.assert_array_equal(state, [1.0, 2.0])
    finally:
        node.destroy_node()


def test_instruction_is_retokenised_only_when_it_changes(checkpoint, rclpy_context):
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from hlrp_ros.nodes.policy_node import PolicyNode

    topics = policy_params(checkpoint)
    overrides = [Parameter(k, value=v) for k, v in policy_params(checkpoint, inference_period=1000.0).items()]
    node = PolicyNode("policy_node_tokens", context=rclpy_context, parameter_overrides=overrides)
    try:
        def feed(text: str) -> None:
            now = node.get_clock().now().nanoseconds
            node.latest[TOPICS["top"]] = (camera_image(now), now)
            node.latest[TOPICS["wrist"]] = (compressed_image(now), now)
            node.latest[topics["joint_states_topic"]] = (joint_state(now, JOINTS, [0.0, 0.0]), now)
            node.latest[topics["instruction_topic"]] = (String(data=text), now)

        feed("pick up the cube")
        assert node.infer_once() and node.infer_once() and node.infer_once()
        assert node.policy.processor.num_tokenizations == 1
        feed("place the cube")
        assert node.infer_once()
        assert node.policy.processor.num_tokenizations == 2
    finally:
        node.destroy_node()
