"""Training every family from a LeRobot v3.0 dataset, through the family's own processor.

The synthetic dataset (hlrp_ros.datasets.synthetic) has three episodes of known frames; a few real
optimisation steps per family must give a checkpoint that ``load_policy`` opens and that predicts chunks
with the dataset's joints. The batcher's history and trajectory rules are checked frame by frame.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hlrp_ros.datasets.synthetic import LENGTHS, SPEC, synthetic_frame, write_synthetic
from hlrp_ros.datasets.training_arrays import training_arrays
from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.tools.train_families import ObservationBatcher, augment_instruction, build_family_policy


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("families") / "ds"
    write_synthetic(root)
    return root


def train(dataset, out, *extra: str) -> dict:
    from hlrp_ros.tools.train import main

    code = main(["--dataset", str(dataset), "--horizon", "8", "--n-action-steps", "4", "--image-size", "32",
                 "--steps", "4", "--batch-size", "4", "--warmup", "1", "--threads", "1", "--save-every", "2",
                 "--out", str(out), *extra])
    assert code == 0
    return json.loads((out / "final" / "training.json").read_text())


@pytest.mark.parametrize("family", ["pi0", "pi05", "diffusion"])
def test_each_family_trains_from_a_lerobot_dataset_into_a_checkpoint_the_node_can_load(dataset, tmp_path, family):
    info = train(dataset, tmp_path / family, "--policy", family)
    assert info["policy"] == family and info["stopped_at"] == 4 and np.isfinite(info["loss_ema"])
    policy = load_policy(tmp_path / family / "final")
    assert list(policy.config.joint_names) == list(SPEC.joint_names)
    state, _, images = synthetic_frame(0, 0)
    obs = Observation(images={"top": next(iter(images.values()))}, state=state, instruction="pick up the red cube")
    chunk = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape[-1] == len(SPEC.joint_names) and chunk.shape[0] >= 4 and torch.isfinite(chunk).all()
    # the statistics came from the dataset: a resumed run starts from the saved weights, not from scratch
    resumed = train(dataset, tmp_path / family, "--policy", family, "--steps", "6", "--resume")
    assert resumed["stopped_at"] == 6 and len(resumed["history"]) == 2


def test_a_two_observation_diffusion_policy_gets_the_previous_frame_and_a_trajectory_from_the_oldest(dataset):
    data = training_arrays(dataset, horizon=8, image_size=32)
    policy = build_family_policy("diffusion", 8, 4, 32, list(SPEC.joint_names), "top", n_obs_steps=2)
    assert policy.config.horizon == 16  # 8 + 1 rounded up to what the UNet's three halvings need
    batcher = ObservationBatcher(data, policy, [str(t) for t in data["instructions"]])
    start = LENGTHS[0]  # first frame of episode 1, and the frame after it
    batch = batcher.batch(np.array([start, start + 1]))
    states = batch["state"].numpy()  # (B, n_obs_steps, D): oldest first
    np.testing.assert_allclose(states[0], [synthetic_frame(1, 0)[0]] * 2)  # before the start: the first, repeated
    np.testing.assert_allclose(states[1], [synthetic_frame(1, 0)[0], synthetic_frame(1, 1)[0]])
    actions = batch["actions"].numpy()
    np.testing.assert_allclose(actions[1, :3], [synthetic_frame(1, i)[1] for i in range(3)])
    np.testing.assert_allclose(actions[0, 1:3], [synthetic_frame(1, i)[1] for i in range(2)])
    # the step before the episode started is padding, left out of the loss; the end holds the last action
    assert batch["action_is_pad"][0].tolist() == [True] + [False] * 15
    assert not batch["action_is_pad"][1].any()
    np.testing.assert_allclose(actions[1, -1], synthetic_frame(1, LENGTHS[1] - 1)[1])  # 7 frames < 16 steps
    assert torch.isfinite(policy.compute_loss(batch)).item()


def test_history_needs_every_frame_of_each_episode_in_order():
    policy = build_family_policy("diffusion", 8, 4, 32, ["a", "b", "c"], "top", n_obs_steps=2)
    data = {"images": np.zeros((4, 32, 32, 3), np.uint8), "states": np.zeros((4, 3)), "actions": np.zeros((4, 8, 3)),
            "instruction_ids": np.zeros(4, int), "episode": np.array([0, 0, 1, 1])}
    for frame_index in (None, np.array([0, 3, 0, 5])):  # no frame indices; a few frames kept per episode
        if frame_index is not None:
            data["frame_index"] = frame_index
        with pytest.raises(ValueError, match="needs every frame of each episode in order"):
            ObservationBatcher(data, policy, ["reach the red target"])
    data["frame_index"] = np.array([0, 1, 0, 1])
    assert len(ObservationBatcher(data, policy, ["reach the red target"])) == 4


def test_instruction_augmentation_changes_other_words_and_never_the_colour():
    rng = np.random.default_rng(0)
    text = "move the arm to the blue target"
    unseen = [augment_instruction(text, rng, 0.5, 0.0, ["cube"]) for _ in range(200)]
    known = [augment_instruction(text, rng, 0.0, 0.5, ["cube"]) for _ in range(200)]
    assert all("blue" in t.split() for t in unseen + known)
    assert sum(t != text for t in unseen) > 150 and sum(t != text for t in known) > 150
    assert any(len(t.split()) == len(text.split()) + 1 for t in known)  # an inserted word
    assert set(" ".join(known).split()) <= set(text.split()) | {"cube"}
    assert augment_instruction(text, rng, 0.0, 0.0, ["cube"]) == text
    # a colour with punctuation attached (recorded instructions) is still the colour
    assert all("blue." in augment_instruction("reach blue.", rng, 1.0, 0.0, ["cube"]).split() for _ in range(20))


def test_families_train_with_the_hlrp_recipes_instruction_augmentation(dataset, tmp_path):
    info = train(dataset, tmp_path / "pi0aug", "--policy", "pi0", "--word-dropout", "0.1", "--random-words", "0.1")
    assert info["word_dropout"] == 0.1 and info["random_words"] == 0.1 and np.isfinite(info["loss_ema"])
    data = training_arrays(dataset, 8, None, 32)
    policy = build_family_policy("pi0", 8, 4, 32, list(SPEC.joint_names), "top")
    batcher = ObservationBatcher(data, policy, [str(t) for t in data["instructions"]], 0.5, 0.5)
    seen = {batcher._observation(0, [], np.random.default_rng(k)).instruction for k in range(20)}
    assert len(seen) > 10  # a different instruction each draw


def test_a_checkpoint_gains_the_vision_film_only_when_asked(dataset, tmp_path):
    """``--init-from`` is strict; ``--init-new-tensors`` lets a model that gained a module (the diffusion trunk's
    FiLM) start from a checkpoint without it, every other tensor loaded and still checked."""
    train(dataset, tmp_path / "plain", "--policy", "diffusion", "--no-vision-film")
    assert not load_policy(tmp_path / "plain" / "final").config.text_film_vision
    with pytest.raises(Exception, match="vision_film"):
        train(dataset, tmp_path / "strict", "--policy", "diffusion", "--init-from", str(tmp_path / "plain" / "final"))
    info = train(dataset, tmp_path / "film", "--policy", "diffusion", "--init-from", str(tmp_path / "plain" / "final"),
                 "--init-new-tensors")
    assert info["init_from"].endswith("final")
    assert load_policy(tmp_path / "film" / "final").config.text_film_vision
    with pytest.raises(SystemExit, match="shape"):  # a different model is still refused
        train(dataset, tmp_path / "other", "--policy", "diffusion", "--n-obs-steps", "2",
              "--init-from", str(tmp_path / "plain" / "final"), "--init-new-tensors")


def test_a_shorter_trunk_starts_from_the_matching_tensors_of_a_whole_trunk_checkpoint(dataset, tmp_path):
    """``--backbone-stages 3`` with ``--init-matching-tensors``: conv1..layer3 and the UNet come from the
    checkpoint, layer4 is dropped, the new keypoint convolution keeps its initialisation."""
    from safetensors.torch import load_file

    train(dataset, tmp_path / "whole", "--policy", "diffusion", "--no-vision-film")
    info = train(dataset, tmp_path / "short", "--policy", "diffusion", "--no-vision-film", "--backbone-stages", "3",
                 "--init-from", str(tmp_path / "whole" / "final"), "--init-matching-tensors", "--lr", "1e-12",
                 "--warmup", "0")
    assert info["init_from"].endswith("final")
    whole = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    short = load_file(str(tmp_path / "short" / "final" / "model.safetensors"))
    assert load_policy(tmp_path / "short" / "final").config.backbone_stages == 3
    assert not any(".backbone.7." in k for k in short) and any(".backbone.7." in k for k in whole)
    layer3 = "diffusion.rgb_encoder.backbone.6.1.conv2.weight"
    assert torch.allclose(short[layer3], whole[layer3], atol=1e-6)  # loaded (lr ~0: unchanged)
    kp = "diffusion.rgb_encoder.pool.nets.weight"
    assert short[kp].shape == (whole[kp].shape[0], 256, 1, 1)


def demo_like_frame(x: int, y: int) -> np.ndarray:
    """A 64x64 frame like the demo world's: a flat beige table and one small red target at (x, y)."""
    img = np.empty((64, 64, 3), np.uint8)
    img[:] = (192, 183, 161)
    yy, xx = np.mgrid[:64, :64]
    img[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = (220, 40, 40)
    return img


@pytest.mark.parametrize("stages", [4, 3])
def test_the_diffusion_family_trunk_tells_apart_frames_that_differ_only_in_where_a_small_target_is(stages):
    """Fed raw [0, 1] pixels the trunk's output was dominated by the flat background (its spread over such frames
    ~0.1 of its size, 0.01 after training: the policy ignored the image, its actions the same for any frame).
    Normalised per channel with the frames' statistics (what train does) it varies by its own size."""
    from hlrp_ros.policies.diffusion.modeling_diffusion import center_crop
    from hlrp_ros.tools.train import image_stats

    frames = np.stack([demo_like_frame(x, y) for x in (16, 32, 48) for y in (16, 32, 48)])
    torch.manual_seed(0)
    policy = build_family_policy("diffusion", 16, 8, 64, ["a", "b", "c"], "top", language=False,
                                 backbone_stages=stages)
    assert policy.config.image_norm_mode == "mean_std"
    policy.set_normalization_stats(image=image_stats(frames))
    obs = [Observation(images={"top": f}, state=np.zeros(3, np.float32), instruction="") for f in frames]
    with torch.no_grad():
        images = policy._model_inputs(policy.processor.collate(obs))["images"].flatten(0, 2)
        maps = policy.diffusion.rgb_encoder.backbone(center_crop(images, *policy.config.crop_shape))
    spread = (maps.std(0).mean() / maps.abs().mean()).item()
    assert spread > 0.4, spread  # measured: 0.65 / 1.0 (raw pixels: 0.09 / 0.09)


def test_the_diffusion_family_normalises_frames_with_the_datasets_per_channel_statistics(dataset, tmp_path):
    from hlrp_ros.tools.train import image_stats

    train(dataset, tmp_path / "d", "--policy", "diffusion")
    policy = load_policy(tmp_path / "d" / "final")
    assert policy.config.image_norm_mode == "mean_std"
    frames = training_arrays(dataset, horizon=8, image_size=32)["images"]
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(policy.normalize_image.mean.numpy(), pixels.mean(0), atol=1e-5)
    np.testing.assert_allclose(policy.normalize_image.std.numpy(), pixels.std(0), atol=1e-5)
    assert np.allclose(image_stats(frames, chunk=7)["std"], pixels.std(0), atol=1e-5)  # chunked = whole
