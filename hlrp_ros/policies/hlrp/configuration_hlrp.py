"""Configuration of the HLRP action expert (SmolVLA-style VLM prefix + flow-matching expert).

The config is a plain dataclass that round-trips through JSON (``to_dict`` / ``from_dict``,
``save`` / ``load``). The VLM backbone is described by a transformers ``SmolVLMConfig`` stored as a dict,
so a model can always be rebuilt offline with random weights and then filled from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
#: Value of ``"type"`` in a native HLRP ``config.json`` (LeRobot SmolVLA checkpoints say ``"smolvla"``).
CONFIG_TYPE = "hlrp"

NORM_MODES = ("identity", "mean_std", "min_max")
ATTENTION_MODES = ("cross_attn",)
PAD_LANGUAGE_MODES = ("longest", "max_length")


def _default_cameras() -> list[str]:
    return ["top"]


@dataclass
class HLRPConfig:
    """Every size and knob of an HLRP policy.

    Field comments give units; derived values are properties. Invariants are checked in ``__post_init__``.
    """

    # --- Robot interface -------------------------------------------------------------------------------
    # Number of state (proprioception) values fed to the model, before padding to ``max_state_dim``.
    state_dim: int = 2
    # Number of action values per time step produced by the model, before padding to ``max_action_dim``.
    action_dim: int = 2
    # Width of the state vector inside the model (zero padded); None -> ``state_dim``. SmolVLA uses 32.
    max_state_dim: int | None = None
    # Width of the action vector inside the model (noise is drawn at this width); None -> ``action_dim``.
    max_action_dim: int | None = None
    # Names of the joints the actions command, in order (optional, informational for the nodes).
    joint_names: list[str] | None = None
    # Camera names, in the order their tokens enter the prefix. Observations must provide all of them.
    camera_names: list[str] = field(default_factory=_default_cameras)
    # Model input image size (height, width) in pixels; inputs are resized with padding to this size.
    image_size: tuple[int, int] = (512, 512)
    # Padding value of resize-with-pad in [0, 1] pixel units (0 -> -1 after scaling to [-1, 1], as SmolVLA).
    image_pad_value: float = 0.0

    # --- Action chunking and sampling -----------------------------------------------------------------
    # Number of future actions predicted per chunk (time steps).
    chunk_size: int = 50
    # Number of actions of a chunk meant to be executed before re-planning (<= chunk_size).
    n_action_steps: int = 50
    # Number of Euler integration steps from t=1 (noise) to t=0 (actions).
    num_steps: int = 10
    # Real-time chunking by conditioning: in training, the first ``d ~ U{0..rtc_max_delay}`` actions of a
    # chunk are given clean (time 0) and left out of the loss, so at inference the policy continues a
    # chunk prefix it is handed (action steps; 0: not trained so, only guidance can continue a chunk).
    rtc_max_delay: int = 0
    # Training only: the given prefix is bent by a random offset (this std, normalised action units; full
    # at its first action, 0 at its last, so the seam stays continuous). A prefix that is the data's own
    # plan tells where the plan ends; bent, the model must take the goal from the observation.
    rtc_prefix_noise: float = 0.0
    # Sine-cosine time embedding: smallest and largest period (time units, t in [0, 1]).
    min_period: float = 4e-3
    max_period: float = 4.0

    # --- Language --------------------------------------------------------------------------------------
    # Maximum number of instruction tokens (longer instructions are truncated and reported).
    tokenizer_max_length: int = 48
    # "longest" pads a batch to its longest instruction, "max_length" to ``tokenizer_max_length``.
    pad_language_to: str = "longest"
    # Append "\n" to instructions before tokenising (SmolVLA's processor does).
    append_newline: bool = True

    # --- VLM backbone ----------------------------------------------------------------------------------
    # transformers ``SmolVLMConfig.to_dict()`` (SigLIP-style vision tower + pixel shuffle + Llama text model).
    vlm_config: dict[str, Any] = field(default_factory=dict)
    # Number of VLM text layers kept (the first ones); <= 0 keeps all of them.
    num_vlm_layers: int = 16
    # Surround each image's tokens with <fake_token_around_image><global-img> ... <fake_token_around_image>.
    add_image_special_tokens: bool = False
    # Token ids of the image special tokens (SmolVLM2 tokenizer values by default).
    fake_image_token_id: int = 49189
    global_image_token_id: int = 49152
    # Pad the prefix to this many tokens (SmolVLA's ``prefix_length``); <= 0 disables padding.
    prefix_length: int = -1
    # RoPE wavelength used by the attention layers. SmolVLA hard-codes 10_000 (not the text config's theta).
    rope_max_wavelength: float = 10_000.0
    # Bucket vision patch positions as transformers < 5 did (i / n * (1 - 1e-6)): SmolVLA checkpoints were
    # trained that way (patches 0 and 1 of each axis share an embedding). False: exact buckets (i / n).
    legacy_vision_position_ids: bool = True
    # Initialise the vision tower's position embeddings with fixed 2D sine-cosine values.
    vision_sincos_pos_embed: bool = False
    # Keep the vision position embeddings frozen (only meaningful with ``vision_sincos_pos_embed``).
    freeze_vision_pos_embed: bool = False

    # --- Action expert ---------------------------------------------------------------------------------
    # Expert layers; <= 0 -> one per VLM layer. Must divide the number of VLM layers.
    num_expert_layers: int = -1
    # Every n-th layer (index % n == 0) is self-attention over [prefix, actions]; the others cross-attend.
    self_attn_every_n_layers: int = 2
    # Expert hidden size = VLM text hidden size * this multiplier.
    expert_width_multiplier: float = 0.75
    # Only "cross_attn" (SmolVLA's default) is implemented.
    attention_mode: str = "cross_attn"

    # --- Abstract action tokens (optional prefix branch) ---------------------------------------------
    # Enable an embedding table for abstract action token ids, placed as its own attention block in the prefix.
    abstract_tokens_enabled: bool = False
    # Size of the abstract token vocabulary (ids in [0, abstract_vocab_size)).
    abstract_vocab_size: int = 0
    # Maximum number of abstract tokens per observation (longer sequences are rejected).
    abstract_max_length: int = 0

    # --- Normalisation -------------------------------------------------------------------------------
    # "identity", "mean_std" ((x - mean) / (std + eps)) or "min_max" (to [-1, 1]).
    state_norm_mode: str = "mean_std"
    action_norm_mode: str = "mean_std"
    # Epsilon of the normalisation (LeRobot's value).
    norm_eps: float = 1e-8

    # --- Training --------------------------------------------------------------------------------------
    freeze_vision_encoder: bool = True
    train_expert_only: bool = True
    train_state_proj: bool = True

    # Name of the preset this config came from (informational).
    preset: str | None = None

    def __post_init__(self) -> None:
        """Normalises JSON types and validates invariants (raises ``ValueError``)."""
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.camera_names = list(self.camera_names)
        # Canonical JSON form (tuples -> lists), so that a config equals itself after a JSON round trip.
        self.vlm_config = json.loads(json.dumps(self.vlm_config))
        if self.max_state_dim is None:
            self.max_state_dim = self.state_dim
        if self.max_action_dim is None:
            self.max_action_dim = self.action_dim
        errors: list[str] = []
        if self.state_dim < 1 or self.action_dim < 1:
            errors.append(f"state_dim and action_dim must be >= 1 (got {self.state_dim}, {self.action_dim})")
        if self.max_state_dim < self.state_dim:
            errors.append(f"max_state_dim ({self.max_state_dim}) < state_dim ({self.state_dim})")
        if self.max_action_dim < self.action_dim:
            errors.append(f"max_action_dim ({self.max_action_dim}) < action_dim ({self.action_dim})")
        if self.joint_names is not None and len(self.joint_names) != self.action_dim:
            errors.append(f"joint_names has {len(self.joint_names)} names but action_dim is {self.action_dim}")
        if not self.camera_names or len(set(self.camera_names)) != len(self.camera_names):
            errors.append(f"camera_names must be non-empty and unique, got {self.camera_names}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            errors.append(f"image_size must be (height, width) > 0, got {self.image_size}")
        if self.chunk_size < 1 or not 1 <= self.n_action_steps <= self.chunk_size:
            errors.append(
                f"need 1 <= n_action_steps <= chunk_size (got n_action_steps={self.n_action_steps}, "
                f"chunk_size={self.chunk_size})"
            )
        if self.num_steps < 1:
            errors.append(f"num_steps must be >= 1, got {self.num_steps}")
        if not (self.rtc_prefix_noise >= 0 and math.isfinite(self.rtc_prefix_noise)):
            errors.append(f"rtc_prefix_noise must be a finite number >= 0, got {self.rtc_prefix_noise}")
        if not 0 <= self.rtc_max_delay < self.chunk_size:
            errors.append(f"need 0 <= rtc_max_delay < chunk_size (got {self.rtc_max_delay}, {self.chunk_size})")
        if not 0 < self.min_period < self.max_period:
            errors.append(f"need 0 < min_period < max_period (got {self.min_period}, {self.max_period})")
        if self.tokenizer_max_length < 1:
            errors.append(f"tokenizer_max_length must be >= 1, got {self.tokenizer_max_length}")
        if self.pad_language_to not in PAD_LANGUAGE_MODES:
            errors.append(f"pad_language_to must be one of {PAD_LANGUAGE_MODES}, got {self.pad_language_to!r}")
        if self.attention_mode not in ATTENTION_MODES:
            errors.append(f"attention_mode must be one of {ATTENTION_MODES}, got {self.attention_mode!r}")
        if self.expert_width_multiplier <= 0:
            errors.append(f"expert_width_multiplier must be > 0, got {self.expert_width_multiplier}")
        for name in ("state_norm_mode", "action_norm_mode"):
            if getattr(self, name) not in NORM_MODES:
                errors.append(f"{name} must be one of {NORM_MODES}, got {getattr(self, name)!r}")
        if self.abstract_tokens_enabled and (self.abstract_vocab_size < 1 or self.abstract_max_length < 1):
            errors.append(
                "abstract_tokens_enabled needs abstract_vocab_size >= 1 and abstract_max_length >= 1 "
                f"(got {self.abstract_vocab_size}, {self.abstract_max_length})"
            )
        if not self.vlm_config:
            errors.append("vlm_config is empty: build configs with hlrp_ros.policies.hlrp.presets.make_config")
        else:
            text = self.vlm_config.get("text_config", {})
            n_text = int(text.get("num_hidden_layers", 0))
            n_vlm = self.num_vlm_layers if 0 < self.num_vlm_layers <= n_text else n_text
            if self.num_vlm_layers > n_text:
                errors.append(f"num_vlm_layers ({self.num_vlm_layers}) > text layers in vlm_config ({n_text})")
            if self.num_expert_layers > 0 and n_vlm % self.num_expert_layers != 0:
                errors.append(
                    f"num_expert_layers ({self.num_expert_layers}) must divide the VLM layers used ({n_vlm})"
                )
            heads = int(text.get("num_attention_heads", 1))
            kv_heads = int(text.get("num_key_value_heads") or heads)
            if heads % kv_heads != 0:
                errors.append(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
            vocab = int(text.get("vocab_size", 0))
            if self.add_image_special_tokens and not (
                0 <= self.fake_image_token_id < vocab and 0 <= self.global_image_token_id < vocab
            ):
                errors.append(
                    f"image special token ids ({self.fake_image_token_id}, {self.global_image_token_id}) "
                    f"outside the text vocabulary ({vocab})"
                )
        if errors:
            raise ValueError("Invalid HLRPConfig: " + "; ".join(errors))

    # --- derived values -------------------------------------------------------------------------------
    @property
    def text_hidden_size(self) -> int:
        """Hidden size of the VLM text model."""
        return int(self.vlm_config["text_config"]["hidden_size"])

    @property
    def expert_hidden_size(self) -> int:
        """Hidden size of the action expert (``int(text_hidden_size * expert_width_multiplier)``)."""
        return int(self.text_hidden_size * self.expert_width_multiplier)

    @property
    def num_cameras(self) -> int:
        """Number of cameras (images per observation)."""
        return len(self.camera_names)

    # --- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict, tagged with ``"type": "hlrp"``."""
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        return {"type": CONFIG_TYPE, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HLRPConfig:
        """Builds a config from ``to_dict`` output; unknown keys raise ``ValueError`` naming them."""
        data = dict(data)
        kind = data.pop("type", CONFIG_TYPE)
        if kind != CONFIG_TYPE:
            raise ValueError(f"config type is {kind!r}, expected {CONFIG_TYPE!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HLRPConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        """The config as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, directory: str | Path) -> Path:
        """Writes ``config.json`` into ``directory`` and returns its path."""
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> HLRPConfig:
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
