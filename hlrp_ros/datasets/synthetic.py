"""Deterministic synthetic episodes: known frames to write, load elsewhere and compare.

The pattern is smooth (video codecs keep it within a few grey levels) and different in every
frame, camera and episode, so a frame read from the wrong place does not match.
"""

from __future__ import annotations

import numpy as np

from hlrp_ros.datasets.lerobot_v3 import DatasetSpec, DatasetWriter

SPEC = DatasetSpec(fps=10, joint_names=("shoulder", "elbow", "wrist"),
                   cameras={"front": (48, 64), "wrist": (32, 48)}, robot_type="hlrp_synthetic")
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


def task_of(episode: int) -> str:
    return TASKS[episode % len(TASKS)]


def write_synthetic(root, lengths=LENGTHS, spec: DatasetSpec = SPEC) -> DatasetWriter:
    """A dataset of ``len(lengths)`` synthetic episodes at ``root``."""
    writer = DatasetWriter(root, spec)
    for e, length in enumerate(lengths):
        episode = writer.start_episode(task_of(e))
        for i in range(length):
            episode.add_frame(*synthetic_frame(e, i, spec))
        writer.save_episode()
    return writer
