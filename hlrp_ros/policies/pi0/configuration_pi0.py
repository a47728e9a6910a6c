"""Configuration of the PI-style joint expert (PI0 and PI0.5).

A PaliGemma prefix (SigLIP vision tower + linear projector, Gemma language model) and a smaller Gemma action
expert share every attention layer: each stream has its own weights and the two attend jointly. The two
variants differ in how state and time enter:

* ``pi0``: the state is one token of the suffix (projected into the expert width); the flow-matching time is
  fused with each noisy action by an MLP (``action_time_mlp_in/out``).
* ``pi05``: the state is discretised into 256 bins and written into the prompt; the time conditions the
  expert through adaptive RMSNorm (scale, shift and a residual gate from ``time_mlp_in/out``); no state token.

The sizes are plain dicts (``paligemma``, ``expert``, ``vision``) so a model can always be rebuilt offline
with random weights and then filled from a checkpoint. The config round-trips through JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
#: ``"type"`` of a native checkpoint's ``config.json`` (LeRobot's say ``"pi0"`` / ``"pi05"``).
CONFIG_TYPE = "hlrp_pi0"
VARIANTS = ("pi0", "pi05")
NORM_MODES = ("identity", "mean_std", "min_max")
PAD_LANGUAGE_MODES = ("longest", "max_length")
#: Gemma sizes fixed by name (openpi / LeRobot ``get_gemma_config``).
GEMMA_VARIANTS: dict[str, dict[str, int]] = {
    "gemma_300m": {"width": 1024, "depth": 18, "mlp_dim": 4096, "num_heads": 8, "num_kv_heads": 1, "head_dim": 256},
    "gemma_2b": {"width": 2048, "depth": 18, "mlp_dim": 16384, "num_heads": 8, "num_kv_heads": 1, "head_dim": 256},
}
#: PaliGemma's vocabulary (Gemma tokenizer + 1024 location + 128 segmentation tokens).
PALIGEMMA_VOCAB_SIZE = 257152
#: SigLIP so400m/14 at 224 pixels as PaliGemma 3B uses it (intermediate size as openpi sets it).
SIGLIP_SO400M: dict[str, Any] = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh",
}
GEMMA_KEYS = ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim")


def _default_cameras() -> list[str]:
    return ["top"]


@dataclass
class PI0Config:
    """Every size and knob of a PI0 / PI0.5 policy (invariants checked in ``__post_init__``)."""

    # "pi0" (state token, action-time MLP) or "pi05" (state in the prompt, adaptive RMSNorm time).
    variant: str = "pi0"

    # --- Robot interface -------------------------------------------------------------------------------
    state_dim: int = 2
    action_dim: int = 2
    # Widths inside the model (zero padded); None -> state_dim / action_dim. openpi uses 32.
    max_state_dim: int | None = None
    max_action_dim: int | None = None
    # Names of the joints the actions command (optional, for the nodes).
    joint_names: list[str] | None = None
    # Cameras in prefix order; observations must provide all of them.
    camera_names: list[str] = field(default_factory=_default_cameras)
    # Model image size (height, width); images are resized keeping the aspect ratio and padded centred (black).
    image_size: tuple[int, int] = (224, 224)

    # --- Chunking and sampling ---------------------------------------------------------------------------
    chunk_size: int = 50
    n_action_steps: int = 50
    num_steps: int = 10
    # Sine-cosine time embedding periods.
    min_period: float = 4e-3
    max_period: float = 4.0

    # --- Language --------------------------------------------------------------------------------------
    tokenizer_max_length: int = 48
    # "max_length" pads every prompt to tokenizer_max_length (LeRobot's pi0/pi05 processors), "longest" to the batch's.
    pad_language_to: str = "max_length"
    # Append "\n" to the instruction (PI0's processor does; PI0.5 builds its own prompt).
    append_newline: bool = True
    # PI0.5: number of bins the normalised state ([-1, 1]) is discretised into for the prompt.
    state_bins: int = 256

    # --- Networks --------------------------------------------------------------------------------------
    # PaliGemma language model and action expert: width, depth, mlp_dim, num_heads, num_kv_heads, head_dim.
    paligemma: dict[str, int] = field(default_factory=lambda: dict(GEMMA_VARIANTS["gemma_2b"]))
    expert: dict[str, int] = field(default_factory=lambda: dict(GEMMA_VARIANTS["gemma_300m"]))
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    # transformers SiglipVisionConfig fields (hidden_size, intermediate_size, layers, heads, patch, image size).
    vision: dict[str, Any] = field(default_factory=lambda: dict(SIGLIP_SO400M))
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0

    # --- Normalisation -------------------------------------------------------------------------------
    state_norm_mode: str = "mean_std"
    action_norm_mode: str = "mean_std"
    norm_eps: float = 1e-8

    # --- Training --------------------------------------------------------------------------------------
    freeze_vision_encoder: bool = False
    train_expert_only: bool = False

    preset: str | None = None

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.camera_names = list(self.camera_names)
        self.paligemma = {k: int(v) for k, v in self.paligemma.items()}
        self.expert = {k: int(v) for k, v in self.expert.items()}
        self.vision = json.loads(json.dumps(self.vision))
        if self.max_state_dim is None:
            self.max_state_dim = self.state_dim
        if self.max_action_dim is None:
            self.max_action_dim = self.action_dim
        errors: list[str] = []
        if self.variant not in VARIANTS:
            errors.append(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.state_dim < 1 or self.action_dim < 1:
            errors.append(f"state_dim and action_dim must be >= 1 (got {self.state_dim}, {self.action_dim})")
        if self.max_state_dim < self.state_dim or self.max_action_dim < self.action_dim:
            errors.append(f"max_state_dim/max_action_dim ({self.max_state_dim}, {self.max_action_dim}) below "
                          f"state_dim/action_dim ({self.state_dim}, {self.action_dim})")
        if self.joint_names is not None and len(self.joint_names) != self.action_dim:
            errors.append(f"joint_names has {len(self.joint_names)} names but action_dim is {self.action_dim}")
        if not self.camera_names or len(set(self.camera_names)) != len(self.camera_names):
            errors.append(f"camera_names must be non-empty and unique, got {self.camera_names}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            errors.append(f"image_size must be (height, width) > 0, got {self.image_size}")
        if self.chunk_size < 1 or not 1 <= self.n_action_steps <= self.chunk_size:
            errors.append(f"need 1 <= n_action_steps <= chunk_size (got {self.n_action_steps}, {self.chunk_size})")
        if self.num_steps < 1:
            errors.append(f"num_steps must be >= 1, got {self.num_steps}")
        if self.tokenizer_max_length < 1:
            errors.append(f"tokenizer_max_length must be >= 1, got {self.tokenizer_max_length}")
        if self.pad_language_to not in PAD_LANGUAGE_MODES:
            errors.append(f"pad_language_to must be one of {PAD_LANGUAGE_MODES}, got {self.pad_language_to!r}")
        for name in ("state_norm_mode", "action_norm_mode"):
            if getattr(self, name) not in NORM_MODES:
                errors.append(f"{name} must be one of {NORM_MODES}, got {getattr(self, name)!r}")
        for name in ("paligemma", "expert"):
            sizes = getattr(self, name)
            missing = [k for k in GEMMA_KEYS if k not in sizes]
            if missing:
                errors.append(f"{name} lacks {missing}")
                continue
            if sizes["num_heads"] % sizes["num_kv_heads"]:
                errors.append(f"{name}: num_heads must be a multiple of num_kv_heads")
        if not any(e.startswith(("paligemma", "expert")) for e in errors):
            p, e = self.paligemma, self.expert
            joint = ("num_heads", "num_kv_heads", "head_dim", "depth")
            if any(p[k] != e[k] for k in joint):
                errors.append(f"the joint pass needs the same {joint} in paligemma and expert "
                              f"(got {[p[k] for k in joint]} and {[e[k] for k in joint]})")
        if int(self.vision.get("image_size", 0)) != self.image_size[0] or self.image_size[0] != self.image_size[1]:
            errors.append(f"image_size {self.image_size} must be square and equal vision.image_size "
                          f"({self.vision.get('image_size')})")
        if errors:
            raise ValueError("Invalid PI0Config: " + "; ".join(errors))

    # --- derived values -------------------------------------------------------------------------------
    @property
    def is_pi05(self) -> bool:
        """True for PI0.5 (state in the prompt, adaptive RMSNorm time conditioning)."""
        return self.variant == "pi05"

    @property
    def width(self) -> int:
        """Hidden size of the PaliGemma language model."""
        return self.paligemma["width"]

    @property
    def expert_width(self) -> int:
        """Hidden size of the action expert."""
        return self.expert["width"]

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    # --- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        return {"type": CONFIG_TYPE, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PI0Config:
        """Builds a config from ``to_dict`` output; unknown keys raise ``ValueError`` naming them."""
        data = dict(data)
        kind = data.pop("type", CONFIG_TYPE)
        if kind != CONFIG_TYPE:
            raise ValueError(f"config type is {kind!r}, expected {CONFIG_TYPE!r}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown PI0Config fields: {unknown}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PI0Config:
        path = Path(directory)
        path = path / CONFIG_NAME if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
