"""LeRobot SmolVLA checkpoints served by the HLRP model reproduce LeRobot's actions (issue 6).

The fixtures under ``test/fixtures/lerobot_smolvla`` were produced by LeRobot 0.4.4 itself
(``scripts/make_lerobot_fixtures.py``, run in a separate venv): a tiny SmolVLA checkpoint saved the LeRobot
way, the local VLM config/tokenizer it was built from, observation batches (uint8 images of sizes other than
the model's, states, instructions with and without a trailing newline, one longer than the tokenizer limit),
the exact noise, and the un-normalised chunks of LeRobot's preprocessor -> ``predict_action_chunk`` ->
postprocessor for several numbers of denoising steps. LeRobot is not needed to run these tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.policies.lerobot_smolvla import LeRobotCheckpointError, load_lerobot_smolvla

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot_smolvla"
CKPT = FIXTURES / "checkpoint"
VLM = FIXTURES / "vlm"
META = json.loads((FIXTURES / "cases.json").read_text())
TOL = 1e-4


@pytest.fixture(scope="module")
def policy():
    return load_lerobot_smolvla(CKPT, tokenizer_dir=VLM)


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "cases.safetensors"))


def observation(cases: dict[str, torch.Tensor], case: int, row: int, **changes) -> Observation:
    meta = META["cases"][case]
    obs = Observation(
        images={key.removeprefix("observation.images."): cases[f"case{case}.{key}"][row].numpy()
                for key in meta["image_keys"]},
        state=cases[f"case{case}.state"][row].numpy(),
        instruction=meta["tasks"][row],
    )
    for key, value in changes.items():
        setattr(obs, key, value)
    return obs


ROWS = [(c, r) for c, meta in enumerate(META["cases"]) for r in range(meta["batch_size"])]


def test_fixtures_cover_the_acceptance_matrix():
    assert len(META["cases"]) >= 2 and len(META["step_counts"]) >= 2
    sizes = {tuple(s) for meta in META["cases"] for s in meta["image_sizes"].values()}
    assert any(s != (32, 32) for s in sizes), "fixtures must include images of sizes other than the model's"
    assert sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()) < 5e6


@pytest.mark.parametrize("num_steps", META["step_counts"])
@pytest.mark.parametrize(("case", "row"), ROWS)
def test_actions_match_lerobot(policy, cases, case, row, num_steps):
    expected = cases[f"case{case}.actions.steps{num_steps}"][row]
    actions = policy.predict_action_chunk(
        observation(cases, case, row), num_steps=num_steps, noise=cases[f"case{case}.noise"][row]
    )
    assert actions.dtype == torch.float32 and tuple(actions.shape) == tuple(expected.shape)
    diff = (actions - expected).abs().max().item()
    assert diff <= TOL, f"case {case} row {row}, {num_steps} steps: max abs diff {diff:.3g} > {TOL}"


def test_split_api_matches_lerobot(policy, cases):
    """encode_prefix once, then sample_chunk for each step count (the policy node's path)."""
    prefix = policy.encode_prefix(observation(cases, 0, 0))
    for n in META["step_counts"]:
        actions = policy.sample_chunk(prefix, num_steps=n, noise=cases["case0.noise"][0])
        assert (actions - cases[f"case0.actions.steps{n}"][0]).abs().max().item() <= TOL


def test_every_input_changes_the_actions(policy, cases):
    """Guards the parity test against a model that ignores an input (then parity would prove little)."""
    noise = cases["case0.noise"][0]
    base = policy.predict_action_chunk(observation(cases, 0, 0), noise=noise)
    obs0 = observation(cases, 0, 0)
    variants = {
        "instruction": observation(cases, 0, 0, instruction="open the drawer"),
        "state": observation(cases, 0, 0, state=obs0.state + 0.5),
        "image top": observation(cases, 0, 0, images={**obs0.images, "top": 255 - obs0.images["top"]}),
        "image wrist": observation(cases, 0, 0, images={**obs0.images, "wrist": 255 - obs0.images["wrist"]}),
    }
    for name, obs in variants.items():
        diff = (policy.predict_action_chunk(obs, noise=noise) - base).abs().max().item()
        assert diff > 1e-3, f"changing the {name} changed the actions by only {diff:.2g}"


def test_config_conversion(policy):
    cfg = policy.config
    assert cfg.camera_names == ["top", "wrist"]
    assert cfg.image_size == (32, 32)
    assert (cfg.state_dim, cfg.action_dim, cfg.max_state_dim, cfg.max_action_dim) == (7, 6, 32, 32)
    assert (cfg.chunk_size, cfg.n_action_steps, cfg.num_steps, cfg.tokenizer_max_length) == (10, 10, 10, 16)
    assert (cfg.state_norm_mode, cfg.action_norm_mode) == ("min_max", "mean_std")
    assert cfg.append_newline and cfg.pad_language_to == "longest"


def test_newline_convention_and_truncation(policy):
    tok = policy.processor
    assert tok.tokenize("pick up the blue block").ids.tolist() == tok.tokenize("pick up the blue block\n").ids.tolist()
    long = tok.tokenize(META["cases"][2]["tasks"][0])
    assert long.truncated and long.ids.shape[1] == 16


def test_factory_dispatches_lerobot_checkpoints(policy, cases):
    loaded = load_policy(CKPT, tokenizer_dir=VLM)
    obs = observation(cases, 1, 1)
    noise = cases["case1.noise"][1]
    assert torch.equal(loaded.predict_action_chunk(obs, noise=noise), policy.predict_action_chunk(obs, noise=noise))


def test_tokenizer_dir_defaults_to_local_vlm_model_name():
    # config.json says vlm_model_name="vlm", which exists next to the checkpoint directory.
    assert load_lerobot_smolvla(CKPT).config.camera_names == ["top", "wrist"]


# --- failures name what is wrong -------------------------------------------------------------------------
@pytest.fixture
def ckpt_copy(tmp_path) -> Path:
    dst = tmp_path / "checkpoint"
    shutil.copytree(CKPT, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_unknown_weight_fails_naming_it(ckpt_copy):
    tensors = load_file(str(ckpt_copy / "model.safetensors"))
    tensors["model.extra_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(ckpt_copy / "model.safetensors"))
    with pytest.raises(LeRobotCheckpointError, match=r"unknown tensor\(s\) \['model.extra_head.weight'\]"):
        load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)


def test_missing_weight_fails_naming_it(ckpt_copy):
    tensors = load_file(str(ckpt_copy / "model.safetensors"))
    del tensors["model.action_out_proj.bias"]
    save_file(tensors, str(ckpt_copy / "model.safetensors"))
    with pytest.raises(LeRobotCheckpointError, match=r"missing tensor\(s\) \['model.action_out_proj.bias'\]"):
        load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)


def test_misshaped_weight_fails_naming_it(ckpt_copy):
    tensors = load_file(str(ckpt_copy / "model.safetensors"))
    tensors["model.state_proj.weight"] = tensors["model.state_proj.weight"][:, :8].contiguous()
    save_file(tensors, str(ckpt_copy / "model.safetensors"))
    with pytest.raises(LeRobotCheckpointError, match="'model.state_proj.weight' has shape"):
        load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)


def test_unknown_config_key_is_a_warning_naming_it(ckpt_copy, cases, caplog):
    """A newer LeRobot's key loads (the settings that change SmolVLA's computation are all known)."""
    _edit_json(ckpt_copy / "config.json", lambda d: d.update(some_new_option=3))
    with caplog.at_level("WARNING", logger="hlrp_ros.policies.lerobot_smolvla"):
        loaded = load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)
    assert "['some_new_option'] are unknown" in caplog.text
    actions = loaded.predict_action_chunk(observation(cases, 0, 0), num_steps=1, noise=cases["case0.noise"][0])
    assert (actions - cases["case0.actions.steps1"][0]).abs().max().item() <= TOL


@pytest.mark.parametrize(("key", "value"), [("adapt_to_pi_aloha", True), ("n_obs_steps", 2)])
def test_unsupported_setting_fails_naming_it(ckpt_copy, key, value):
    _edit_json(ckpt_copy / "config.json", lambda d: d.update({key: value}))
    with pytest.raises(LeRobotCheckpointError, match=key):
        load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)


def test_unknown_processor_step_fails_naming_it(ckpt_copy):
    _edit_json(ckpt_copy / "policy_preprocessor.json",
               lambda d: d["steps"].insert(2, {"registry_name": "my_custom_processor", "config": {}}))
    with pytest.raises(LeRobotCheckpointError, match="'my_custom_processor'"):
        load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)


def test_missing_tokenizer_dir_is_explained(ckpt_copy):
    _edit_json(ckpt_copy / "config.json", lambda d: d.update(vlm_model_name="HuggingFaceTB/SmolVLM2-500M-Video-Instruct"))
    _edit_json(ckpt_copy / "policy_preprocessor.json",
               lambda d: d["steps"][3]["config"].update(tokenizer_name="HuggingFaceTB/SmolVLM2-500M-Video-Instruct"))
    with pytest.raises(FileNotFoundError, match="tokenizer_dir"):
        load_lerobot_smolvla(ckpt_copy)


def test_quantile_normalisation_uses_the_quantiles(ckpt_copy):
    _edit_json(ckpt_copy / "policy_preprocessor.json",
               lambda d: d["steps"][5]["config"]["norm_map"].update(STATE="QUANTILES"))
    stats = load_file(str(ckpt_copy / "policy_preprocessor_step_5_normalizer_processor.safetensors"))
    loaded = load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)
    assert loaded.config.state_norm_mode == "min_max"
    assert torch.equal(loaded.normalize_state.min, stats["observation.state.q01"])
    assert torch.equal(loaded.normalize_state.max, stats["observation.state.q99"])


def _add_empty_camera(data: dict, special_tokens: bool) -> None:
    data["input_features"]["observation.images.empty_camera_0"] = {"type": "VISUAL", "shape": [3, 480, 640]}
    data["empty_cameras"] = 1
    data["add_image_special_tokens"] = special_tokens


def test_empty_cameras_are_dropped(ckpt_copy, cases):
    """LeRobot feeds an empty camera as a fully masked image: it cannot change the actions."""
    _edit_json(ckpt_copy / "config.json", lambda d: _add_empty_camera(d, special_tokens=False))
    loaded = load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)
    assert loaded.config.camera_names == ["top", "wrist"]
    actions = loaded.predict_action_chunk(observation(cases, 0, 0), num_steps=3, noise=cases["case0.noise"][0])
    assert (actions - cases["case0.actions.steps3"][0]).abs().max().item() <= TOL


def test_empty_cameras_with_image_special_tokens_are_rejected(ckpt_copy):
    _edit_json(ckpt_copy / "config.json", lambda d: _add_empty_camera(d, special_tokens=True))
    with pytest.raises(LeRobotCheckpointError, match="empty_cameras=1 together with add_image_special_tokens"):
        load_lerobot_smolvla(ckpt_copy, tokenizer_dir=VLM)


# --- served by policy_node ---------------------------------------------------------------------------------
def _six_joint_copy(dst: Path) -> Path:
    """The fixture checkpoint with a 6-dim state (state_proj is max_state_dim wide, so only the config and
    the state statistics change): policy_node needs state_dim == action_dim == len(joint_names)."""
    shutil.copytree(CKPT, dst)
    _edit_json(dst / "config.json", lambda d: d["input_features"]["observation.state"].update(shape=[6]))
    _edit_json(dst / "policy_preprocessor.json",
               lambda d: d["steps"][5]["config"]["features"]["observation.state"].update(shape=[6]))
    stats_file = dst / "policy_preprocessor_step_5_normalizer_processor.safetensors"
    stats = load_file(str(stats_file))
    save_file({k: v[:6].contiguous() if k.startswith("observation.state.") and k != "observation.state.count" else v
               for k, v in stats.items()}, str(stats_file))
    return dst


@pytest.mark.ros
def test_policy_node_serves_a_lerobot_checkpoint(node_process, rclpy_context, tmp_path):
    from rclpy.qos import qos_profile_sensor_data
    from ros_testing import (
        STARTUP_TIMEOUT,
        SpinningNode,
        camera_image,
        joint_state,
        latched_qos,
        reliable_qos,
        wait_for,
    )
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from hlrp_ros.chunk_codec import decode_chunk
    from hlrp_ros.msg import ActionChunk

    ckpt = _six_joint_copy(tmp_path / "lerobot_ckpt")
    joints = [f"j{i}" for i in range(6)]
    topics = {"top": "/lerobot_test/top/image_raw", "wrist": "/lerobot_test/wrist/image_raw"}
    with SpinningNode(rclpy_context) as spinner:
        node = spinner.node
        node.create_publisher(String, "/lerobot_test/instruction", latched_qos()).publish(String(data="pick up the blue block"))
        chunks = spinner.collect(ActionChunk, "/lerobot_test/action_chunk", reliable_qos())
        pubs = [node.create_publisher(Image, t, qos_profile_sensor_data) for t in topics.values()]
        state_pub = node.create_publisher(JointState, "/lerobot_test/joint_states", qos_profile_sensor_data)
        images = [camera_image(0, size=(48, 64)), camera_image(0, size=(40, 40), seed=3)]

        def tick() -> None:
            for pub, msg in zip(pubs, images, strict=True):
                msg.header.stamp = node.get_clock().now().to_msg()
                pub.publish(msg)
            state_pub.publish(joint_state(spinner.now_ns(), joints, [0.1 * i for i in range(6)]))

        node.create_timer(0.1, tick)
        proc = node_process("policy_node", params={
            "checkpoint": str(ckpt), "tokenizer_dir": str(VLM), "joint_names": joints,
            "camera_topics": list(topics.values()), "camera_names": list(topics),
            "joint_states_topic": "/lerobot_test/joint_states", "instruction_topic": "/lerobot_test/instruction",
            "output_topic": "/lerobot_test/action_chunk", "inference_period": 0.5, "max_observation_age": 2.0,
            "torch_threads": 1, "seed": 0,
        })
        assert wait_for(lambda: len(chunks) >= 1 or proc.returncode() is not None, STARTUP_TIMEOUT), proc.output()
        assert chunks, proc.output()
        _, msg = chunks[0]
        chunk = decode_chunk(msg, joints)
        assert (msg.horizon, msg.action_dim) == (10, 6) and np.isfinite(chunk.actions).all()
        assert msg.instruction == "pick up the blue block"
    assert proc.stop() == 0, proc.output()
