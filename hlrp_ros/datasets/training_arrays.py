"""A LeRobot v3.0 dataset as the arrays the training loop samples from (one camera, chunked actions).

For frame ``t`` of an episode the action target is the chunk ``action[t : t + horizon]`` of the same
episode; near the episode's end the last action is repeated (the robot holds its final command).

A dataset whose frames carry their own label chunk, ``action.expert_chunk`` (horizon, A) (the demo
world's generator, ``hlrp_ros.tools.generate_dataset``), is trained on that chunk instead (its first
``horizon`` rows). Such episodes may be keyframes of a longer rollout (``observation.rollout_step``:
the step each frame was taken at); the arrays then carry ``rollout_step``, by which the training
batchers refuse them for observation histories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hlrp_ros.datasets.reader import DatasetReader

#: Per-frame label chunk (horizon, A): absolute actions from this frame's state on.
EXPERT_CHUNK = "action.expert_chunk"
#: Step of the rollout a keyframe was recorded at (frames are then not ``1 / fps`` apart).
ROLLOUT_STEP = "observation.rollout_step"


def training_arrays(root: str | Path, horizon: int, camera: str | None = None, image_size: int | None = None
                    ) -> dict[str, np.ndarray]:
    """``images`` (N, H, W, 3) uint8, ``states`` (N, D), ``actions`` (N, horizon, A), ``instruction_ids``
    (N,) into ``instructions``, ``episode`` (N,), ``frame_index`` (N,) (every frame, in order: consecutive
    frames are one ``1 / fps`` apart, unless the dataset has keyframes: then also ``rollout_step`` (N,)),
    ``joint_names`` (the state's names), ``action_names`` (the action's; the same unless the dataset records
    a different state, e.g. Meta-World's full observation) and ``meta`` (one line naming the source).

    Args:
        root: Dataset directory.
        horizon: Action chunk length (the model's chunk_size).
        camera: Feature key of the camera used (default: the first video feature).
        image_size: Square size the frames are resized to (padded to keep the aspect); None: as stored.
    """
    import cv2

    reader = DatasetReader(root)
    keys = reader.camera_keys
    if not keys:
        raise ValueError(f"{root}: the dataset has no camera")
    camera = camera or keys[0]
    if camera not in keys:
        raise ValueError(f"{root}: no camera {camera!r}; cameras: {keys}")
    labelled = EXPERT_CHUNK in reader.features
    if labelled and horizon > reader.features[EXPERT_CHUNK]["shape"][0]:
        raise ValueError(f"{root}: horizon {horizon} is longer than the dataset's {EXPERT_CHUNK} "
                         f"({reader.features[EXPERT_CHUNK]['shape'][0]} steps)")
    parts: dict[str, list] = {"images": [], "states": [], "actions": [], "instruction_ids": [], "episode": [],
                              "frame_index": []}
    if ROLLOUT_STEP in reader.features:
        parts["rollout_step"] = []
    for row in reader.episodes:
        ep = reader.episode(row["episode_index"])
        n = len(ep.states)
        frames = reader.frames(ep.index, camera)
        if image_size is not None and frames.shape[1:3] != (image_size, image_size):
            frames = np.stack([_fit(cv2, f, image_size) for f in frames])
        parts["images"].append(frames)
        parts["states"].append(ep.states)
        if labelled:
            parts["actions"].append(ep.extras[EXPERT_CHUNK][:, :horizon].astype(np.float32))
        else:
            index = np.minimum(np.arange(n)[:, None] + np.arange(horizon)[None], n - 1)
            parts["actions"].append(ep.actions[index])
        if "rollout_step" in parts:
            parts["rollout_step"].append(ep.extras[ROLLOUT_STEP].astype(np.int64))
        parts["instruction_ids"].append(np.full(n, reader.tasks.index(ep.task), np.int32))
        parts["episode"].append(np.full(n, ep.index, np.int32))
        parts["frame_index"].append(np.arange(n, dtype=np.int32))
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data["instructions"] = np.array(reader.tasks)
    data["joint_names"] = np.array(reader.joint_names)
    data["action_names"] = np.array(reader.action_names or reader.joint_names)
    data["meta"] = np.array([f"lerobot_v3={Path(root)} camera={camera} episodes={len(reader)} fps={reader.fps} "
                             f"horizon={horizon} actions={EXPERT_CHUNK if labelled else 'action chunks'}"])
    return data


def _fit(cv2, rgb: np.ndarray, size: int) -> np.ndarray:
    """``rgb`` resized into a ``size`` x ``size`` square, aspect kept, zero padded."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    return out
