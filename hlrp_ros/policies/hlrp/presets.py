"""Named HLRP configurations, built offline from local values (no model hub access).

* ``tiny``: a few hundred thousand parameters, 64x64 images; for tests and the planar-arm demo.
* ``smolvla-base``: SmolVLA's architecture (SmolVLM2-500M-Video-Instruct backbone truncated to 16 text
  layers, expert width 0.75, chunk 50, 10 steps, state/action padded to 32), ~450M parameters.
"""

from __future__ import annotations

from typing import Any

from transformers import SmolVLMConfig

from hlrp_ros.policies.hlrp.configuration_hlrp import HLRPConfig

#: Tiny tokenizer layout (see processor_hlrp.build_tiny_tokenizer): the image special tokens' ids.
TINY_FAKE_IMAGE_TOKEN_ID = 2
TINY_GLOBAL_IMAGE_TOKEN_ID = 3
TINY_VOCAB_SIZE = 128


def smolvlm_config_dict(
    *,
    vision: dict[str, Any],
    text: dict[str, Any],
    scale_factor: int,
    image_token_id: int,
    pad_token_id: int,
) -> dict[str, Any]:
    """Builds a transformers ``SmolVLMConfig`` from sizes and returns its dict form.

    Args:
        vision: ``SmolVLMVisionConfig`` fields (hidden_size, num_hidden_layers, patch_size, image_size, ...).
        text: Llama text config fields (hidden_size, num_attention_heads, num_key_value_heads, vocab_size, ...).
        scale_factor: Pixel-shuffle factor of the connector (tokens per image = (image/patch/scale)^2).
        image_token_id: Id of the ``<image>`` token (kept for fidelity; the prefix embeds images directly).
        pad_token_id: Text padding token id.
    """
    cfg = SmolVLMConfig(
        vision_config=dict(vision),
        text_config={"model_type": "llama", "pad_token_id": pad_token_id, **text},
        scale_factor=scale_factor,
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    return cfg.to_dict()


def _tiny() -> dict[str, Any]:
    vlm = smolvlm_config_dict(
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 8,
            "image_size": 64,
        },
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": TINY_VOCAB_SIZE,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        scale_factor=2,
        image_token_id=TINY_VOCAB_SIZE - 1,
        pad_token_id=0,
    )
    return {
        "vlm_config": vlm,
        "num_vlm_layers": 4,
        "state_dim": 2,
        "action_dim": 2,
        "image_size": (64, 64),
        "camera_names": ["top"],
        "chunk_size": 10,
        "n_action_steps": 10,
        "num_steps": 10,
        "tokenizer_max_length": 16,
        "fake_image_token_id": TINY_FAKE_IMAGE_TOKEN_ID,
        "global_image_token_id": TINY_GLOBAL_IMAGE_TOKEN_ID,
        "freeze_vision_encoder": False,
        "train_expert_only": False,
        # Not bound to SmolVLA checkpoints: give every patch row/column its own position embedding.
        "legacy_vision_position_ids": False,
    }


def _smolvla_base() -> dict[str, Any]:
    # HuggingFaceTB/SmolVLM2-500M-Video-Instruct sizes.
    vlm = smolvlm_config_dict(
        vision={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "patch_size": 16,
            "image_size": 512,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
        text={
            "hidden_size": 960,
            "intermediate_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 15,
            "num_key_value_heads": 5,
            "head_dim": 64,
            "vocab_size": 49280,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
        },
        scale_factor=4,
        image_token_id=49190,
        pad_token_id=2,
    )
    return {
        "vlm_config": vlm,
        "num_vlm_layers": 16,
        "state_dim": 6,
        "action_dim": 6,
        "max_state_dim": 32,
        "max_action_dim": 32,
        "image_size": (512, 512),
        "camera_names": ["top"],
        "chunk_size": 50,
        "n_action_steps": 50,
        "num_steps": 10,
        "tokenizer_max_length": 48,
        "expert_width_multiplier": 0.75,
        "self_attn_every_n_layers": 2,
        "fake_image_token_id": 49189,
        "global_image_token_id": 49152,
    }


PRESETS = {"tiny": _tiny, "smolvla-base": _smolvla_base}


def make_config(name: str, **overrides: Any) -> HLRPConfig:
    """Returns the named configuration with ``overrides`` applied (validated by ``HLRPConfig``).

    Args:
        name: One of ``PRESETS`` ("tiny", "smolvla-base").
        **overrides: Any ``HLRPConfig`` field, e.g. ``state_dim=4, abstract_tokens_enabled=True``.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    values = PRESETS[name]()
    values.update(overrides)
    values.setdefault("preset", name)
    return HLRPConfig(**values)
