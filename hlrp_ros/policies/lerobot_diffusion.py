"""Serve a LeRobot 0.6 ``diffusion`` checkpoint with the hlrp_ros diffusion policy.

A LeRobot Diffusion Policy checkpoint directory holds::

    config.json                      {"type": "diffusion", input/output features, sizes, scheduler, ...}
    model.safetensors                weights, keys "diffusion.<module>" (the same module names as
                                     hlrp_ros.policies.diffusion.DiffusionModel)
    policy_preprocessor.json         steps: rename, to_batch, device, normalizer
    policy_preprocessor_step_*_normalizer_processor.safetensors     "<feature>.<stat>" statistics
    policy_postprocessor.json        steps: unnormalizer, device
    policy_postprocessor_step_*_unnormalizer_processor.safetensors

:func:`load_lerobot_diffusion` reproduces LeRobot's inference path: images (float ``[0, 1]``, the config's
feature shape) normalised per camera with the VISUAL mode and statistics, then resized (``resize_shape``,
bilinear with antialiasing) and centre-cropped (``crop_shape``) inside the encoder; the state normalised
with the STATE mode; ``n_obs_steps`` observations flattened into the global conditioning; the diffusers
scheduler of the config; ``n_action_steps`` actions from the current observation on, un-normalised with
the postprocessor's ACTION mode. Anything this path cannot reproduce (unknown config keys or processor
steps, an environment-state input, cameras of different shapes, unknown or missing weights) raises
:class:`~hlrp_ros.policies.lerobot_smolvla.LeRobotCheckpointError` naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from hlrp_ros.policies.diffusion.configuration_diffusion import DiffusionConfig
from hlrp_ros.policies.diffusion.modeling_diffusion import DiffusionPolicy
from hlrp_ros.policies.hlrp.modeling_hlrp import CheckpointError, read_safetensors
from hlrp_ros.policies.lerobot_smolvla import (
    ACTION_KEY,
    CONFIG_FILE,
    POSTPROCESSOR_FILE,
    PREPROCESSOR_FILE,
    STATE_KEY,
    WEIGHTS_FILE,
    LeRobotCheckpointError,
    Normalization,
    _fail,
    _normalization,
    _read_json,
    _read_steps,
    camera_name,
)

logger = logging.getLogger(__name__)

LEROBOT_TYPE = "diffusion"
#: config.json fields that only matter for training, hub upload or LeRobot's runtime: read and ignored.
IGNORED_CONFIG_KEYS = frozenset({
    "type", "device", "use_amp", "use_peft", "push_to_hub", "repo_id", "private", "tags", "license",
    "pretrained_path", "pretrained_revision", "drop_n_last_frames", "gradient_checkpointing", "compile_model",
    "compile_mode", "do_mask_loss_for_padding", "optimizer_lr", "optimizer_betas", "optimizer_eps",
    "optimizer_weight_decay", "scheduler_name", "scheduler_warmup_steps",
    # The backbone's initial weights: the trained ones are in model.safetensors.
    "pretrained_backbone_weights",
})
#: config.json fields mapped onto DiffusionConfig (same names unless listed in the conversion).
USED_CONFIG_KEYS = frozenset({
    "n_obs_steps", "input_features", "output_features", "horizon", "n_action_steps", "normalization_mapping",
    "vision_backbone", "resize_shape", "crop_ratio", "crop_shape", "crop_is_random", "use_group_norm",
    "spatial_softmax_num_keypoints", "use_separate_rgb_encoder_per_camera", "down_dims", "kernel_size",
    "n_groups", "diffusion_step_embed_dim", "use_film_scale_modulation", "noise_scheduler_type",
    "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "clip_sample",
    "clip_sample_range", "num_inference_steps",
})
SAME_NAME_KEYS = ("n_obs_steps", "horizon", "n_action_steps", "vision_backbone", "crop_is_random", "use_group_norm",
                  "spatial_softmax_num_keypoints", "use_separate_rgb_encoder_per_camera", "kernel_size",
                  "n_groups", "diffusion_step_embed_dim", "use_film_scale_modulation", "noise_scheduler_type",
                  "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                  "clip_sample", "clip_sample_range", "num_inference_steps")
PRE_STEPS = ("rename_observations_processor", "to_batch_processor", "device_processor", "normalizer_processor")
POST_STEPS = ("unnormalizer_processor", "device_processor")


def _crop_shape(cfg: dict[str, Any]) -> tuple[int, int] | None:
    """The crop LeRobot's DiffusionConfig uses: derived from resize_shape and crop_ratio when resizing."""
    resize = cfg.get("resize_shape")
    if resize is not None:
        ratio = float(cfg.get("crop_ratio", 1.0))
        return (int(resize[0] * ratio), int(resize[1] * ratio)) if ratio < 1.0 else None
    crop = cfg.get("crop_shape")
    return None if crop is None else (int(crop[0]), int(crop[1]))


def _image_stats(norms: list[Normalization]) -> tuple[str, dict[str, torch.Tensor], float]:
    """Per-camera image normalisations -> one mode and ``(num_cameras * 3,)`` statistics."""
    modes = {n.mode for n in norms if n.mode != "identity"}
    if not modes:
        return "identity", {}, norms[0].eps
    if len(modes) > 1:
        raise LeRobotCheckpointError(f"cameras use different image normalisations {sorted(modes)}")
    mode = modes.pop()
    neutral = {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0}  # the identity in each formula
    keys = ("mean", "std") if mode == "mean_std" else ("min", "max")
    stats = {}
    for key in keys:
        parts = [n.stats[key].reshape(-1) if n.mode != "identity" else torch.full((3,), neutral[key]) for n in norms]
        if any(p.numel() != 3 for p in parts):
            raise LeRobotCheckpointError(f"image statistic {key!r} must have 3 values (one per channel)")
        stats[key] = torch.cat(parts)
    return mode, stats, norms[0].eps


def read_lerobot_diffusion(path: str | Path) -> tuple[DiffusionConfig, dict[str, dict[str, torch.Tensor]]]:
    """Parses config.json and the processor files: the equivalent :class:`DiffusionConfig` and statistics.

    Returns:
        ``(config, stats)`` with ``stats`` = {"image" | "state" | "action": {stat: tensor}} (absent: identity).
    """
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    cfg = _read_json(cfg_path)
    if cfg.get("type") != LEROBOT_TYPE:
        raise _fail(cfg_path, f'"type" is {cfg.get("type")!r}, expected {LEROBOT_TYPE!r}')
    unknown = sorted(set(cfg) - IGNORED_CONFIG_KEYS - USED_CONFIG_KEYS)
    if unknown:
        raise _fail(cfg_path, f"unknown config key(s) {unknown}")
    inputs: dict[str, dict[str, Any]] = cfg.get("input_features") or {}
    outputs: dict[str, dict[str, Any]] = cfg.get("output_features") or {}
    camera_keys = [k for k, f in inputs.items() if f.get("type") == "VISUAL"]
    others = [k for k, f in inputs.items() if f.get("type") not in ("VISUAL", "STATE")]
    states = [k for k, f in inputs.items() if f.get("type") == "STATE"]
    if others or states != [STATE_KEY] or list(outputs) != [ACTION_KEY] or not camera_keys:
        raise _fail(cfg_path, f"unsupported features: need image features, {STATE_KEY!r} and {ACTION_KEY!r} "
                              f"(no environment state); got inputs {sorted(inputs)} and outputs {sorted(outputs)}")
    shapes = {tuple(inputs[k]["shape"]) for k in camera_keys}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 3:
        raise _fail(cfg_path, f"cameras must share one (3, H, W) shape, got {sorted(shapes)}")
    _, height, width = shapes.pop()
    names = [camera_name(k) for k in camera_keys]
    if len(set(names)) != len(names):
        raise _fail(cfg_path, f"image features {camera_keys} give duplicate camera names {names}")

    pre_path, post_path = path / PREPROCESSOR_FILE, path / POSTPROCESSOR_FILE
    pre = _read_steps(pre_path, PRE_STEPS)
    post = _read_steps(post_path, POST_STEPS)
    renames = pre.get("rename_observations_processor", {}).get("config", {}).get("rename_map") or {}
    if renames:
        logger.info("%s renames observation keys %s; name cameras after the renamed keys", pre_path, renames)
    normalizer = pre.get("normalizer_processor")
    image_mode, image_stats, eps = _image_stats([_normalization(pre_path, normalizer, k, "VISUAL")
                                                 for k in camera_keys])
    state = _normalization(pre_path, normalizer, STATE_KEY, "STATE")
    action = _normalization(post_path, post.get("unnormalizer_processor"), ACTION_KEY, "ACTION")

    resize = cfg.get("resize_shape")
    try:
        config = DiffusionConfig(
            state_dim=int(inputs[STATE_KEY]["shape"][0]),
            action_dim=int(outputs[ACTION_KEY]["shape"][0]),
            camera_names=names,
            image_size=(int(height), int(width)),
            resize_shape=None if resize is None else (int(resize[0]), int(resize[1])),
            crop_shape=_crop_shape(cfg),
            down_dims=tuple(int(d) for d in cfg.get("down_dims", (512, 1024, 2048))),
            image_norm_mode=image_mode,
            state_norm_mode=state.mode,
            action_norm_mode=action.mode,
            norm_eps=eps,
            preset="lerobot-diffusion",
            **{k: cfg[k] for k in SAME_NAME_KEYS if k in cfg},
        )
    except ValueError as exc:
        raise _fail(cfg_path, f"unsupported setting(s): {exc}") from exc
    stats = {"image": image_stats, "state": state.stats, "action": action.stats}
    return config, stats


def load_lerobot_diffusion(path: str | Path, device: str | torch.device = "cpu",
                           dtype: str | torch.dtype = "float32") -> DiffusionPolicy:
    """Builds a :class:`DiffusionPolicy` from a LeRobot 0.6 ``diffusion`` checkpoint directory.

    Returns:
        The policy in eval mode; cameras are ``policy.config.camera_names`` (LeRobot
        ``observation.images.<name>`` keys without the prefix); ``predict_action_chunk`` needs
        ``Observation.history`` with ``n_obs_steps - 1`` earlier observations and returns LeRobot's
        un-normalised ``(n_action_steps, action_dim)`` actions.
    """
    path = Path(path)
    config, stats = read_lerobot_diffusion(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"LeRobot checkpoint file {weights_path} not found")
    tensors = read_safetensors(weights_path)
    policy = DiffusionPolicy(config)
    bad = sorted(k for k in tensors if not k.startswith("diffusion."))
    if bad:
        raise LeRobotCheckpointError(f"{weights_path}: unknown tensor(s) {bad[:10]}")
    # The normalisation buffers come from the processor files, not from model.safetensors.
    tensors.update({k: v for k, v in policy.state_dict().items() if k.startswith("normalize_")})
    try:
        policy.load_weights(weights_path, tensors=tensors)
    except CheckpointError as exc:
        raise LeRobotCheckpointError(str(exc)) from exc
    policy.set_normalization_stats(image=stats["image"] or None, state=stats["state"] or None,
                                   action=stats["action"] or None)
    policy.to_device_dtype(device, dtype)
    logger.info("loaded LeRobot diffusion checkpoint %s (cameras %s, state %d, action %d, %s, n_obs_steps %d)",
                path, config.camera_names, config.state_dim, config.action_dim, config.noise_scheduler_type,
                config.n_obs_steps)
    return policy.eval()
