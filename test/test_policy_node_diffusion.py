"""policy_node serves diffusion checkpoints that condition on an observation history, over real ROS 2.

A tiny random language-conditioned diffusion checkpoint (``n_obs_steps = 2``, observations 0.1 s apart) is
saved into tmp_path; the node runs as its own process, with ``history_pad_start`` off (no chunk before the
inputs cover the whole history). The test publishes the cameras with stamps it
chooses, so a gap in the history is a property of the stamps, not of the machine's timing: a camera at
2 Hz can never give an observation 0.1 s before the newest one (named rejection, no chunk), a camera at
10 Hz can. A LeRobot 0.6.1 diffusion checkpoint (the parity fixture LeRobot itself wrote: its state has
three values, its action two) is served with ``state_joint_names``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import unpack_lerobot_diffusion
from ros_testing import (
    STARTUP_TIMEOUT,
    SpinningNode,
    camera_image,
    joint_state,
    latched_qos,
    reliable_qos,
    wait_for,
)

from hlrp_ros.policies.diffusion import DiffusionConfig, DiffusionPolicy
from hlrp_ros.policies.hlrp.processor_hlrp import build_tiny_tokenizer

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]
CAMERA = "/hlrp_diffusion_test/top/image_raw"
TINY = dict(state_dim=2, action_dim=2, joint_names=JOINTS, camera_names=["top"], image_size=(64, 64),
            crop_shape=(60, 60), down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16,
            spatial_softmax_num_keypoints=4, horizon=8, n_action_steps=4, n_obs_steps=2, observation_period=0.1,
            noise_scheduler_type="DDIM", num_train_timesteps=50, num_inference_steps=3,
            language_conditioned=True, text_vocab_size=128, text_hidden_size=32, text_num_layers=1,
            text_num_heads=4, text_feature_dim=16, tokenizer_max_length=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionConfig(**TINY), tokenizer=build_tiny_tokenizer(vocab_size=128))
    policy.set_normalization_stats(state={"min": [-1, -1], "max": [1, 1]}, action={"min": [-1, -1], "max": [1, 1]})
    return policy.save_pretrained(tmp_path_factory.mktemp("diffusion") / "ckpt")


def latest_policy_status(diagnostics) -> dict | None:
    for _, array in reversed(list(diagnostics)):
        for status in array.status:
            if status.name.startswith("policy_node"):
                return {kv.key: kv.value for kv in status.values}
    return None


def test_a_history_policy_gets_its_observations_period_apart_and_a_gap_blocks_the_chunk(
        node_process, rclpy_context, checkpoint):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from hlrp_ros.chunk_codec import decode_chunk
    from hlrp_ros.msg import ActionChunk

    params = {
        "checkpoint": str(checkpoint), "camera_topics": [CAMERA], "camera_names": ["top"],
        "joint_states_topic": "/hlrp_diffusion_test/joint_states",
        "instruction_topic": "/hlrp_diffusion_test/instruction", "output_topic": "/hlrp_diffusion_test/action_chunk",
        "inference_period": 0.3, "action_period": 0.1, "max_observation_age": 3.0, "torch_threads": 1, "seed": 0,
        "diagnostics_period": 0.3, "history_pad_start": False,
    }
    with SpinningNode(rclpy_context) as spinner:
        node = spinner.node
        instruction = node.create_publisher(String, "/hlrp_diffusion_test/instruction", latched_qos())
        instruction.publish(String(data="push the red cube"))
        chunks = spinner.collect(ActionChunk, "/hlrp_diffusion_test/action_chunk", reliable_qos())
        diagnostics = spinner.collect(DiagnosticArray, "/diagnostics")
        camera = node.create_publisher(Image, CAMERA, qos_profile_sensor_data)
        joints = node.create_publisher(JointState, "/hlrp_diffusion_test/joint_states", qos_profile_sensor_data)
        camera_every = {"ticks": 5}  # 2 Hz: consecutive frames 0.5 s apart, far from 0.1 s +- 0.05 s
        ticks = {"n": 0}

        def tick() -> None:
            now = spinner.now_ns()
            if ticks["n"] % camera_every["ticks"] == 0:
                camera.publish(camera_image(now, seed=ticks["n"]))
            joints.publish(joint_state(now, JOINTS, [0.1, -0.2]))
            ticks["n"] += 1

        node.create_timer(0.1, tick)
        proc = node_process("policy_node", params=params)

        def gap_reported():
            values = latest_policy_status(diagnostics)
            return values if values and int(values.get("rejected.history_gap", 0)) >= 2 else None

        values = wait_for(lambda: gap_reported() or proc.returncode() is not None, STARTUP_TIMEOUT)
        assert gap_reported(), proc.output()
        assert "conditions on 2 observations 0.1 s apart" in proc.output()
        assert values["history.observations"] == "2" and float(values["history.period_s"]) == pytest.approx(0.1)
        assert "no observation within 0.05 s of 0.1 s before the newest" in proc.output()
        assert len(chunks) == 0, "a chunk was published without the observation history the policy needs"

        camera_every["ticks"] = 1  # 10 Hz: an observation 0.1 s before the newest exists from now on
        assert wait_for(lambda: len(chunks) >= 2 or proc.returncode() is not None, STARTUP_TIMEOUT), proc.output()
        assert len(chunks) >= 2, proc.output()
        for _, msg in list(chunks)[:2]:
            chunk = decode_chunk(msg, JOINTS)
            assert (msg.horizon, msg.action_dim) == (4, 2) and np.isfinite(chunk.actions).all()
            assert msg.instruction == "push the red cube"
    assert proc.returncode() is None, proc.output()


def lerobot_params(checkpoint, **changes) -> dict:
    return {"checkpoint": str(checkpoint), "camera_topics": [CAMERA], "camera_names": ["top"],
            "joint_names": JOINTS, "state_joint_names": [*JOINTS, "gripper"],
            "joint_states_topic": "/hlrp_diffusion_test/joint_states",
            "instruction_topic": "/hlrp_diffusion_test/instruction",
            "output_topic": "/hlrp_diffusion_test/action_chunk", "inference_period": 0.5, "action_period": 0.1,
            "max_observation_age": 3.0, "torch_threads": 1, "seed": 0, **changes}


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_a_lerobot_diffusion_checkpoint_whose_state_is_not_its_action_is_served(node_process, rclpy_context,
                                                                                tmp_path, compile):
    """Eager, and compiled (inductor, frozen weights): the warm-up chunk at start gets a blank history."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from hlrp_ros.chunk_codec import decode_chunk
    from hlrp_ros.msg import ActionChunk

    checkpoint = unpack_lerobot_diffusion("ddpm", tmp_path)  # 1 camera 32x32, state 3, action 2, 2 observations
    with SpinningNode(rclpy_context) as spinner:
        node = spinner.node
        node.create_publisher(String, "/hlrp_diffusion_test/instruction", latched_qos()).publish(
            String(data="push the T into place"))
        chunks = spinner.collect(ActionChunk, "/hlrp_diffusion_test/action_chunk", reliable_qos())
        camera = node.create_publisher(Image, CAMERA, qos_profile_sensor_data)
        joints = node.create_publisher(JointState, "/hlrp_diffusion_test/joint_states", qos_profile_sensor_data)

        def tick() -> None:
            now = spinner.now_ns()
            camera.publish(camera_image(now, size=(32, 32)))
            # the gripper is measured (part of the state) but not commanded; the extra joint is ignored
            joints.publish(joint_state(now, ["gripper", "elbow", "extra", "shoulder"], [0.02, 0.3, 9.0, -0.1]))

        node.create_timer(0.1, tick)
        proc = node_process("policy_node", params=lerobot_params(checkpoint, compile=compile))
        # compiling the ResNet trunk and the UNet takes tens of seconds more on a loaded 2-core machine
        timeout = STARTUP_TIMEOUT * (4 if compile else 1)
        assert wait_for(lambda: len(chunks) >= 2 or proc.returncode() is not None, timeout), proc.output()
        assert len(chunks) >= 2, proc.output()
        assert ("chunk compiled in" in proc.output()) == compile, proc.output()
        _, msg = chunks[0]
        assert list(msg.joint_names) == JOINTS and (msg.horizon, msg.action_dim) == (8, 2)
        assert np.isfinite(decode_chunk(msg, JOINTS).actions).all()
    assert proc.returncode() is None, proc.output()


def test_a_state_that_is_not_the_action_needs_its_joints_named(node_process, tmp_path):
    checkpoint = unpack_lerobot_diffusion("ddpm", tmp_path)
    proc = node_process("policy_node", params=lerobot_params(checkpoint, state_joint_names=[]))
    assert proc.wait(timeout=STARTUP_TIMEOUT) not in (None, 0), proc.output()
    assert "invalid parameter 'joint_names'" in proc.output()
    assert "2 names, but the model has state_dim 3" in proc.output()
    assert "set state_joint_names to the joints that form it" in proc.output()
