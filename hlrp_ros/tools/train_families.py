"""Training batches and models for every policy family, through the families' own processors.

``hlrp_ros.tools.train`` keeps its fast array batcher for the HLRP family (the shipped demo recipe, with
token-level word dropout); the other families are trained through the same interface they run with:
``policy.processor.collate(observations, actions)`` and ``policy.compute_loss(batch)``. So a checkpoint
trained here sees exactly the preprocessing it gets in ``policy_node``.

Data are the training arrays (``hlrp_ros.datasets.training_arrays`` or the demo world's arrays): one camera,
``states`` ``(N, D)``, chunked ``actions`` ``(N, H, A)`` starting at each frame, an ``episode`` id per frame.
A policy conditioning on ``n_obs_steps = n > 1`` observations (diffusion) gets frames ``t - n + 1 .. t`` of
the same episode, the first frame repeated before the episode's start (what LeRobot's dataset does), and its
action trajectory starts at the oldest one; trajectory steps before the start are marked ``action_is_pad``
and left out of the loss. That needs every frame of each episode, in order (``frame_index`` 0, 1, 2, ...
within each ``episode``, as a recorded LeRobot dataset gives) and executed actions: the demo world's dataset
(``hlrp_ros.tools.generate_dataset``) holds keyframes of its rollouts (``rollout_step``) labelled with expert
chunks, and is refused for it.
"""

from __future__ import annotations

import numpy as np
import torch

from hlrp_ros.policies.base import Observation, history_length
from hlrp_ros.sim.world import COLOURS

#: ``--policy`` choices: the family and its variant.
FAMILIES = ("hlrp", "pi0", "pi05", "diffusion")


def build_family_policy(family: str, chunk_size: int, n_action_steps: int, image_size: int,
                        joint_names: list[str], camera: str, n_obs_steps: int = 1, language: bool = True,
                        vision_film: bool = True, backbone_stages: int = 4):
    """A small model of ``family`` for training from scratch on CPU (demo-world sizes).

    * ``pi0`` / ``pi05``: the ``pi0-tiny`` / ``pi05-tiny`` presets with the vision tower at the frames' size
      (8x8 patches, like the HLRP demo model), chunk and joints as given; PI0.5 with 64 prompt tokens.
    * ``diffusion``: the native diffusion policy with a ResNet-18 trunk (group norm), a (64, 128, 256)
      UNet, DDIM with 10 inference steps over 100 training steps, and (``language``) the instruction encoder,
      whose feature also FiLMs the ResNet stages (``vision_film``; see ``DiffusionConfig.text_film_vision``);
      ``backbone_stages`` 3 stops the trunk after layer3 (a 4x4 map for 64x64 frames instead of 2x2).
      Frames are normalised per channel with the dataset's mean / std (``image_norm_mode="mean_std"``, LeRobot's
      default for images; ``hlrp_ros.tools.train`` sets the statistics): the demo world's frames are a flat
      background with small targets (per-channel std ~0.08 of the range), and fed raw the trunk's output hardly
      depends on the frame; the policy then learnt to ignore the image altogether.
    """
    dims = len(joint_names)
    if family in ("pi0", "pi05"):
        from hlrp_ros.policies.pi0 import PI0Policy, make_config

        # PI0.5 spells the state in its prompt ("State: 140 30 225;"): 64 tokens keep the instruction and
        # the state whole with the tiny byte-level tokenizer (32 cut them)
        extra = {"tokenizer_max_length": 64} if family == "pi05" else {}
        preset = f"{family}-tiny"
        # the vision tower sees the frames at their size (8x8 patches), as the HLRP demo model does
        vision = {**make_config(preset).vision, "image_size": image_size}
        return PI0Policy(make_config(preset, state_dim=dims, action_dim=dims, joint_names=joint_names,
                                     camera_names=[camera], chunk_size=chunk_size, n_action_steps=n_action_steps,
                                     image_size=(image_size, image_size), vision=vision, **extra))
    if family == "diffusion":
        from hlrp_ros.policies.diffusion import DiffusionConfig, DiffusionPolicy
        from hlrp_ros.policies.hlrp.processor_hlrp import build_tiny_tokenizer

        horizon = chunk_size + n_obs_steps - 1
        horizon += -horizon % 8  # the UNet halves the horizon three times
        crop = max(8, image_size - image_size // 16)
        config = DiffusionConfig(
            state_dim=dims, action_dim=dims, joint_names=joint_names, camera_names=[camera],
            image_size=(image_size, image_size), crop_shape=(crop, crop), n_obs_steps=n_obs_steps,
            horizon=horizon, n_action_steps=n_action_steps, down_dims=(64, 128, 256),
            noise_scheduler_type="DDIM", num_train_timesteps=100, num_inference_steps=10, image_norm_mode="mean_std",
            language_conditioned=language, text_film_vision=language and vision_film,
            backbone_stages=backbone_stages)
        return DiffusionPolicy(config, tokenizer=build_tiny_tokenizer() if language else None)
    raise ValueError(f"unknown policy family {family!r}; known: {FAMILIES}")


def consecutive_frames(episode: np.ndarray, frame_index: np.ndarray) -> bool:
    """Whether the arrays hold whole episodes in order: ``frame_index`` 0, 1, 2, ... within each episode."""
    if len(episode) == 0 or len(frame_index) != len(episode):
        return False
    new = np.r_[True, episode[1:] != episode[:-1]]
    expected = np.arange(len(episode)) - np.maximum.accumulate(np.where(new, np.arange(len(episode)), 0))
    return bool(np.array_equal(frame_index, expected))


def unseen_word(rng: np.random.Generator) -> str:
    """A random lower-case letter string (3-8 letters): a word no training instruction contains."""
    return "".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, size=int(rng.integers(3, 9))))


def augment_instruction(text: str, rng: np.random.Generator, unseen: float, known: float,
                        known_words: list[str]) -> str:
    """The HLRP recipe's instruction augmentation at the level of text, for the families' own tokenizers.

    ``unseen`` p: each word other than the colour becomes an unseen word (:func:`unseen_word`, what
    ``<unk>`` is to the HLRP word-level tokenizer) with probability p, and with probability p one is
    inserted at a random place. ``known`` p: the same with a random word of ``known_words``. Both teach
    that words other than the colour carry no task information, so paraphrases with new words keep working.
    """
    words = text.split()
    for p, fill in ((unseen, lambda: unseen_word(rng)), (known, lambda: str(rng.choice(known_words)))):
        if p <= 0:
            continue
        words = [fill() if w.lower().strip(".,;:!?") not in COLOURS and rng.random() < p else w for w in words]
        if rng.random() < p:
            words.insert(int(rng.integers(0, len(words) + 1)), fill())
    return " ".join(words)


class ObservationBatcher:
    """Batches of ``Observation`` objects collated by the policy's own processor (see module docstring).

    ``word_dropout`` / ``random_words``: :func:`augment_instruction`'s ``unseen`` / ``known`` probabilities,
    drawn from the batch's ``rng``; the known words are the HLRP tiny tokenizer's vocabulary.
    """

    def __init__(self, data: dict[str, np.ndarray], policy, instructions: list[str], word_dropout: float = 0.0,
                 random_words: float = 0.0) -> None:
        self.policy = policy
        self.word_dropout, self.random_words = word_dropout, random_words
        from hlrp_ros.policies.hlrp.processor_hlrp import DEFAULT_TINY_WORDS

        self.known_words = [w for w in DEFAULT_TINY_WORDS if w.isalpha() and w not in COLOURS]
        self.images = data["images"]
        self.states = data["states"].astype(np.float32)
        self.actions = data["actions"].astype(np.float32)
        self.instruction_ids = data["instruction_ids"]
        self.instructions = instructions
        self.camera = policy.config.camera_names[0]
        self.n_obs_steps = history_length(policy.config)
        self.horizon = int(getattr(policy.config, "horizon", 0) or policy.config.chunk_size)
        if self.n_obs_steps > 1 or self.horizon != self.actions.shape[1]:
            if "rollout_step" in data:
                raise ValueError(f"a policy with n_obs_steps={self.n_obs_steps} and horizon {self.horizon} needs "
                                 f"whole ordered episodes of executed actions; this dataset holds keyframes of "
                                 f"rollouts (observation.rollout_step) labelled with expert chunks "
                                 f"(action.expert_chunk) of {self.actions.shape[1]} steps")
            episode = np.asarray(data.get("episode", []))
            if not consecutive_frames(episode, np.asarray(data.get("frame_index", []))):
                raise ValueError(f"a policy with n_obs_steps={self.n_obs_steps} and horizon {self.horizon} needs "
                                 f"every frame of each episode in order (a LeRobot dataset via --dataset)")
            starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
            ends = np.r_[starts[1:], len(episode)] - 1
            run = np.cumsum(np.r_[True, episode[1:] != episode[:-1]]) - 1
            self.first, self.last = starts[run], ends[run]  # per frame: its episode's first and last frame
        else:
            self.first = self.last = None

    def __len__(self) -> int:
        return len(self.states)

    def _observation(self, i: int, history: list[int], rng: np.random.Generator | None = None) -> Observation:
        def one(j: int) -> Observation:
            return Observation(images={self.camera: self.images[j]}, state=self.states[j], instruction="")

        text = self.instructions[int(self.instruction_ids[i])]
        if rng is not None and (self.word_dropout > 0 or self.random_words > 0):
            text = augment_instruction(text, rng, self.word_dropout, self.random_words, self.known_words)
        past = [one(j) for j in history] if history else None
        return Observation(images={self.camera: self.images[i]}, state=self.states[i], instruction=text, history=past)

    def _trajectory(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Actions ``(horizon, A)`` from frame ``i - n_obs_steps + 1`` on, and which steps precede the episode."""
        if self.first is None:
            return self.actions[i], np.zeros(self.horizon, bool)
        frames = np.arange(self.horizon) + i - self.n_obs_steps + 1
        pad = frames < self.first[i]
        frames = np.clip(frames, self.first[i], self.last[i])
        return self.actions[frames, 0], pad

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        observations, trajectories, pads = [], [], []
        for i in (int(k) for k in index):
            history = [] if self.first is None else \
                [max(int(self.first[i]), i - k) for k in range(self.n_obs_steps - 1, 0, -1)]
            observations.append(self._observation(i, history, rng))
            actions, pad = self._trajectory(i)
            trajectories.append(actions)
            pads.append(pad)
        batch = self.policy.processor.collate(observations, np.stack(trajectories))
        if np.any(pads):
            batch["action_is_pad"] = torch.from_numpy(np.stack(pads))
        return batch
