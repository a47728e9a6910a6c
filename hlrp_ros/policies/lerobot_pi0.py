"""Serve a LeRobot 0.6 PI0 or PI0.5 checkpoint with the native PI0 model.

A LeRobot ``pi0`` / ``pi05`` checkpoint directory holds ``config.json`` (``"type": "pi0"`` or ``"pi05"``),
``model.safetensors`` (keys ``model.<module>``, the same module names as
:class:`~hlrp_ros.policies.pi0.modeling_pi0.PI0FlowMatching`) and the pre-/post-processor JSON with their
statistics. What it does not hold:

* sizes: LeRobot fixes them in code by name (``paligemma_variant`` / ``action_expert_variant``: ``gemma_2b``,
  ``gemma_300m``; SigLIP so400m/14; the 257152-token vocabulary). Here they come from those names, or from
  the weight shapes when a checkpoint was shrunk (widths, depths, MLP sizes, vocabulary, SigLIP tower; the
  attention keeps the variant's 8 heads, as LeRobot's joint pass does, and a shrunk SigLIP tower gets
  ``hidden / 72`` heads when that divides, else ``hidden / 16``);
* the tokenizer: LeRobot downloads ``google/paligemma-3b-pt-224``; here it comes from ``tokenizer_dir``, a
  local copy of that tokenizer's files.

Reproduced: images resized keeping the aspect ratio with centred black padding (skipped at the model size),
``[-1, 1]``; PI0's trailing newline; PI0.5's prompt with the state normalised and discretised into 256 bins;
tokenisation to ``max_length`` (right padding, truncation); state / action normalisation (IDENTITY,
MEAN_STD, MIN_MAX, QUANTILES with q01/q99, QUANTILE10 with q10/q90); cameras missing from the observation
layout (``empty_cameras``) are fully masked in LeRobot and therefore left out (exact).

Config keys this loader does not know are logged as warnings naming them; settings that change the
computation and are not reproduced (relative actions, real-time chunking, several observation steps, image
normalisation) raise :class:`~hlrp_ros.policies.lerobot_smolvla.LeRobotCheckpointError`, as do unknown or
missing tensors (named). Two tensors LeRobot saves are not used for actions and are skipped:
``paligemma.lm_head.weight`` (PaliGemma ties it to the token embedding, which it replaces when the embedding
itself is absent) and ``gemma_expert.lm_head.weight`` (the action expert has no token output).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hlrp_ros.policies.hlrp.modeling_hlrp import CheckpointError, read_safetensors
from hlrp_ros.policies.hlrp.processor_hlrp import load_tokenizer
from hlrp_ros.policies.lerobot_smolvla import (
    ACTION_KEY,
    EMPTY_CAMERA_PREFIX,
    POSTPROCESSOR_FILE,
    PREPROCESSOR_FILE,
    STATE_KEY,
    WEIGHTS_FILE,
    LeRobotCheckpointError,
    Normalization,
    _normalization,
    _read_json,
    _read_steps,
    camera_name,
)
from hlrp_ros.policies.pi0.configuration_pi0 import (
    GEMMA_VARIANTS,
    PALIGEMMA_VOCAB_SIZE,
    SIGLIP_SO400M,
    PI0Config,
)
from hlrp_ros.policies.pi0.modeling_pi0 import PI0Policy

logger = logging.getLogger(__name__)

LEROBOT_TYPES = ("pi0", "pi05")
#: Training, hub or LeRobot-runtime settings: read and ignored.
IGNORED_CONFIG_KEYS = frozenset({
    "type", "device", "use_amp", "use_peft", "push_to_hub", "repo_id", "private", "tags", "license",
    "pretrained_path", "pretrained_revision", "optimizer_lr", "optimizer_betas", "optimizer_eps",
    "optimizer_weight_decay", "optimizer_grad_clip_norm", "scheduler_warmup_steps", "scheduler_decay_steps",
    "scheduler_decay_lr", "gradient_checkpointing", "compile_model", "compile_mode", "dtype",
    "time_sampling_beta_alpha", "time_sampling_beta_beta", "time_sampling_scale", "time_sampling_offset",
    "freeze_vision_encoder", "train_expert_only", "action_feature_names", "relative_exclude_joints",
})
#: Settings the conversion reads or checks.
USED_CONFIG_KEYS = frozenset({
    "n_obs_steps", "input_features", "output_features", "chunk_size", "n_action_steps", "max_state_dim",
    "max_action_dim", "num_inference_steps", "min_period", "max_period", "use_relative_actions", "rtc_config",
    "image_resolution", "empty_cameras", "tokenizer_max_length", "normalization_mapping", "paligemma_variant",
    "action_expert_variant",
})
PRE_STEPS = ("rename_observations_processor", "to_batch_processor", "pi0_new_line_processor",
             "relative_actions_processor", "normalizer_processor", "pi05_prepare_state_tokenizer_processor_step",
             "tokenizer_processor", "device_processor")
POST_STEPS = ("unnormalizer_processor", "absolute_actions_processor", "device_processor")
#: Saved by LeRobot, not used for actions (see the module docstring).
UNUSED_TENSORS = ("model.paligemma_with_expert.paligemma.lm_head.weight",
                  "model.paligemma_with_expert.gemma_expert.lm_head.weight")
VLM = "model.paligemma_with_expert.paligemma.model."
EXPERT = "model.paligemma_with_expert.gemma_expert.model."
EMBED = VLM + "language_model.embed_tokens.weight"


def is_lerobot_pi0(path: str | Path) -> bool:
    """True when ``path/config.json`` says ``"type": "pi0"`` or ``"pi05"``."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("type") in LEROBOT_TYPES
    except (OSError, json.JSONDecodeError):
        return False


def _fail(path: Path, what: str) -> LeRobotCheckpointError:
    return LeRobotCheckpointError(f"{path}: {what}")


def _count_layers(tensors: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in tensors if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def _gemma_sizes(tensors: dict[str, Tensor], prefix: str, variant: str, source: Path) -> dict[str, int]:
    """The variant's sizes, or those the weights under ``prefix`` (``...layers.``) show when shrunk."""
    if variant not in GEMMA_VARIANTS:
        raise _fail(source, f"unknown Gemma variant {variant!r} (known: {sorted(GEMMA_VARIANTS)})")
    sizes = dict(GEMMA_VARIANTS[variant])
    q = tensors.get(prefix + "0.self_attn.q_proj.weight")
    k = tensors.get(prefix + "0.self_attn.k_proj.weight")
    gate = tensors.get(prefix + "0.mlp.gate_proj.weight")
    if q is None or k is None or gate is None:
        raise _fail(source, f"missing tensor(s) under {prefix}0. (q_proj, k_proj, mlp.gate_proj)")
    head_dim = q.shape[0] // sizes["num_heads"]
    shown = {"width": int(q.shape[1]), "depth": _count_layers(tensors, prefix), "mlp_dim": int(gate.shape[0]),
             "num_heads": sizes["num_heads"], "num_kv_heads": int(k.shape[0]) // head_dim, "head_dim": head_dim}
    if shown != sizes:
        logger.info("%s: weights under %s are smaller than %s %s: using %s", source, prefix, variant, sizes, shown)
    return shown


def _vision_sizes(tensors: dict[str, Tensor], prefix: str, image: int, source: Path) -> dict[str, Any]:
    patch = tensors.get(prefix + "embeddings.patch_embedding.weight")
    fc1 = tensors.get(prefix + "encoder.layers.0.mlp.fc1.weight")
    if patch is None or fc1 is None:
        raise _fail(source, f"missing tensor(s) {prefix}embeddings.patch_embedding.weight / encoder.layers.0.mlp.fc1")
    hidden = int(patch.shape[0])
    sizes = {**SIGLIP_SO400M, "hidden_size": hidden, "intermediate_size": int(fc1.shape[0]),
             "num_hidden_layers": _count_layers(tensors, prefix + "encoder.layers."),
             "num_attention_heads": hidden // 72 if hidden % 72 == 0 else max(1, hidden // 16),
             "patch_size": int(patch.shape[2]), "image_size": image}
    positions = tensors.get(prefix + "embeddings.position_embedding.weight")
    if positions is not None and positions.shape[0] != (image // sizes["patch_size"]) ** 2:
        raise _fail(source, f"{positions.shape[0]} vision positions do not match image_resolution {image} "
                            f"with patch {sizes['patch_size']}")
    return sizes


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, dict], dict[str, dict]]:
    """config.json and the processor steps, with everything unsupported rejected (named)."""
    cfg_path = path / "config.json"
    cfg = _read_json(cfg_path)
    if cfg.get("type") not in LEROBOT_TYPES:
        raise _fail(cfg_path, f'"type" is {cfg.get("type")!r}, expected one of {LEROBOT_TYPES}')
    unknown = sorted(set(cfg) - IGNORED_CONFIG_KEYS - USED_CONFIG_KEYS)
    if unknown:
        logger.warning("%s: config key(s) %s are unknown to this loader (a newer LeRobot?); ignored", cfg_path, unknown)
    checks = {
        "n_obs_steps": (cfg.get("n_obs_steps", 1) == 1, "only n_obs_steps=1 is supported"),
        "use_relative_actions": (not cfg.get("use_relative_actions", False), "relative actions are not supported"),
        "rtc_config": (not (cfg.get("rtc_config") or {}).get("enabled", False), "real-time chunking is not supported"),
    }
    bad = [f"{k}={cfg.get(k)!r} ({why})" for k, (ok, why) in checks.items() if not ok]
    if bad:
        raise _fail(cfg_path, "unsupported setting(s): " + "; ".join(bad))
    pre = _read_steps(path / PREPROCESSOR_FILE, PRE_STEPS)
    post = _read_steps(path / POSTPROCESSOR_FILE, POST_STEPS)
    for steps, name, file in ((pre, "relative_actions_processor", PREPROCESSOR_FILE),
                              (post, "absolute_actions_processor", POSTPROCESSOR_FILE)):
        if steps.get(name, {}).get("config", {}).get("enabled", False):
            raise _fail(path / file, f"{name} is enabled (relative actions are not supported)")
    if "tokenizer_processor" not in pre:
        raise _fail(path / PREPROCESSOR_FILE, "no tokenizer_processor step")
    tok = pre["tokenizer_processor"].get("config", {})
    tok_bad = [f"{k}={tok.get(k)!r}" for k, ok in (
        ("padding_side", tok.get("padding_side", "right") == "right"),
        ("truncation", tok.get("truncation", True)),
        ("padding", tok.get("padding", "max_length") in ("longest", "max_length")),
        ("task_key", tok.get("task_key", "task") == "task")) if not ok]
    if tok_bad:
        raise _fail(path / PREPROCESSOR_FILE, "unsupported tokenizer_processor setting(s): " + ", ".join(tok_bad))
    want = "pi05_prepare_state_tokenizer_processor_step" if cfg["type"] == "pi05" else "pi0_new_line_processor"
    if want not in pre:
        raise _fail(path / PREPROCESSOR_FILE, f"a {cfg['type']} checkpoint without {want}")
    return cfg, pre, post


def to_pi0_config(path: Path, cfg: dict[str, Any], pre: dict[str, dict], post: dict[str, dict],
                  tensors: dict[str, Tensor]) -> tuple[PI0Config, Normalization, Normalization]:
    """The equivalent :class:`PI0Config` (sizes from the variants or the weights) and the state / action
    normalisations."""
    cfg_path = path / "config.json"
    inputs: dict[str, dict] = cfg.get("input_features") or {}
    outputs: dict[str, dict] = cfg.get("output_features") or {}
    cameras = [k for k, f in inputs.items() if f.get("type") == "VISUAL" and not k.startswith(EMPTY_CAMERA_PREFIX)]
    others = [k for k, f in inputs.items() if f.get("type") not in ("VISUAL", "STATE")]
    if others or STATE_KEY not in inputs or set(outputs) != {ACTION_KEY} or not cameras:
        raise _fail(cfg_path, f"unsupported features: need image features, {STATE_KEY!r} and {ACTION_KEY!r}; got "
                              f"inputs {sorted(inputs)} and outputs {sorted(outputs)}")
    names = [camera_name(k) for k in cameras]
    if len(set(names)) != len(names):
        raise _fail(cfg_path, f"image features {cameras} give duplicate camera names {names}")
    normalizer = pre.get("normalizer_processor")
    if normalizer is not None:
        visual = normalizer.get("config", {}).get("norm_map", {}).get("VISUAL", "IDENTITY")
        if visual != "IDENTITY" and any(k in normalizer.get("stats", {}) for k in cameras):
            raise _fail(path / PREPROCESSOR_FILE, f"image normalisation {visual!r} is not supported")
    state_norm = _normalization(path / PREPROCESSOR_FILE, normalizer, STATE_KEY, "STATE")
    action_norm = _normalization(path / POSTPROCESSOR_FILE, post.get("unnormalizer_processor"), ACTION_KEY, "ACTION")
    resolution = [int(v) for v in cfg.get("image_resolution", (224, 224))]
    if resolution[0] != resolution[1]:
        raise _fail(cfg_path, f"image_resolution {resolution} is not square (PaliGemma needs square images)")
    embed = tensors.get(EMBED, tensors.get(UNUSED_TENSORS[0]))
    if embed is None:
        raise _fail(path / WEIGHTS_FILE, f"missing tensor {EMBED!r} (and no {UNUSED_TENSORS[0]!r} to take it from)")
    vision_prefix = VLM + ("vision_tower.vision_model." if any(k.startswith(VLM + "vision_tower.vision_model.")
                                                               for k in tensors) else "vision_tower.")
    tok = pre["tokenizer_processor"].get("config", {})
    is_pi05 = cfg["type"] == "pi05"
    config = PI0Config(
        variant=cfg["type"],
        state_dim=int(inputs[STATE_KEY]["shape"][0]),
        action_dim=int(outputs[ACTION_KEY]["shape"][0]),
        max_state_dim=int(cfg.get("max_state_dim", 32)),
        max_action_dim=int(cfg.get("max_action_dim", 32)),
        camera_names=names,
        image_size=(resolution[0], resolution[1]),
        chunk_size=int(cfg.get("chunk_size", 50)),
        n_action_steps=int(cfg.get("n_action_steps", 50)),
        num_steps=int(cfg.get("num_inference_steps", 10)),
        min_period=float(cfg.get("min_period", 4e-3)),
        max_period=float(cfg.get("max_period", 4.0)),
        tokenizer_max_length=int(tok.get("max_length", cfg.get("tokenizer_max_length", 200 if is_pi05 else 48))),
        pad_language_to=str(tok.get("padding", "max_length")),
        append_newline="pi0_new_line_processor" in pre,
        paligemma=_gemma_sizes(tensors, VLM + "language_model.layers.", cfg.get("paligemma_variant", "gemma_2b"),
                               path / WEIGHTS_FILE),
        expert=_gemma_sizes(tensors, EXPERT + "layers.", cfg.get("action_expert_variant", "gemma_300m"),
                            path / WEIGHTS_FILE),
        vocab_size=int(embed.shape[0]),
        vision=_vision_sizes(tensors, vision_prefix, resolution[0], path / WEIGHTS_FILE),
        state_norm_mode=state_norm.mode,
        action_norm_mode=action_norm.mode,
        norm_eps=state_norm.eps,
        preset=f"lerobot-{cfg['type']}",
    )
    if embed.shape[0] != PALIGEMMA_VOCAB_SIZE:
        logger.info("%s: vocabulary of %d tokens (PaliGemma's has %d)", path, embed.shape[0], PALIGEMMA_VOCAB_SIZE)
    return config, state_norm, action_norm


def convert_state_dict(tensors: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """LeRobot weight names -> the native model's: the SigLIP tower's ``vision_model.`` level follows the
    installed transformers, the tied PaliGemma head stands in for a missing embedding, unused heads go."""
    out = dict(tensors)
    if EMBED not in out and UNUSED_TENSORS[0] in out:
        out[EMBED] = out[UNUSED_TENSORS[0]]
    for key in UNUSED_TENSORS:
        out.pop(key, None)
    nested, flat = VLM + "vision_tower.vision_model.", VLM + "vision_tower."
    model_nested = any(k.startswith(nested) for k in model_keys)
    renamed = {}
    for key, value in out.items():
        if not model_nested and key.startswith(nested):
            key = flat + key[len(nested):]
        elif model_nested and key.startswith(flat) and not key.startswith(nested):
            key = nested + key[len(flat):]
        renamed[key] = value
    return renamed


def load_lerobot_pi0(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    tokenizer_dir: str | Path | None = None,
) -> PI0Policy:
    """Builds a :class:`PI0Policy` from a LeRobot 0.6 ``pi0`` / ``pi05`` checkpoint directory.

    Args:
        path: The checkpoint directory.
        device: Torch device.
        dtype: "float32" or "bfloat16".
        tokenizer_dir: Local directory with PaliGemma's tokenizer files (``google/paligemma-3b-pt-224``'s
            tokenizer.json etc.); None -> ``path/tokenizer`` when it exists.

    Returns:
        The policy in eval mode; ``predict_action_chunk`` returns LeRobot's un-normalised actions.
    """
    path = Path(path)
    cfg, pre, post = read_config(path)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else path / "tokenizer"
    if not tok_dir.is_dir():
        raise FileNotFoundError(
            f"{path}: LeRobot PI0/PI0.5 checkpoints carry no tokenizer; pass tokenizer_dir= a local directory with "
            f"the files of PaliGemma's tokenizer (google/paligemma-3b-pt-224: tokenizer.json, tokenizer_config.json)")
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"LeRobot checkpoint file {path / WEIGHTS_FILE} not found")
    tensors = read_safetensors(path / WEIGHTS_FILE)
    config, state_norm, action_norm = to_pi0_config(path, cfg, pre, post, tensors)
    policy = PI0Policy(config, tokenizer=load_tokenizer(tok_dir), init_weights=False)
    model_keys = {k for k in policy.state_dict() if k.startswith("model.")}
    try:
        policy.load_tensors(convert_state_dict(tensors, model_keys), path / WEIGHTS_FILE, prefix_only="model.")
    except CheckpointError as exc:
        raise LeRobotCheckpointError(str(exc)) from exc
    policy.set_normalization_stats(state=state_norm.stats or None, action=action_norm.stats or None)
    policy.to_device_dtype(device, dtype)
    logger.info("loaded LeRobot %s checkpoint %s (cameras %s, state %d, action %d, %.1fM parameters)",
                cfg["type"], path, config.camera_names, config.state_dim, config.action_dim,
                policy.num_parameters() / 1e6)
    return policy.eval()
