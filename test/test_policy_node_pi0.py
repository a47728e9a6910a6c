"""policy_node serves PI0 and PI0.5 checkpoints over real ROS 2 (the node knows only the policy interface).

Tiny random PI0 / PI0.5 checkpoints (two cameras, two joints) are saved into tmp_path; the node runs as its own
process, the test publishes both cameras and the joint states and checks the chunks it publishes.
"""

from __future__ import annotations

import pytest
import torch
from ros_testing import (
    STARTUP_TIMEOUT,
    SpinningNode,
    camera_image,
    compressed_image,
    joint_state,
    latched_qos,
    reliable_qos,
    wait_for,
)

from hlrp_ros.policies.pi0 import PI0Policy, make_config

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]
TOPICS = {"top": "/hlrp_pi0_test/top/image_raw", "wrist": "/hlrp_pi0_test/wrist/image_raw/compressed"}


@pytest.mark.parametrize("preset", ["pi0-tiny", "pi05-tiny"])
def test_policy_node_publishes_chunks_of_a_pi0_checkpoint(node_process, rclpy_context, tmp_path, preset):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import String

    from hlrp_ros.chunk_codec import decode_chunk
    from hlrp_ros.msg import ActionChunk

    torch.manual_seed(0)
    policy = PI0Policy(make_config(preset, camera_names=list(TOPICS), joint_names=JOINTS, n_action_steps=6))
    ckpt = policy.save_pretrained(tmp_path / preset)
    params = {
        "checkpoint": str(ckpt), "camera_topics": list(TOPICS.values()), "camera_names": list(TOPICS),
        "joint_states_topic": "/hlrp_pi0_test/joint_states", "instruction_topic": "/hlrp_pi0_test/instruction",
        "output_topic": "/hlrp_pi0_test/action_chunk", "inference_period": 0.4, "action_period": 0.05,
        "max_observation_age": 2.0, "torch_threads": 1, "seed": 0,
    }
    with SpinningNode(rclpy_context) as spinner:
        node = spinner.node
        instruction = node.create_publisher(String, "/hlrp_pi0_test/instruction", latched_qos())
        instruction.publish(String(data="pick up the red cube"))
        chunks = spinner.collect(ActionChunk, "/hlrp_pi0_test/action_chunk", reliable_qos())
        pubs = (node.create_publisher(Image, TOPICS["top"], qos_profile_sensor_data),
                node.create_publisher(CompressedImage, TOPICS["wrist"], qos_profile_sensor_data),
                node.create_publisher(JointState, "/hlrp_pi0_test/joint_states", qos_profile_sensor_data))
        top, wrist = camera_image(0, encoding="bgr8"), compressed_image(0)

        def tick() -> None:
            for msg in (top, wrist):
                msg.header.stamp = node.get_clock().now().to_msg()
            pubs[0].publish(top)
            pubs[1].publish(wrist)
            # Re-ordered, with an extra joint: the node picks the checkpoint's joints by name.
            pubs[2].publish(joint_state(spinner.now_ns(), ["elbow", "extra", "shoulder"], [0.2, 9.0, -0.1]))

        node.create_timer(0.1, tick)
        proc = node_process("policy_node", params=params)
        assert wait_for(lambda: len(chunks) >= 2 or proc.returncode() is not None, STARTUP_TIMEOUT), proc.output()
        assert len(chunks) >= 2, proc.output()
        for _, msg in list(chunks)[:2]:
            chunk = decode_chunk(msg, JOINTS)
            assert list(msg.joint_names) == JOINTS
            assert (msg.horizon, msg.action_dim) == (6, 2) and chunk.actions.shape == (6, 2)
            assert msg.instruction == "pick up the red cube"
            assert torch.isfinite(torch.as_tensor(chunk.actions)).all()
