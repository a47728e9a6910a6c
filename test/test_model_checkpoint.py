"""Checkpoints: exact round trip, clear errors for damaged or mismatched files, format dispatch."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from model_fixtures import fixed_noise, make_observation, tiny_policy, torch_single_thread  # noqa: F401
from safetensors.torch import load_file, save_file

from hlrp_ros.policies.factory import load_policy
from hlrp_ros.policies.hlrp.modeling_hlrp import CheckpointError, HLRPPolicy


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    policy = tiny_policy(seed=7, abstract_tokens_enabled=True, abstract_vocab_size=8, abstract_max_length=4,
                         action_norm_mode="min_max")
    policy.set_normalization_stats(
        state={"mean": np.array([0.5, -1.0]), "std": np.array([2.0, 0.5])},
        action={"min": np.array([-2.0, 0.0]), "max": np.array([2.0, 3.0])},
    )
    path = tmp_path_factory.mktemp("ckpt") / "policy"
    policy.save_pretrained(path)
    return policy, path


def test_checkpoint_layout_is_config_safetensors_and_tokenizer(saved):
    _, path = saved
    assert json.loads((path / "config.json").read_text())["type"] == "hlrp"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer" / "tokenizer.json").is_file()
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt")) and not list(path.rglob("*.pkl"))
    tensors = load_file(str(path / "model.safetensors"))
    assert torch.equal(tensors["normalize_action.max"], torch.tensor([2.0, 3.0]))


def test_round_trip_reproduces_actions_exactly(saved):
    policy, path = saved
    obs = make_observation(seed=3, abstract_tokens=[1, 2])
    loaded = load_policy(path)
    assert isinstance(loaded, HLRPPolicy) and loaded.config == policy.config
    expected = policy.predict_action_chunk(obs, noise=fixed_noise(policy))
    assert torch.equal(loaded.predict_action_chunk(obs, noise=fixed_noise(loaded)), expected)
    assert loaded.processor.tokenize("go left").ids.tolist() == policy.processor.tokenize("go left").ids.tolist()


def test_normalisation_is_applied_inside_the_model(saved):
    policy, _ = saved
    chunk = policy.predict_action_chunk(make_observation(seed=1), noise=fixed_noise(policy))
    raw = policy.model.sample_from_prefix(policy.encode_prefix(make_observation(seed=1)),
                                          noise=fixed_noise(policy)[None])[0]
    assert torch.allclose(chunk, (raw + 1) / 2 * torch.tensor([4.0, 3.0]) + torch.tensor([-2.0, 0.0]), atol=1e-6)


def _copy(path, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_truncated_weights_fail_with_a_clear_message(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated checkpoint"):
        HLRPPolicy.from_pretrained(path)


def test_corrupted_header_fails_with_a_clear_message(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00garbage-not-json-garbage-not-js"
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or truncated checkpoint"):
        HLRPPolicy.from_pretrained(path)


def test_missing_weights_file_is_named(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        HLRPPolicy.from_pretrained(path)


def test_missing_and_mismatched_tensors_are_named(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.action_out_proj.bias"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor.*model\.action_out_proj\.bias"):
        HLRPPolicy.from_pretrained(path)
    tensors = load_file(str(saved[1] / "model.safetensors"))
    tensors["model.state_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.state_proj\.weight.*shape"):
        HLRPPolicy.from_pretrained(path)
    tensors = load_file(str(saved[1] / "model.safetensors"))
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*extra\.weight"):
        HLRPPolicy.from_pretrained(path)


def test_bfloat16_load_keeps_statistics_in_float32(saved):
    loaded = HLRPPolicy.from_pretrained(saved[1], dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and loaded.normalize_state.std.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        HLRPPolicy.from_pretrained(saved[1], dtype="float16")


def test_factory_dispatches_lerobot_checkpoints_to_the_lerobot_loader(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"type": "smolvla"}))
    calls = []
    fake = types.ModuleType("hlrp_ros.policies.lerobot_smolvla")
    fake.load_lerobot_smolvla = lambda path, device, dtype, tokenizer_dir=None, vision_position_ids="auto": calls.append(
        (path, device, dtype, tokenizer_dir, vision_position_ids)) or "lerobot-policy"
    monkeypatch.setitem(sys.modules, "hlrp_ros.policies.lerobot_smolvla", fake)
    assert load_policy(tmp_path, device="cpu", dtype="bfloat16") == "lerobot-policy"
    assert load_policy(tmp_path, vision_position_ids="transformers4") == "lerobot-policy"
    assert calls == [(tmp_path, "cpu", "bfloat16", None, "auto"), (tmp_path, "cpu", "float32", None, "transformers4")]


def test_vision_position_ids_apply_to_lerobot_smolvla_checkpoints_only(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "hlrp"}))
    with pytest.raises(ValueError, match="applies to LeRobot SmolVLA checkpoints only"):
        load_policy(tmp_path, vision_position_ids="transformers5")


def test_factory_rejects_unknown_or_missing_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(ValueError, match="unsupported checkpoint type 'act'"):
        load_policy(tmp_path)


def test_tiny_tokenizers_build_offline_and_round_trip(tmp_path):
    from hlrp_ros.policies.hlrp.processor_hlrp import build_tiny_tokenizer, load_tokenizer

    words = build_tiny_tokenizer()
    ids = words("Push the RED cube left\n")["input_ids"]
    assert words.convert_ids_to_tokens(ids) == ["push", "the", "red", "cube", "left", "\n"]
    assert words.convert_tokens_to_ids(["<pad>", "<fake_token_around_image>", "<global-img>"]) == [0, 2, 3]
    bpe = build_tiny_tokenizer(kind="bpe", corpus=["push the red cube left", "pull the blue ball"], vocab_size=300)
    assert bpe.unk_token_id not in bpe("a never seen sentence")["input_ids"]
    for tok, name in [(words, "words"), (bpe, "bpe")]:
        tok.save_pretrained(str(tmp_path / name))
        again = load_tokenizer(tmp_path / name)
        assert again("move up\n")["input_ids"] == tok("move up\n")["input_ids"]
