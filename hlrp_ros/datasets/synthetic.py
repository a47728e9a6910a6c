"""Deterministic synthetic episodes: known frames to write, load elsewhere and compare.

The pattern is smooth (video codecs keep it within a few grey levels) and different in every
frame, camera and episode, so a frame read from the wrong place does not match.
"""

from __future__ import annotations

import numpy as np

from hlrp_ros.datasets.lerobot_v3 import DatasetSpec, DatasetWriter, FrameFeature

SPEC = DatasetSpec(fps=10, joint_names=("shoulder", "elbow", "wrist"),
                   cameras={"front": (48, 64), "wrist": (32, 48)}, robot_type="hlrp_synthetic")
#: The same cameras as lossless PNG images (an odd size: no video constraint), with two extra features.
IMAGE_SPEC = DatasetSpec(fps=10, joint_names=SPEC.joint_names, cameras={"front": (48, 64), "wrist": (33, 47)},
                         robot_type="hlrp_synthetic", image_storage="image",
                         extras={"action.plan": FrameFeature("float32", (4, 3), ("plan_step", "joint"), "rad"),
                                 "observation.step": FrameFeature("int64", (1,))})
TASKS = ("pick up the red cube", "push the blue block to the left")
LENGTHS = (12, 7, 9)


def synthetic_frame(episode: int, frame: int, spec: DatasetSpec = SPEC) -> tuple[np.ndarray, np.ndarray, dict]:
    """(state, action, images) of one frame; images are uint8 RGB per camera name."""
    n = len(spec.joint_names)
    phase = 0.3 * frame + 1.7 * episode
    state = np.sin(phase + np.arange(n)).astype(np.float32)
    action = np.cos(phase + 0.5 * np.arange(n)).astype(np.float32)
    images = {}
    for c, (name, (height, width)) in enumerate(spec.cameras.items()):
        y, x = np.mgrid[0:height, 0:width]
        red = 128 + 100 * np.sin(2 * np.pi * (x / width + 0.05 * frame + 0.2 * c))
        green = 128 + 100 * np.cos(2 * np.pi * (y / height + 0.13 * episode))
        blue = np.full_like(red, 40 + 20 * ((frame + c + episode) % 8))
        images[name] = np.stack([red, green, blue], axis=-1).round().astype(np.uint8)
    return state, action, images


def synthetic_extras(episode: int, frame: int, spec: DatasetSpec = SPEC) -> dict[str, np.ndarray]:
    """A value for each of ``spec``'s extra features (float32 ones from a pattern, int64 ones a counter)."""
    extras = {}
    for key, feature in spec.extras.items():
        size = int(np.prod(feature.shape))
        if feature.dtype == "int64":
            extras[key] = np.full(feature.shape, 3 * frame + episode, np.int64)
        else:
            extras[key] = np.sin(0.1 * np.arange(size) + frame + 10 * episode).astype(np.float32).reshape(feature.shape)
    return extras


def task_of(episode: int) -> str:
    return TASKS[episode % len(TASKS)]


def write_synthetic(root, lengths=LENGTHS, spec: DatasetSpec = SPEC, episodes_per_file: int = 1) -> DatasetWriter:
    """A dataset of ``len(lengths)`` synthetic episodes at ``root`` (closed: every episode committed)."""
    writer = DatasetWriter(root, spec, episodes_per_file=episodes_per_file)
    for e, length in enumerate(lengths):
        episode = writer.start_episode(task_of(e))
        for i in range(length):
            episode.add_frame(*synthetic_frame(e, i, spec), extras=synthetic_extras(e, i, spec))
        writer.save_episode()
    writer.close()
    return writer
