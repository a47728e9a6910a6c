"""Named PI0 / PI0.5 configurations, built offline from local values (no model hub access).

* ``pi0-tiny`` / ``pi05-tiny``: ~0.2M parameters, 32x32 images; for tests.
* ``pi0-base`` / ``pi05-base``: PaliGemma 3B sizes (Gemma 2B language model, SigLIP so400m/14 at 224, the
  257152-token vocabulary) with the Gemma 300M action expert; chunk 50, 10 steps, state/action padded to 32.
"""

from __future__ import annotations

from typing import Any

from hlrp_ros.policies.pi0.configuration_pi0 import (
    GEMMA_VARIANTS,
    PALIGEMMA_VOCAB_SIZE,
    SIGLIP_SO400M,
    PI0Config,
)

#: Vocabulary of the tiny presets: ``build_tiny_tokenizer``'s word-level default (PI0) and room for its
#: byte-level BPE (PI0.5, whose prompt spells the state in digits: 256 bytes + specials + merges).
TINY_VOCAB_SIZE = {"pi0": 128, "pi05": 320}


def _tiny(variant: str) -> dict[str, Any]:
    return {
        "variant": variant,
        "paligemma": {"width": 64, "depth": 2, "mlp_dim": 128, "num_heads": 4, "num_kv_heads": 1, "head_dim": 16},
        "expert": {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 4, "num_kv_heads": 1, "head_dim": 16},
        "vocab_size": TINY_VOCAB_SIZE[variant],
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "patch_size": 8, "image_size": 32, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"},
        "image_size": (32, 32),
        "state_dim": 2,
        "action_dim": 2,
        "chunk_size": 10,
        "n_action_steps": 10,
        "num_steps": 10,
        "tokenizer_max_length": 16 if variant == "pi0" else 32,
        "append_newline": variant == "pi0",
        "state_norm_mode": "mean_std" if variant == "pi0" else "min_max",
        "action_norm_mode": "mean_std" if variant == "pi0" else "min_max",
    }


def _base(variant: str) -> dict[str, Any]:
    return {
        "variant": variant,
        "paligemma": dict(GEMMA_VARIANTS["gemma_2b"]),
        "expert": dict(GEMMA_VARIANTS["gemma_300m"]),
        "vocab_size": PALIGEMMA_VOCAB_SIZE,
        "vision": dict(SIGLIP_SO400M),
        "image_size": (224, 224),
        "state_dim": 6,
        "action_dim": 6,
        "max_state_dim": 32,
        "max_action_dim": 32,
        "chunk_size": 50,
        "n_action_steps": 50,
        "num_steps": 10,
        "tokenizer_max_length": 48 if variant == "pi0" else 200,
        "append_newline": variant == "pi0",
        "state_norm_mode": "mean_std" if variant == "pi0" else "min_max",
        "action_norm_mode": "mean_std" if variant == "pi0" else "min_max",
    }


PRESETS = {
    "pi0-tiny": lambda: _tiny("pi0"),
    "pi05-tiny": lambda: _tiny("pi05"),
    "pi0-base": lambda: _base("pi0"),
    "pi05-base": lambda: _base("pi05"),
}


def make_config(name: str, **overrides: Any) -> PI0Config:
    """The named configuration with ``overrides`` (any :class:`PI0Config` field) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    values = PRESETS[name]()
    values.update(overrides)
    values.setdefault("preset", name)
    return PI0Config(**values)
