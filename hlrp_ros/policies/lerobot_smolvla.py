"""Serve a LeRobot SmolVLA checkpoint with the HLRP model (issue 6).

A LeRobot SmolVLA checkpoint directory (0.4.x to 0.6.x) holds::

    config.json                      {"type": "smolvla", input/output features, sizes, ...}
    model.safetensors                weights, keys "model.<module>" (same module names as HLRP's VLAFlowMatching)
    policy_preprocessor.json         steps: rename, to_batch, smolvla_new_line, tokenizer, device, normalizer
    policy_preprocessor_step_*_normalizer_processor.safetensors     "<feature>.<stat>" statistics
    policy_postprocessor.json        steps: unnormalizer, device
    policy_postprocessor_step_*_unnormalizer_processor.safetensors

It does not contain the VLM's architecture nor its tokenizer: LeRobot reads both from ``vlm_model_name``
(a hub id such as ``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``). Here they come from a local directory
(``tokenizer_dir``) holding that VLM's ``config.json`` and tokenizer files; no weights are needed from it.

:func:`load_lerobot_smolvla` reproduces LeRobot's inference path:

* images: uint8 HWC -> float [0, 1] -> bilinear resize keeping the aspect ratio to
  ``resize_imgs_with_padding`` (LeRobot passes it as ``(width, height)``), padded left/top with 0 -> [-1, 1];
  empty cameras (``observation.images.empty_camera_*``) are fully masked in LeRobot and therefore dropped
  (exact without image special tokens; that combination with special tokens is rejected);
* language: the task gets a trailing ``"\\n"`` unless it has one (``smolvla_new_line_processor``), then it is
  tokenised with the processor's ``max_length`` / truncation / padding ("longest" or "max_length", right);
* state: normalised with the preprocessor's mode and statistics, zero padded to ``max_state_dim``;
* actions: sampled at ``max_action_dim`` from the given noise, truncated to the dataset's action dim and
  un-normalised with the postprocessor's mode and statistics.

Normalisation modes: IDENTITY, MEAN_STD, MIN_MAX, and QUANTILES / QUANTILE10 (the same formula as MIN_MAX
with q01/q99 resp. q10/q90 as the bounds). Anything this path cannot reproduce (unknown processor steps,
unknown or missing weights, aloha adaptations, multi-step observations, non-identity image normalisation,
...) raises :class:`LeRobotCheckpointError` naming it. Config keys this loader does not know (a newer
LeRobot's) are logged as a warning naming them: the settings that change SmolVLA's computation are all known.

Vision position ids follow the LeRobot generation that wrote the checkpoint (``vision_position_ids``):
LeRobot 0.4.x runs transformers 4, whose SmolVLM buckets patch coordinates as ``i / n * (1 - 1e-6)``
(patches 0 and 1 of an axis share a position embedding); LeRobot 0.5 and later run transformers 5, which
buckets ``i / n`` (ids ``0..n-1``). ``"auto"`` reads the generation from ``config.json``: LeRobot 0.6 added
``pretrained_revision`` to every policy config, so its presence means transformers 5; without it the
checkpoint is taken as 0.4.x. LeRobot 0.5.x writes the same keys as 0.4.x while running transformers 5:
pass ``"transformers5"`` for its checkpoints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hlrp_ros.policies.common.weights import tensor_problems
from hlrp_ros.policies.hlrp.configuration_hlrp import HLRPConfig
from hlrp_ros.policies.hlrp.modeling_hlrp import CheckpointError, HLRPPolicy, read_safetensors
from hlrp_ros.policies.hlrp.processor_hlrp import load_tokenizer

logger = logging.getLogger(__name__)

LEROBOT_TYPE = "smolvla"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
EMPTY_CAMERA_PREFIX = IMAGE_PREFIX + "empty_camera_"

#: config.json fields that only matter for training, hub upload or LeRobot's runtime: read and ignored.
IGNORED_CONFIG_KEYS = frozenset({
    "type", "device", "use_amp", "use_peft", "push_to_hub", "repo_id", "private", "tags", "license",
    "pretrained_path", "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay",
    "optimizer_grad_clip_norm", "scheduler_warmup_steps", "scheduler_decay_steps", "scheduler_decay_lr",
    "vlm_model_name", "load_vlm_weights", "compile_model", "compile_mode", "use_cache", "pretrained_revision",
})
#: config.json fields the conversion reads (or checks for a supported value).
USED_CONFIG_KEYS = frozenset({
    "n_obs_steps", "input_features", "output_features", "chunk_size", "n_action_steps",
    "normalization_mapping", "max_state_dim", "max_action_dim", "resize_imgs_with_padding", "empty_cameras",
    "adapt_to_pi_aloha", "use_delta_joint_actions_aloha", "tokenizer_max_length", "num_steps",
    "freeze_vision_encoder", "train_expert_only", "train_state_proj", "add_image_special_tokens",
    "attention_mode", "prefix_length", "pad_language_to", "num_expert_layers", "num_vlm_layers",
    "self_attn_every_n_layers", "expert_width_multiplier", "min_period", "max_period", "rtc_config",
})
#: LeRobot NormalizationMode -> (HLRP mode, stat used as "min", stat used as "max").
NORM_MODES: dict[str, tuple[str, str | None, str | None]] = {
    "IDENTITY": ("identity", None, None),
    "MEAN_STD": ("mean_std", None, None),
    "MIN_MAX": ("min_max", "min", "max"),
    "QUANTILES": ("min_max", "q01", "q99"),
    "QUANTILE10": ("min_max", "q10", "q90"),
}
PRE_STEPS = ("rename_observations_processor", "to_batch_processor", "smolvla_new_line_processor",
             "tokenizer_processor", "device_processor", "normalizer_processor")
POST_STEPS = ("unnormalizer_processor", "device_processor")
#: ``vision_position_ids`` choices: detect from the checkpoint, or the transformers generation's rule.
VISION_POSITION_RULES = ("auto", "transformers4", "transformers5")
#: config.json keys first written by LeRobot 0.6 (whose SmolVLA runs transformers 5).
LEROBOT_06_KEYS = frozenset({"pretrained_revision"})


class LeRobotCheckpointError(CheckpointError):
    """The LeRobot checkpoint is malformed or uses something this loader cannot reproduce."""


@dataclass
class Normalization:
    """How one feature is (un)normalised: HLRP mode, statistics for :meth:`Normalizer.set_stats`, eps."""

    mode: str
    stats: dict[str, Tensor]
    eps: float


@dataclass
class LeRobotSmolVLA:
    """A parsed LeRobot SmolVLA checkpoint (everything but the weights).

    Attributes:
        config: ``config.json`` as a dict.
        camera_keys: LeRobot image feature keys fed to the model, in prefix order (empty cameras dropped).
        state_dim / action_dim: Dataset dimensions (before padding to max_state_dim / max_action_dim).
        state_norm / action_norm: From the pre- / post-processor.
        append_newline: Whether the preprocessor has ``smolvla_new_line_processor``.
        tokenizer: The tokenizer step's config (max_length, padding, padding_side, truncation, tokenizer_name).
    """

    config: dict[str, Any]
    camera_keys: list[str]
    state_dim: int
    action_dim: int
    state_norm: Normalization
    action_norm: Normalization
    append_newline: bool
    tokenizer: dict[str, Any]

    @property
    def camera_names(self) -> list[str]:
        """Observation camera names: ``observation.images.<name>`` -> ``<name>``."""
        return [camera_name(k) for k in self.camera_keys]


def camera_name(feature_key: str) -> str:
    """LeRobot image feature key -> camera name used in :class:`~hlrp_ros.policies.base.Observation`."""
    if feature_key.startswith(IMAGE_PREFIX):
        return feature_key[len(IMAGE_PREFIX):]
    return feature_key.rsplit(".", 1)[-1]  # e.g. "observation.image" -> "image"


def is_lerobot_smolvla(path: str | Path) -> bool:
    """True when ``path/config.json`` says ``"type": "smolvla"``."""
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text()).get("type") == LEROBOT_TYPE
    except (OSError, json.JSONDecodeError):
        return False


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"LeRobot checkpoint file {path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LeRobotCheckpointError(f"{path} is not valid JSON: {exc}") from exc


def _fail(path: Path, what: str) -> LeRobotCheckpointError:
    return LeRobotCheckpointError(f"{path}: {what}")


def _read_steps(path: Path, known: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Processor pipeline JSON -> registry name -> step entry (with its statistics loaded as ``"stats"``)."""
    data = _read_json(path)
    steps: dict[str, dict[str, Any]] = {}
    for entry in data.get("steps", []):
        name = entry.get("registry_name") or entry.get("class")
        if name not in known:
            raise _fail(path, f"unsupported processor step {name!r} (supported: {list(known)})")
        if name in steps:
            raise _fail(path, f"processor step {name!r} appears twice")
        entry = dict(entry)
        if "state_file" in entry:
            flat = read_safetensors(path.parent / entry["state_file"])
            stats: dict[str, dict[str, Tensor]] = {}
            for flat_key, tensor in flat.items():
                key, stat = flat_key.rsplit(".", 1)
                stats.setdefault(key, {})[stat] = tensor.to(torch.float32)
            entry["stats"] = stats
        steps[name] = entry
    return steps


def _normalization(path: Path, step: dict[str, Any] | None, feature_key: str, feature_type: str) -> Normalization:
    """The mode/statistics a LeRobot (un)normalizer step applies to ``feature_key``."""
    if step is None:
        return Normalization("identity", {}, 1e-8)
    cfg = step.get("config", {})
    eps = float(cfg.get("eps", 1e-8))
    lr_mode = cfg.get("norm_map", {}).get(feature_type, "IDENTITY")
    if lr_mode not in NORM_MODES:
        raise _fail(path, f"unsupported normalization mode {lr_mode!r} for {feature_type}")
    mode, lo, hi = NORM_MODES[lr_mode]
    stats = step.get("stats", {}).get(feature_key)
    # Observations are (un)normalised only when listed in the step's features; the action always is.
    listed = feature_type == "ACTION" or feature_key in cfg.get("features", {feature_key: None})
    if mode == "identity" or not listed:
        return Normalization("identity", {}, eps)
    if stats is None:
        # LeRobot's normalizer passes a feature through unchanged when it has no statistics.
        logger.warning("%s: no statistics for %r; it is not normalised (as in LeRobot)", path, feature_key)
        return Normalization("identity", {}, eps)
    needed = ("mean", "std") if mode == "mean_std" else (lo, hi)
    missing = [s for s in needed if s not in stats]
    if missing:
        raise _fail(path, f"{lr_mode} normalisation of {feature_key!r} needs statistics {missing}")
    if mode == "mean_std":
        return Normalization(mode, {"mean": stats["mean"], "std": stats["std"]}, eps)
    return Normalization(mode, {"min": stats[lo], "max": stats[hi]}, eps)


def read_lerobot_checkpoint(path: str | Path) -> LeRobotSmolVLA:
    """Parses config.json and the processor files of a LeRobot SmolVLA checkpoint (no weights).

    Raises:
        FileNotFoundError: A required file is missing.
        LeRobotCheckpointError: Unknown/unsupported config keys, values or processor steps (named).
    """
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    cfg = _read_json(cfg_path)
    if cfg.get("type") != LEROBOT_TYPE:
        raise _fail(cfg_path, f'"type" is {cfg.get("type")!r}, expected {LEROBOT_TYPE!r}')
    unknown = sorted(set(cfg) - IGNORED_CONFIG_KEYS - USED_CONFIG_KEYS)
    if unknown:
        logger.warning("%s: config key(s) %s are unknown to this loader (a newer LeRobot?); ignored", cfg_path, unknown)
    checks = {
        "n_obs_steps": (cfg.get("n_obs_steps", 1) == 1, "only n_obs_steps=1 is supported"),
        "adapt_to_pi_aloha": (not cfg.get("adapt_to_pi_aloha", False), "aloha adaptation is not supported"),
        "use_delta_joint_actions_aloha": (not cfg.get("use_delta_joint_actions_aloha", False),
                                          "aloha delta actions are not supported"),
        "attention_mode": (cfg.get("attention_mode", "cross_attn") == "cross_attn", "only cross_attn"),
        "rtc_config": (not (cfg.get("rtc_config") or {}).get("enabled", False),
                       "real-time chunking (rtc_config.enabled) is not supported"),
    }
    bad = [f"{k}={cfg.get(k)!r} ({why})" for k, (ok, why) in checks.items() if not ok]
    if bad:
        raise _fail(cfg_path, "unsupported setting(s): " + "; ".join(bad))

    inputs: dict[str, dict[str, Any]] = cfg.get("input_features") or {}
    outputs: dict[str, dict[str, Any]] = cfg.get("output_features") or {}
    camera_keys = [k for k, f in inputs.items() if f.get("type") == "VISUAL" and not k.startswith(EMPTY_CAMERA_PREFIX)]
    others = [k for k, f in inputs.items() if f.get("type") not in ("VISUAL", "STATE")]
    states = [k for k, f in inputs.items() if f.get("type") == "STATE"]
    actions = [k for k, f in outputs.items() if f.get("type") == "ACTION"]
    if others or states != [STATE_KEY] or actions != [ACTION_KEY] or set(outputs) != {ACTION_KEY}:
        raise _fail(cfg_path, f"unsupported features: need image features, {STATE_KEY!r} and {ACTION_KEY!r}; "
                              f"got inputs {sorted(inputs)} and outputs {sorted(outputs)}")
    if not camera_keys:
        raise _fail(cfg_path, "no image features")
    n_empty = max(int(cfg.get("empty_cameras", 0)), sum(k.startswith(EMPTY_CAMERA_PREFIX) for k in inputs))
    if n_empty and cfg.get("add_image_special_tokens", False):
        # Without special tokens an empty camera contributes only masked tokens (dropping it is exact); with
        # them its unmasked <fake_token_around_image><global-img>...<fake_token_around_image> stay in the prefix.
        raise _fail(cfg_path, f"empty_cameras={n_empty} together with add_image_special_tokens=true is not supported")
    names = [camera_name(k) for k in camera_keys]
    if len(set(names)) != len(names):
        raise _fail(cfg_path, f"image features {camera_keys} give duplicate camera names {names}")
    state_dim = int(inputs[STATE_KEY]["shape"][0])
    action_dim = int(outputs[ACTION_KEY]["shape"][0])
    if state_dim > int(cfg.get("max_state_dim", 32)):
        raise _fail(cfg_path, f"state_dim {state_dim} > max_state_dim {cfg.get('max_state_dim')} "
                              "(LeRobot cannot pad it either)")

    pre_path, post_path = path / PREPROCESSOR_FILE, path / POSTPROCESSOR_FILE
    pre = _read_steps(pre_path, PRE_STEPS)
    post = _read_steps(post_path, POST_STEPS)
    if "tokenizer_processor" not in pre:
        raise _fail(pre_path, "no tokenizer_processor step")
    tok = dict(pre["tokenizer_processor"].get("config", {}))
    tok_bad = []
    if tok.get("padding_side", "right") != "right":
        tok_bad.append(f"padding_side={tok.get('padding_side')!r}")
    if not tok.get("truncation", True):
        tok_bad.append("truncation=False")
    if tok.get("padding", "max_length") not in ("longest", "max_length"):
        tok_bad.append(f"padding={tok.get('padding')!r}")
    if tok.get("task_key", "task") != "task":
        tok_bad.append(f"task_key={tok.get('task_key')!r}")
    if tok_bad:
        raise _fail(pre_path, "unsupported tokenizer_processor setting(s): " + ", ".join(tok_bad))
    renames = pre.get("rename_observations_processor", {}).get("config", {}).get("rename_map") or {}
    if renames:
        logger.info("%s renames observation keys %s; name cameras after the renamed keys", pre_path, renames)

    normalizer = pre.get("normalizer_processor")
    if normalizer is not None:
        visual = normalizer.get("config", {}).get("norm_map", {}).get("VISUAL", "IDENTITY")
        if visual != "IDENTITY" and any(k in normalizer.get("stats", {}) for k in camera_keys):
            raise _fail(pre_path, f"image normalisation {visual!r} is not supported (SmolVLA uses IDENTITY)")
    state_norm = _normalization(pre_path, normalizer, STATE_KEY, "STATE")
    action_norm = _normalization(post_path, post.get("unnormalizer_processor"), ACTION_KEY, "ACTION")
    return LeRobotSmolVLA(
        config=cfg,
        camera_keys=camera_keys,
        state_dim=state_dim,
        action_dim=action_dim,
        state_norm=state_norm,
        action_norm=action_norm,
        append_newline="smolvla_new_line_processor" in pre,
        tokenizer=tok,
    )


def resolve_tokenizer_dir(path: Path, parsed: LeRobotSmolVLA, tokenizer_dir: str | Path | None) -> Path:
    """The local VLM directory: ``tokenizer_dir`` if given, else the checkpoint's ``vlm_model_name`` /
    tokenizer name when that is an existing local directory (absolute, or relative to the checkpoint's
    parent or the working directory)."""
    if tokenizer_dir is not None:
        tok = Path(tokenizer_dir)
        if not tok.is_dir():
            raise FileNotFoundError(f"tokenizer_dir {tok} is not a directory")
        return tok
    for name in (parsed.tokenizer.get("tokenizer_name"), parsed.config.get("vlm_model_name")):
        if not name:
            continue
        for candidate in (Path(name), path.parent / name, path / name):
            if (candidate / CONFIG_FILE).is_file():
                return candidate
    raise FileNotFoundError(
        f"{path}: LeRobot checkpoints carry no tokenizer; pass tokenizer_dir= a local directory with the VLM's "
        f"config.json and tokenizer files ({parsed.config.get('vlm_model_name')!r}, no weights needed)"
    )


def read_vlm_config(tok_dir: Path) -> dict[str, Any]:
    """The VLM's ``config.json`` (a SmolVLM config) from the local VLM directory, as a dict."""
    from transformers import SmolVLMConfig

    if not (tok_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{tok_dir} has no {CONFIG_FILE}: the VLM directory must hold the backbone's config.json "
            "(e.g. a local copy of HuggingFaceTB/SmolVLM2-500M-Video-Instruct's config and tokenizer files)"
        )
    cfg = SmolVLMConfig.from_pretrained(str(tok_dir), local_files_only=True)
    return cfg.to_dict()


def legacy_vision_positions(parsed: LeRobotSmolVLA, rule: str = "auto") -> bool:
    """Whether the checkpoint's vision position ids follow transformers 4 (see the module docstring).

    Args:
        parsed: The parsed checkpoint.
        rule: One of :data:`VISION_POSITION_RULES`.
    """
    if rule not in VISION_POSITION_RULES:
        raise ValueError(f"vision_position_ids must be one of {VISION_POSITION_RULES}, got {rule!r}")
    if rule != "auto":
        return rule == "transformers4"
    return not (LEROBOT_06_KEYS & set(parsed.config))


def to_hlrp_config(parsed: LeRobotSmolVLA, vlm_config: dict[str, Any], tokenizer: Any,
                   vision_position_ids: str = "auto") -> HLRPConfig:
    """Builds the equivalent :class:`HLRPConfig` (``vision_position_ids``: see :func:`legacy_vision_positions`)."""
    cfg = parsed.config
    resize = cfg.get("resize_imgs_with_padding")
    if resize is None:
        shapes = {tuple(cfg["input_features"][k]["shape"][1:]) for k in parsed.camera_keys}
        if len(shapes) != 1:
            raise LeRobotCheckpointError(
                f"resize_imgs_with_padding is null and the cameras have different shapes {sorted(shapes)}"
            )
        image_size = shapes.pop()
    else:
        image_size = (int(resize[1]), int(resize[0]))  # LeRobot: resize_with_pad(img, *resize) = (width, height)
    for name, norm in (("state", parsed.state_norm), ("action", parsed.action_norm)):
        if norm.eps != parsed.state_norm.eps and norm.mode == "min_max":
            logger.warning("%s normaliser eps %g differs from the state's %g", name, norm.eps, parsed.state_norm.eps)
    fake_id = tokenizer.convert_tokens_to_ids("<fake_token_around_image>")
    global_id = tokenizer.convert_tokens_to_ids("<global-img>")
    if cfg.get("add_image_special_tokens", False) and (fake_id is None or global_id is None
                                                        or fake_id == tokenizer.unk_token_id):
        raise LeRobotCheckpointError("add_image_special_tokens needs <fake_token_around_image> and <global-img> "
                                     "in the tokenizer")
    return HLRPConfig(
        state_dim=parsed.state_dim,
        action_dim=parsed.action_dim,
        max_state_dim=int(cfg.get("max_state_dim", 32)),
        max_action_dim=int(cfg.get("max_action_dim", 32)),
        camera_names=parsed.camera_names,
        image_size=image_size,
        image_pad_value=0.0,
        chunk_size=int(cfg.get("chunk_size", 50)),
        n_action_steps=int(cfg.get("n_action_steps", 50)),
        num_steps=int(cfg.get("num_steps", 10)),
        min_period=float(cfg.get("min_period", 4e-3)),
        max_period=float(cfg.get("max_period", 4.0)),
        tokenizer_max_length=int(parsed.tokenizer.get("max_length", cfg.get("tokenizer_max_length", 48))),
        pad_language_to=str(parsed.tokenizer.get("padding", cfg.get("pad_language_to", "longest"))),
        append_newline=parsed.append_newline,
        vlm_config=vlm_config,
        num_vlm_layers=int(cfg.get("num_vlm_layers", 16)),
        add_image_special_tokens=bool(cfg.get("add_image_special_tokens", False)),
        fake_image_token_id=int(fake_id if fake_id is not None else 0),
        global_image_token_id=int(global_id if global_id is not None else 0),
        prefix_length=int(cfg.get("prefix_length", -1)),
        rope_max_wavelength=10_000.0,
        legacy_vision_position_ids=legacy_vision_positions(parsed, vision_position_ids),
        num_expert_layers=int(cfg.get("num_expert_layers", -1)),
        self_attn_every_n_layers=int(cfg.get("self_attn_every_n_layers", 2)),
        expert_width_multiplier=float(cfg.get("expert_width_multiplier", 0.75)),
        attention_mode=str(cfg.get("attention_mode", "cross_attn")),
        state_norm_mode=parsed.state_norm.mode,
        action_norm_mode=parsed.action_norm.mode,
        norm_eps=parsed.state_norm.eps,
        freeze_vision_encoder=bool(cfg.get("freeze_vision_encoder", True)),
        train_expert_only=bool(cfg.get("train_expert_only", True)),
        train_state_proj=bool(cfg.get("train_state_proj", True)),
        preset="lerobot-smolvla",
    )


def convert_state_dict(tensors: dict[str, Tensor], expected: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    """Maps LeRobot weight names onto the HLRP policy's (both use ``model.<module>``) and checks them.

    Args:
        tensors: LeRobot ``model.safetensors`` contents.
        expected: The HLRP policy's ``state_dict()`` restricted to the network (``model.*``).
        source: File name for messages.

    Raises:
        LeRobotCheckpointError: Unknown, missing or mis-shaped tensors, each named.
    """
    problems = tensor_problems(expected, tensors, extra="unknown", limit=None)
    if problems:
        raise LeRobotCheckpointError(f"{source}: " + "; ".join(problems))
    return {key: tensors[key] for key in expected}


def load_lerobot_smolvla(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    tokenizer_dir: str | Path | None = None,
    vision_position_ids: str = "auto",
) -> HLRPPolicy:
    """Builds an :class:`HLRPPolicy` from a LeRobot 0.4.x-0.6.x SmolVLA checkpoint directory.

    Args:
        path: The LeRobot checkpoint directory (config.json, model.safetensors, processor files).
        device: Torch device.
        dtype: "float32" or "bfloat16".
        tokenizer_dir: Local directory with the VLM's config.json and tokenizer files; None -> the
            checkpoint's ``vlm_model_name`` if that is an existing local directory.
        vision_position_ids: "auto" (from the LeRobot generation that wrote the checkpoint),
            "transformers4" (LeRobot 0.4.x) or "transformers5" (LeRobot 0.5 and later); see the module docstring.

    Returns:
        The policy in eval mode; ``predict_action_chunk`` returns LeRobot's un-normalised actions
        ``(chunk_size, action_dim)``. Cameras are ``policy.config.camera_names`` (LeRobot
        ``observation.images.<name>`` keys without the prefix).
    """
    path = Path(path)
    parsed = read_lerobot_checkpoint(path)
    tok_dir = resolve_tokenizer_dir(path, parsed, tokenizer_dir)
    tokenizer = load_tokenizer(tok_dir)
    config = to_hlrp_config(parsed, read_vlm_config(tok_dir), tokenizer, vision_position_ids)
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"LeRobot checkpoint file {path / WEIGHTS_FILE} not found")
    weights = read_safetensors(path / WEIGHTS_FILE)
    # No random initialisation: convert_state_dict guarantees every network tensor is loaded below
    # (for smolvla-base sizes the skipped init is most of the start-up time).
    policy = HLRPPolicy(config, tokenizer=tokenizer, init_weights=False)
    expected = {k: v for k, v in policy.state_dict().items() if k.startswith("model.")}
    state = convert_state_dict(weights, expected, path / WEIGHTS_FILE)
    policy.load_state_dict(state, strict=False)
    policy.set_normalization_stats(state=parsed.state_norm.stats or None, action=parsed.action_norm.stats or None)
    policy.to_device_dtype(device, dtype)
    logger.info("loaded LeRobot SmolVLA checkpoint %s (cameras %s, state %d, action %d, tokenizer %s, "
                "vision position ids of transformers %d)", path, config.camera_names, config.state_dim,
                config.action_dim, tok_dir, 4 if config.legacy_vision_position_ids else 5)
    return policy.eval()
