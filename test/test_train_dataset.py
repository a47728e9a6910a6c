"""Training on a LeRobot v3.0 dataset: chunked action targets and a short real training run of the HLRP family."""

from __future__ import annotations

import json

import numpy as np

from hlrp_ros.datasets.synthetic import LENGTHS, SPEC, synthetic_frame, write_synthetic
from hlrp_ros.datasets.training_arrays import training_arrays


def test_action_chunks_come_from_the_same_episode_and_hold_the_last_action(tmp_path):
    write_synthetic(tmp_path / "ds")
    data = training_arrays(tmp_path / "ds", horizon=4, image_size=32)
    assert data["images"].shape == (sum(LENGTHS), 32, 32, 3) and data["actions"].shape == (sum(LENGTHS), 4, 3)
    assert list(data["joint_names"]) == list(SPEC.joint_names)
    start = LENGTHS[0]  # episode 1, frame 0: its first four actions
    np.testing.assert_array_equal(data["actions"][start], np.stack([synthetic_frame(1, i)[1] for i in range(4)]))
    last = LENGTHS[0] + LENGTHS[1] - 2  # second-to-last frame of episode 1: last action repeated
    expected = [synthetic_frame(1, LENGTHS[1] - 2)[1]] + [synthetic_frame(1, LENGTHS[1] - 1)[1]] * 3
    np.testing.assert_array_equal(data["actions"][last], np.stack(expected))
    np.testing.assert_array_equal(data["states"][start], synthetic_frame(1, 0)[0])
    assert [str(t) for t in data["instructions"][data["instruction_ids"][[0, start]]]] == \
        ["pick up the red cube", "push the blue block to the left"]


def test_train_reads_a_lerobot_dataset_and_saves_a_checkpoint_with_its_joints_and_statistics(tmp_path):
    from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy
    from hlrp_ros.tools.train import main

    write_synthetic(tmp_path / "ds")
    code = main(["--dataset", str(tmp_path / "ds"), "--policy", "hlrp", "--horizon", "4", "--n-action-steps", "2",
                 "--image-size", "32", "--steps", "3", "--batch-size", "4", "--warmup", "1", "--threads", "1",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    final = tmp_path / "run" / "final"
    info = json.loads((final / "training.json").read_text())
    assert info["dataset"] == str(tmp_path / "ds") and info["stopped_at"] == 3 and np.isfinite(info["loss_ema"])
    policy = HLRPPolicy.from_pretrained(final)
    assert list(policy.config.joint_names) == list(SPEC.joint_names) and policy.config.chunk_size == 4
    states = np.concatenate([[synthetic_frame(e, i)[0] for i in range(n)] for e, n in enumerate(LENGTHS)])
    saved = policy.state_dict()
    means = [v for k, v in saved.items() if "state" in k and k.endswith("mean")]
    assert means and np.allclose(means[0].numpy(), states.mean(0), atol=1e-5)
