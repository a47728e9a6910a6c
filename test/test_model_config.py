"""HLRPConfig: JSON round trip, validation, presets and derived sizes."""

from __future__ import annotations

import json

import pytest

from hlrp_ros.policies.hlrp.configuration_hlrp import HLRPConfig
from hlrp_ros.policies.hlrp.presets import PRESETS, make_config
from hlrp_ros.policies.hlrp.smolvlm_with_expert import get_intermediate_size


def test_config_round_trips_through_json(tmp_path):
    cfg = make_config("tiny", abstract_tokens_enabled=True, abstract_vocab_size=8, abstract_max_length=4,
                      joint_names=["j0", "j1"], camera_names=["top", "wrist"])
    path = cfg.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["type"] == "hlrp" and data["image_size"] == [64, 64]
    assert HLRPConfig.load(tmp_path) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_action_steps": 11}, "n_action_steps"),
        ({"num_steps": 0}, "num_steps"),
        ({"max_action_dim": 1}, "max_action_dim"),
        ({"joint_names": ["only_one"]}, "joint_names"),
        ({"camera_names": ["top", "top"]}, "camera_names"),
        ({"state_norm_mode": "zscore"}, "state_norm_mode"),
        ({"abstract_tokens_enabled": True}, "abstract_tokens_enabled"),
        ({"attention_mode": "self_attn"}, "attention_mode"),
        ({"num_vlm_layers": 9}, "num_vlm_layers"),
        ({"num_expert_layers": 3}, "num_expert_layers"),
        ({"vlm_config": {}}, "vlm_config"),
    ],
)
def test_invalid_configs_are_rejected_with_the_field_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("tiny", **overrides)


def test_unknown_json_fields_are_rejected():
    data = make_config("tiny").to_dict()
    data["chunk_sise"] = 3
    with pytest.raises(ValueError, match="chunk_sise"):
        HLRPConfig.from_dict(data)


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("huge")


def test_smolvla_base_has_smolvlm2_500m_sizes_and_smolvla_expert():
    cfg = make_config("smolvla-base")
    text = cfg.vlm_config["text_config"]
    vision = cfg.vlm_config["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (960, 32, 15)
    assert (text["num_key_value_heads"], text["head_dim"], text["vocab_size"]) == (5, 64, 49280)
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["patch_size"]) == (768, 12, 16)
    assert cfg.vlm_config["scale_factor"] == 4
    assert cfg.num_vlm_layers == 16 and cfg.chunk_size == 50 and cfg.num_steps == 10
    assert cfg.expert_hidden_size == 720
    assert get_intermediate_size(720) == 2048
    assert (cfg.max_state_dim, cfg.max_action_dim) == (32, 32)


def test_every_preset_is_valid():
    for name in PRESETS:
        assert make_config(name).preset == name
