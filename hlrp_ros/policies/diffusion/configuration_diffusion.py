"""Configuration of the diffusion action experts (standard Diffusion Policy and its language-conditioned form).

Field names follow LeRobot's ``DiffusionConfig`` where the two mean the same thing, so a LeRobot checkpoint's
``config.json`` maps onto this one field by field (``hlrp_ros.policies.lerobot_diffusion``). The config is a
plain dataclass that round-trips through JSON (``to_dict`` / ``from_dict``, ``save`` / ``load``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
#: Value of ``"type"`` in a native ``config.json`` (LeRobot's own diffusion checkpoints say ``"diffusion"``).
CONFIG_TYPE = "hlrp_diffusion"

NORM_MODES = ("identity", "mean_std", "min_max")
#: ResNet trunks (torchvision layouts): name -> (block kind, blocks per stage).
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
SCHEDULERS = ("DDPM", "DDIM")
PREDICTION_TYPES = ("epsilon", "sample")


def _default_cameras() -> list[str]:
    return ["top"]


@dataclass
class DiffusionConfig:
    """Every size and knob of a diffusion policy. Invariants are checked in ``__post_init__``."""

    # --- Robot interface -------------------------------------------------------------------------------
    # Number of state (proprioception) values per observation.
    state_dim: int = 2
    # Number of action values per time step.
    action_dim: int = 2
    # Names of the joints the actions command, in order (optional, informational for the nodes).
    joint_names: list[str] | None = None
    # Camera names; observations must provide all of them.
    camera_names: list[str] = field(default_factory=_default_cameras)
    # Image size (height, width) the policy was trained on; other sizes are resized with padding to it.
    image_size: tuple[int, int] = (96, 96)

    # --- Observation history and action chunking --------------------------------------------------------
    # Number of observations (the current one and n_obs_steps - 1 before it) the policy conditions on.
    n_obs_steps: int = 2
    # Time between two observations of the history, seconds (the training data's frame period).
    observation_period: float = 0.1
    # Length of the denoised action trajectory (time steps), starting at the oldest observation.
    horizon: int = 16
    # Actions returned per chunk, starting at the current observation (<= horizon - n_obs_steps + 1).
    n_action_steps: int = 8

    # --- Vision encoder (LeRobot's DiffusionRgbEncoder) -------------------------------------------------
    # ResNet trunk, one of BACKBONES (torchvision layout and parameter names).
    vision_backbone: str = "resnet18"
    # ResNet stages run (layer1..layerN). 4: the whole trunk, as LeRobot (stride 32: a 60x60 crop gives a
    # 2x2 map, too coarse for the spatial softmax to place keypoints); 3 stops after layer3 (stride 16, 256
    # channels: 4x4 at 60x60) for small images.
    backbone_stages: int = 4
    # Resize (height, width) before the crop; None: no resize.
    resize_shape: tuple[int, int] | None = None
    # Crop (height, width): random while training (if crop_is_random), centred at inference; None: no crop.
    crop_shape: tuple[int, int] | None = (84, 84)
    crop_is_random: bool = True
    # Replace every BatchNorm of the trunk by GroupNorm(num_channels // 16, num_channels).
    use_group_norm: bool = True
    # Keypoints of the spatial softmax (the image feature has twice as many values).
    spatial_softmax_num_keypoints: int = 32
    # One encoder per camera (True) or one shared by all cameras.
    use_separate_rgb_encoder_per_camera: bool = False

    # --- Conditional 1D UNet -------------------------------------------------------------------------
    # Channels of each temporal downsampling stage (the horizon must divide by 2 ** len(down_dims)).
    down_dims: tuple[int, ...] = (512, 1024, 2048)
    # Kernel size of the UNet's 1D convolutions.
    kernel_size: int = 5
    # GroupNorm groups of the UNet's convolution blocks.
    n_groups: int = 8
    # Width of the diffusion-step embedding.
    diffusion_step_embed_dim: int = 128
    # FiLM scales as well as biases (False: biases only).
    use_film_scale_modulation: bool = True

    # --- Noise schedule (diffusers DDPMScheduler / DDIMScheduler) ---------------------------------------
    noise_scheduler_type: str = "DDPM"
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # What the UNet predicts: the noise ("epsilon") or the clean trajectory ("sample").
    prediction_type: str = "epsilon"
    # Clip the predicted clean trajectory to [-clip_sample_range, clip_sample_range] at each step.
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    # Denoising steps at inference; None -> num_train_timesteps.
    num_inference_steps: int | None = None

    # --- Normalisation -------------------------------------------------------------------------------
    # "identity", "mean_std" ((x - mean) / (std + eps)) or "min_max" (to [-1, 1]); LeRobot's formulas.
    image_norm_mode: str = "identity"
    state_norm_mode: str = "min_max"
    action_norm_mode: str = "min_max"
    norm_eps: float = 1e-8

    # --- Language (the language-conditioned form) -----------------------------------------------------
    # Condition on the instruction: its pooled text feature is appended to the global conditioning.
    language_conditioned: bool = False
    # Maximum instruction tokens (longer ones are truncated and reported).
    tokenizer_max_length: int = 32
    # Token vocabulary of the text encoder (ids of the checkpoint's tokenizer must be below it).
    text_vocab_size: int = 128
    # Width, layers and heads of the trainable text transformer.
    text_hidden_size: int = 64
    text_num_layers: int = 2
    text_num_heads: int = 4
    # Width of the pooled text feature appended to the global conditioning.
    text_feature_dim: int = 64
    # FiLM every ResNet stage's output on the pooled text feature (scale 1 + gamma, bias beta; a zero-initialised
    # projection, so it starts as the identity). Without it the keypoints are computed blind to the instruction
    # and the UNet alone must pick the named object's position out of them.
    text_film_vision: bool = False
    # Optional abstract action tokens: an embedding table, mean-pooled and projected.
    abstract_tokens_enabled: bool = False
    abstract_vocab_size: int = 0
    abstract_max_length: int = 0
    abstract_feature_dim: int = 32

    # Name of the preset or source this config came from (informational).
    preset: str | None = None

    def __post_init__(self) -> None:
        """Normalises JSON types and validates invariants (raises ``ValueError``)."""
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.camera_names = list(self.camera_names)
        self.down_dims = tuple(int(v) for v in self.down_dims)
        for name in ("resize_shape", "crop_shape"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(int(v) for v in value))
        errors: list[str] = []
        if self.state_dim < 1 or self.action_dim < 1:
            errors.append(f"state_dim and action_dim must be >= 1 (got {self.state_dim}, {self.action_dim})")
        if self.joint_names is not None and len(self.joint_names) != self.action_dim:
            errors.append(f"joint_names has {len(self.joint_names)} names but action_dim is {self.action_dim}")
        if not self.camera_names or len(set(self.camera_names)) != len(self.camera_names):
            errors.append(f"camera_names must be non-empty and unique, got {self.camera_names}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            errors.append(f"image_size must be (height, width) > 0, got {self.image_size}")
        if self.n_obs_steps < 1 or self.observation_period <= 0:
            errors.append(f"need n_obs_steps >= 1 and observation_period > 0 "
                          f"(got {self.n_obs_steps}, {self.observation_period})")
        if not 1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1:
            errors.append(f"need 1 <= n_action_steps <= horizon - n_obs_steps + 1 (got n_action_steps="
                          f"{self.n_action_steps}, horizon={self.horizon}, n_obs_steps={self.n_obs_steps})")
        if not self.down_dims or self.horizon % (2 ** len(self.down_dims)) != 0:
            errors.append(f"horizon ({self.horizon}) must be a multiple of 2 ** len(down_dims) ({self.down_dims})")
        if self.vision_backbone not in BACKBONES:
            errors.append(f"vision_backbone must be one of {sorted(BACKBONES)}, got {self.vision_backbone!r}")
        if not 1 <= self.backbone_stages <= 4:
            errors.append(f"backbone_stages must be 1..4, got {self.backbone_stages}")
        source = self.resize_shape or self.image_size
        if self.crop_shape is not None and (min(self.crop_shape) < 1 or self.crop_shape[0] > source[0]
                                            or self.crop_shape[1] > source[1]):
            errors.append(f"crop_shape {self.crop_shape} must fit the (resized) image {tuple(source)}")
        if self.resize_shape is not None and (len(self.resize_shape) != 2 or min(self.resize_shape) < 1):
            errors.append(f"resize_shape must be (height, width) > 0, got {self.resize_shape}")
        if self.spatial_softmax_num_keypoints < 1:
            errors.append("spatial_softmax_num_keypoints must be >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd, got {self.kernel_size}")
        if any(d % self.n_groups for d in self.down_dims):
            errors.append(f"down_dims {self.down_dims} must be multiples of n_groups ({self.n_groups})")
        if self.diffusion_step_embed_dim < 4 or self.diffusion_step_embed_dim % 2:
            errors.append(f"diffusion_step_embed_dim must be even and >= 4, got {self.diffusion_step_embed_dim}")
        if self.noise_scheduler_type not in SCHEDULERS:
            errors.append(f"noise_scheduler_type must be one of {SCHEDULERS}, got {self.noise_scheduler_type!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            errors.append(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.num_train_timesteps < 1:
            errors.append(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.num_inference_steps is not None and not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            errors.append(f"num_inference_steps must be in [1, num_train_timesteps={self.num_train_timesteps}], "
                          f"got {self.num_inference_steps}")
        for name in ("image_norm_mode", "state_norm_mode", "action_norm_mode"):
            if getattr(self, name) not in NORM_MODES:
                errors.append(f"{name} must be one of {NORM_MODES}, got {getattr(self, name)!r}")
        if self.tokenizer_max_length < 1:
            errors.append(f"tokenizer_max_length must be >= 1, got {self.tokenizer_max_length}")
        if self.language_conditioned:
            if self.text_vocab_size < 2 or self.text_feature_dim < 1 or self.text_num_layers < 0:
                errors.append("language_conditioned needs text_vocab_size >= 2, text_feature_dim >= 1 and "
                              "text_num_layers >= 0")
            if self.text_num_heads < 1 or self.text_hidden_size % self.text_num_heads:
                errors.append(f"text_hidden_size ({self.text_hidden_size}) must divide by text_num_heads "
                              f"({self.text_num_heads})")
        if self.text_film_vision and not self.language_conditioned:
            errors.append("text_film_vision needs language_conditioned")
        if self.abstract_tokens_enabled and (self.abstract_vocab_size < 1 or self.abstract_max_length < 1
                                             or self.abstract_feature_dim < 1):
            errors.append("abstract_tokens_enabled needs abstract_vocab_size, abstract_max_length and "
                          "abstract_feature_dim >= 1")
        if errors:
            raise ValueError("Invalid DiffusionConfig: " + "; ".join(errors))

    # --- derived values (the names ActionExpert callers read) --------------------------------------------
    @property
    def chunk_size(self) -> int:
        """Actions per returned chunk (``n_action_steps``; the first is for the current observation)."""
        return self.n_action_steps

    @property
    def num_steps(self) -> int:
        """Default denoising steps (``num_inference_steps`` or ``num_train_timesteps``)."""
        return self.num_inference_steps or self.num_train_timesteps

    @property
    def num_cameras(self) -> int:
        """Number of cameras (images per observation)."""
        return len(self.camera_names)

    @property
    def encoder_image_size(self) -> tuple[int, int]:
        """(height, width) the ResNet trunk sees: the crop, else the resize, else the image size."""
        return tuple(self.crop_shape or self.resize_shape or self.image_size)  # type: ignore[return-value]

    # --- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict, tagged with ``"type": "hlrp_diffusion"``."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        return {"type": CONFIG_TYPE, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        """Builds a config from ``to_dict`` output; unknown keys raise ``ValueError`` naming them."""
        data = dict(data)
        kind = data.pop("type", CONFIG_TYPE)
        if kind != CONFIG_TYPE:
            raise ValueError(f"config type is {kind!r}, expected {CONFIG_TYPE!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DiffusionConfig fields: {unknown}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        """Writes ``config.json`` into ``directory`` and returns its path."""
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DiffusionConfig:
        """Reads ``config.json`` from ``directory`` (or a path to the file itself)."""
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
