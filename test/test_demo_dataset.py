"""The demo world's dataset is a LeRobot v3.0 dataset: it holds exactly the generated samples, resumes, and is
refused where its keyframes would be read as a time series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hlrp_ros.datasets.reader import DatasetReader
from hlrp_ros.datasets.training_arrays import EXPERT_CHUNK, ROLLOUT_STEP, training_arrays
from hlrp_ros.tools import generate_dataset, train

SAMPLE_KEYS = ("images", "states", "actions", "instruction_ids", "episode", "rollout_step")


def generate_into(root, *args: str) -> None:
    assert generate_dataset.main(["--out", str(root), "--episodes-per-file", "2", *args]) == 0


@pytest.mark.parametrize("keep", [2, 0])
def test_the_generated_dataset_trains_on_exactly_the_generated_samples(tmp_path, keep):
    generate_into(tmp_path / "ds", "--episodes", "3", "--steps", "8", "--keep", str(keep), "--seed", "4")
    expected = generate_dataset.generate(3, 8, 16, 4, keep=keep or None)
    arrays = training_arrays(tmp_path / "ds", horizon=16)
    for key in SAMPLE_KEYS:  # images bit for bit, labels unchanged
        assert arrays[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
    assert list(arrays["instructions"]) == list(expected["instructions"])
    assert len(arrays["states"]) == 3 * (keep or 8)
    reader = DatasetReader(tmp_path / "ds")
    reader.validate()
    assert reader.info["features"][EXPERT_CHUNK]["shape"] == [16, 3]
    assert reader.info["features"][EXPERT_CHUNK]["names"] == ["chunk_step", "joint"]
    assert reader.joint_names == ["joint_1", "joint_2", "joint_3"] and reader.fps == 10
    for row in reader.episodes:
        ep = reader.episode(row["episode_index"])
        # LeRobot's action column: the first row of the expert chunk; steps increase along the rollout
        np.testing.assert_array_equal(ep.actions, ep.extras[EXPERT_CHUNK][:, 0])
        steps = ep.extras[ROLLOUT_STEP]
        assert np.all(np.diff(steps) > 0) and (keep or np.array_equal(steps, np.arange(8)))
    shorter = training_arrays(tmp_path / "ds", horizon=4)
    np.testing.assert_array_equal(shorter["actions"], expected["actions"][:, :4])
    with pytest.raises(ValueError, match="longer than"):
        training_arrays(tmp_path / "ds", horizon=17)


def test_an_interrupted_or_extended_generation_ends_with_the_same_dataset(tmp_path, monkeypatch):
    common = ["--steps", "6", "--keep", "2", "--seed", "3"]
    generate_into(tmp_path / "whole", "--episodes", "5", *common)
    real_record = generate_dataset.record

    def interrupted_at_the_fourth(writer, episode):
        if writer.total_episodes == 3:
            raise KeyboardInterrupt
        real_record(writer, episode)

    monkeypatch.setattr(generate_dataset, "record", interrupted_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        generate_into(tmp_path / "parts", "--episodes", "5", *common)
    monkeypatch.undo()
    assert len(DatasetReader(tmp_path / "parts")) == 3  # the saved episodes were committed on the way out
    generate_into(tmp_path / "parts", "--episodes", "4", *common)  # resumed, then extended
    generate_into(tmp_path / "parts", "--episodes", "5", *common)
    whole, parts = training_arrays(tmp_path / "whole", 16), training_arrays(tmp_path / "parts", 16)
    for key in SAMPLE_KEYS:
        np.testing.assert_array_equal(whole[key], parts[key], err_msg=key)
    assert len(DatasetReader(tmp_path / "parts")) == 5
    assert json.loads((tmp_path / "parts" / "meta" / "demo_generator.json").read_text())["seed"] == 3
    with pytest.raises(SystemExit, match="generated with"):
        generate_into(tmp_path / "parts", "--episodes", "6", "--steps", "6", "--keep", "2", "--seed", "4")


def test_training_with_an_observation_history_refuses_the_keyframes_by_name(tmp_path):
    generate_into(tmp_path / "ds", "--episodes", "2", "--steps", "6", "--keep", "0", "--seed", "1")
    with pytest.raises(ValueError, match=r"keyframes of rollouts \(observation.rollout_step\)"):
        train.main(["--dataset", str(tmp_path / "ds"), "--policy", "diffusion", "--n-obs-steps", "2", "--steps", "1",
                    "--batch-size", "2", "--threads", "1", "--out", str(tmp_path / "run")])
