"""Meta-World's full 39-D observation as a policy's state: its names, the dataset option, training, the wiring.

A policy whose state is the full observation (hand, gripper, objects, previous frame, goal) and whose
action is the 4-D absolute command: the world names the observation (``OBS_NAMES``) and publishes it as
a JointState on ``/metaworld_sim/full_state``; ``metaworld_dataset --state full`` records it with those
names; training takes the state's size from the dataset and keeps its names in ``training.json``; the
evaluation hands them to policy_node as ``state_joint_names`` with that topic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

# Imported first: it chooses the offscreen GL backend (EGL) before anything loads mujoco.
metaworld_env = pytest.importorskip("hlrp_ros.sim.metaworld_env")
pytest.importorskip("metaworld", reason="metaworld is in requirements.txt; run `make setup`")

from hlrp_ros.sim.metaworld_env import (  # noqa: E402
    OBS_NAMES,
    STATE_NAMES,
    MetaWorldEnv,
    ScriptedExpert,
    gl_problem,
)

needs_gl = pytest.mark.skipif(gl_problem() is not None, reason=str(gl_problem()))


@pytest.fixture(scope="module")
def world():
    env = MetaWorldEnv()
    yield env
    env.close()


def test_the_observation_has_39_distinct_names_whose_first_four_are_the_command_names():
    assert len(OBS_NAMES) == 39 and len(set(OBS_NAMES)) == 39
    assert OBS_NAMES[:4] == STATE_NAMES
    assert OBS_NAMES[4:11] == ("obj1_x", "obj1_y", "obj1_z", "obj1_q0", "obj1_q1", "obj1_q2", "obj1_q3")
    assert OBS_NAMES[18:36] == tuple("prev_" + n for n in OBS_NAMES[:18])
    assert OBS_NAMES[36:] == ("goal_x", "goal_y", "goal_z")


def test_the_names_say_what_each_value_is(world):
    obs = world.reset("push-v3", 11)
    named = dict(zip(OBS_NAMES, world.observation()))
    env = world.env
    assert world.observation().shape == (39,) and np.array_equal(world.observation(), obs)
    np.testing.assert_allclose([named["ee_x"], named["ee_y"], named["ee_z"]], env.data.body("hand").xpos, atol=1e-9)
    np.testing.assert_allclose([named["obj1_x"], named["obj1_y"], named["obj1_z"]], env._get_pos_objects(), atol=1e-9)
    np.testing.assert_allclose([named["goal_x"], named["goal_y"], named["goal_z"]], env._target_pos, atol=1e-9)
    # The previous frame: after a step the prev_ values are the step before's current values.
    before = world.observation()
    world.step_target(ScriptedExpert("push-v3").command(world))
    after = dict(zip(OBS_NAMES, world.observation()))
    np.testing.assert_allclose([after["prev_" + n] for n in OBS_NAMES[:18]], before[:18], atol=1e-9)
    # The two state kinds.
    assert np.array_equal(world.state_of("ee"), world.state())
    assert np.array_equal(world.state_of("full"), world.observation())
    with pytest.raises(ValueError, match="state kind"):
        world.state_of("joints")


@pytest.fixture(scope="module")
def full_dataset(tmp_path_factory):
    """One reach-v3 demonstration recorded with ``--state full``."""
    from hlrp_ros.tools.metaworld_dataset import main

    out = tmp_path_factory.mktemp("mw") / "full"
    assert main(["--out", str(out), "--episodes", "1", "--tasks", "reach-v3", "--state", "full",
                 "--image-size", "32"]) == 0
    return out


@needs_gl
def test_the_dataset_option_records_the_observation_as_the_state_under_its_names(full_dataset):
    from hlrp_ros.datasets.reader import DatasetReader
    from hlrp_ros.datasets.training_arrays import training_arrays
    from hlrp_ros.tools.metaworld_dataset import seed_for

    reader = DatasetReader(full_dataset)
    assert reader.joint_names == list(OBS_NAMES) and reader.action_names == list(STATE_NAMES)
    episode = reader.episode(0)
    assert episode.states.shape == (len(episode.states), 39) and episode.actions.shape[1] == 4
    # The first frame's state is the observation of the episode's seed at its reset.
    env = MetaWorldEnv()
    try:
        obs = env.reset("reach-v3", seed_for(0, 0, 0))
    finally:
        env.close()
    np.testing.assert_allclose(episode.states[0], obs, atol=1e-6)
    data = training_arrays(full_dataset, horizon=4)
    assert list(data["joint_names"]) == list(OBS_NAMES) and list(data["action_names"]) == list(STATE_NAMES)
    assert data["states"].shape[1] == 39 and data["actions"].shape[1:] == (4, 4)


@pytest.fixture(scope="module")
def full_checkpoint(full_dataset, tmp_path_factory):
    """Two training steps on the full-state dataset (a 32 px model, width 96)."""
    from hlrp_ros.tools.train import main

    out = tmp_path_factory.mktemp("mw_run")
    assert main(["--dataset", str(full_dataset), "--out", str(out), "--steps", "2", "--save-every", "2",
                 "--horizon", "16", "--n-action-steps", "16", "--image-size", "32", "--vocabulary", "dataset",
                 "--batch-size", "4", "--width", "96", "--state-std-floor", "0.01", "--threads", "1"]) == 0
    return out / "final"


@needs_gl
def test_a_39_name_state_trains_and_the_checkpoint_keeps_the_state_names(full_checkpoint):
    from hlrp_ros.policies.factory import load_policy

    config = json.loads((full_checkpoint / "config.json").read_text())
    assert (config["state_dim"], config["action_dim"]) == (39, 4)
    assert config["joint_names"] == list(STATE_NAMES)
    assert config["vlm_config"]["text_config"]["hidden_size"] == 96
    info = json.loads((full_checkpoint / "training.json").read_text())
    assert info["state_names"] == list(OBS_NAMES) and info["action_names"] == list(STATE_NAMES)
    # Constant dimensions (reach-v3 has no second object) get the floor, not a zero std.
    policy = load_policy(full_checkpoint, device="cpu", dtype="float32")
    state = {k: v for k, v in policy.state_dict().items() if "state" in k and k.endswith("std")}
    assert state and all(float(v.min()) >= 0.01 - 1e-7 for v in state.values()), state


@needs_gl
def test_the_evaluation_wires_the_full_state_and_leaves_an_end_effector_policy_alone(full_checkpoint, tmp_path):
    import shutil

    from hlrp_ros.tools.closed_loop import default_checkpoint
    from hlrp_ros.tools.metaworld_eval import FULL_STATE_TOPIC, policy_state_params

    wired = {"joint_states_topic": FULL_STATE_TOPIC, "state_joint_names": list(OBS_NAMES)}
    assert policy_state_params(full_checkpoint) == wired
    assert FULL_STATE_TOPIC == "/metaworld_sim/full_state"
    # The shipped policy reads the full observation too.
    assert policy_state_params(default_checkpoint("metaworld")) == wired
    # A policy whose state is its action's joints (the end effector) reads /joint_states as it is.
    end_effector = tmp_path / "end_effector"
    shutil.copytree(full_checkpoint, end_effector)
    info = json.loads((end_effector / "training.json").read_text())
    (end_effector / "training.json").write_text(json.dumps({**info, "state_names": list(STATE_NAMES)}))
    assert policy_state_params(end_effector) == {}
    (end_effector / "training.json").unlink()
    assert policy_state_params(end_effector) == {}


@needs_gl
def test_a_dataset_continued_with_the_other_state_is_refused(full_dataset):
    from hlrp_ros.tools.metaworld_dataset import main

    with pytest.raises(Exception, match="records fps/joints"):
        main(["--out", str(full_dataset), "--episodes", "2", "--tasks", "reach-v3", "--state", "ee",
              "--image-size", "32"])


@pytest.mark.ros
@needs_gl
def test_the_world_publishes_the_observation_as_named_positions_and_a_full_state_policy_answers(
        node_process, rclpy_context, full_checkpoint):
    from ros_testing import STARTUP_TIMEOUT, SpinningNode, latched_qos, reliable_qos, wait_for
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from hlrp_ros.msg import ActionChunk
    from hlrp_ros.tools.closed_loop import config_file
    from hlrp_ros.tools.metaworld_eval import policy_state_params

    files = [config_file("hlrp.yaml"), config_file("metaworld.yaml")]
    sim = node_process("metaworld_sim", params_files=files, params={"task": "pick-place-v3", "seed": 5,
                                                                    "image_size": 32})
    policy = node_process("policy_node", params_files=files,
                          params={"checkpoint": str(full_checkpoint), **policy_state_params(full_checkpoint)})
    with SpinningNode(rclpy_context, "metaworld_full_state_test") as spinning:
        full = spinning.collect(JointState, "/metaworld_sim/full_state")
        joints = spinning.collect(JointState, "/joint_states")
        observations = spinning.collect(Float64MultiArray, "/metaworld_sim/observation")
        chunks = spinning.collect(ActionChunk, "/action_chunk", reliable_qos(5))
        spinning.node.create_publisher(String, "/instruction", latched_qos()).publish(
            String(data="pick and place a puck to a goal"))
        assert wait_for(lambda: full and joints and observations, STARTUP_TIMEOUT), sim.output()[-3000:]
        _, msg = full[-1]
        assert list(msg.name) == list(OBS_NAMES) and len(msg.position) == 39
        # The same values as the observation array; the same stamps as /joint_states, whose names stay the four.
        assert any(np.allclose(msg.position, o.data) for _, o in observations[-20:])
        assert {(j.header.stamp.sec, j.header.stamp.nanosec) for _, j in joints} & \
            {(f.header.stamp.sec, f.header.stamp.nanosec) for _, f in full}
        assert list(joints[-1][1].name) == list(STATE_NAMES)
        # policy_node reads its 39 values by name from that topic and commands the four command names.
        assert wait_for(lambda: chunks, STARTUP_TIMEOUT), policy.output()[-3000:]
        chunk = chunks[-1][1]
        assert list(chunk.joint_names) == list(STATE_NAMES) and chunk.action_dim == 4
        assert "joint_missing" not in policy.output() and "lacks configured joint" not in policy.output()
