"""PI0 / PI0.5 native family: presets, the KV-cached sampler against the full joint pass, the attention
pattern, training, checkpoints and the registry. Tiny random models, CPU, a few seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hlrp_ros.policies.base import ActionExpert, Observation
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.policies.hlrp.modeling_hlrp import CheckpointError
from hlrp_ros.policies.pi0 import PRESETS, PI0Config, PI0Policy, make_config
from hlrp_ros.policies.pi0.processor_pi0 import discretize_state, pi05_prompt, resize_with_center_pad

VARIANTS = ["pi0-tiny", "pi05-tiny"]


def observation(seed: int, size=(40, 30), instruction="pick up the red cube") -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(images={"top": rng.integers(0, 256, (*size, 3), dtype=np.uint8)},
                       state=rng.normal(0, 1, 2).astype(np.float32), instruction=instruction)


@pytest.fixture(scope="module", params=VARIANTS)
def policy(request) -> PI0Policy:
    torch.manual_seed(0)
    pol = PI0Policy(make_config(request.param))
    # Non-trivial adaptive norms (their dense layers start at zero) and statistics.
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if ".dense." in name:
                p.normal_(0, 0.2)
    pol.set_normalization_stats(state={"mean": [0.1, -0.2], "std": [0.5, 2.0], "min": [-2, -1], "max": [1, 3]},
                                action={"mean": [1.0, -1.0], "std": [0.3, 0.7], "min": [-1, -2], "max": [2, 1]})
    return pol


def test_presets_build_and_validate():
    assert set(PRESETS) == {"pi0-tiny", "pi05-tiny", "pi0-base", "pi05-base"}
    base = make_config("pi05-base")
    assert (base.paligemma["width"], base.expert["width"], base.vision["hidden_size"], base.vocab_size) == (
        2048, 1024, 1152, 257152)
    with pytest.raises(ValueError, match="joint pass needs the same"):
        make_config("pi0-tiny", expert={**make_config("pi0-tiny").expert, "head_dim": 8})
    with pytest.raises(ValueError, match="variant"):
        make_config("pi0-tiny", variant="pi1")


def test_is_an_action_expert_with_the_right_output(policy):
    assert isinstance(policy, ActionExpert)
    chunk = policy.predict_action_chunk(observation(0), generator=torch.Generator().manual_seed(0))
    assert chunk.dtype == torch.float32 and tuple(chunk.shape) == (10, 2) and torch.isfinite(chunk).all()


def test_cached_prefix_matches_the_full_joint_pass(policy):
    """The KV cache (prefix once, PI0's state token once) gives the actions of the uncached joint pass."""
    obs = [observation(1), observation(2, size=(32, 32), instruction="push")]
    noise = torch.randn(2, 10, 2, generator=torch.Generator().manual_seed(3))
    for steps in (1, 4):
        cached = policy.sample_chunk(policy.encode_prefix(obs), num_steps=steps, noise=noise)
        full = policy.predict_uncached(obs, num_steps=steps, noise=noise)
        assert (cached - full).abs().max().item() < 1e-5


def test_batch_rows_equal_single_observations(policy):
    obs = [observation(4), observation(5, instruction="move the arm to the left then stop")]
    noise = torch.randn(2, 10, 2, generator=torch.Generator().manual_seed(6))
    batched = policy.sample_chunk(policy.encode_prefix(obs), noise=noise)
    for i, o in enumerate(obs):
        single = policy.sample_chunk(policy.encode_prefix(o), noise=noise[i])
        assert (batched[i] - single).abs().max().item() < 1e-5


def test_every_input_changes_the_actions(policy):
    noise = torch.randn(10, 2, generator=torch.Generator().manual_seed(7))
    base_obs = observation(8)
    base = policy.predict_action_chunk(base_obs, noise=noise, num_steps=2)
    variants = {
        "instruction": Observation(base_obs.images, base_obs.state, "push the blue ball"),
        "state": Observation(base_obs.images, base_obs.state + 0.7, base_obs.instruction),
        "image": Observation({"top": 255 - base_obs.images["top"]}, base_obs.state, base_obs.instruction),
    }
    for name, obs in variants.items():
        diff = (policy.predict_action_chunk(obs, noise=noise, num_steps=2) - base).abs().max().item()
        assert diff > 1e-4, f"changing the {name} changed the actions by only {diff:.2g}"


def test_actions_do_not_see_the_future_of_the_prefix(policy):
    """Prefix tokens must not attend to the suffix: the prefix cache is the same whatever the noise."""
    obs = observation(9)
    a = policy.encode_prefix(obs)
    b = policy.encode_prefix(obs)
    assert all(torch.equal(x, y) for x, y in zip(a.keys, b.keys, strict=True))
    n_prefix = 16 + policy.config.tokenizer_max_length
    assert a.keys[0].shape[2] == n_prefix + (0 if policy.config.is_pi05 else 1)


def test_training_loss_decreases(policy):
    torch.manual_seed(0)
    pol = PI0Policy(policy.config)
    pol.train()
    obs = [observation(10), observation(11)]
    actions = np.random.default_rng(0).normal(0, 1, (2, 10, 2)).astype(np.float32)
    batch = pol.processor.collate(obs, actions)
    noise = torch.randn(2, 10, 2, generator=torch.Generator().manual_seed(123))
    time = torch.tensor([0.3, 0.7])
    before = pol.compute_loss(batch, noise=noise, time=time).item()
    opt = torch.optim.AdamW(pol.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        opt.zero_grad()
        loss = pol.compute_loss(batch, generator=gen)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        opt.step()
    after = pol.compute_loss(batch, noise=noise, time=time).item()
    assert after < 0.85 * before, (before, after)
    # The gradient reaches both streams, the vision tower, the embeddings and the time/state inputs.
    names = [n for n, p in pol.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    for part in ("vision_tower.embeddings.patch_embedding", "language_model.embed_tokens",
                 "language_model.layers.0.self_attn.q_proj", "gemma_expert.model.layers.1.mlp.down_proj",
                 "action_in_proj", "time_mlp_in" if pol.config.is_pi05 else "state_proj"):
        assert any(part in n for n in names), f"no gradient reaches {part}"


def test_pi05_prompt_discretises_the_normalised_state():
    bins = discretize_state(torch.tensor([[-1.5, -1.0, 0.0, 0.999, 1.0, 3.0]]))
    assert bins.tolist() == [[-1, 0, 128, 255, 255, 255]]
    assert pi05_prompt(" pick_up\nthe cube ", [3, -1]) == "Task: pick up the cube, State: 3 -1;\nAction: "


def test_center_padding():
    img = torch.ones(1, 3, 20, 40)
    out = resize_with_center_pad(img, 32, 32)
    assert out.shape == (1, 3, 32, 32)
    assert out[0, 0, :8].abs().sum() == 0 and out[0, 0, 24:].abs().sum() == 0 and out[0, 0, 8:24].min() == 1


def test_checkpoint_round_trip_through_the_registry(policy, tmp_path):
    policy.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["type"] == "hlrp_pi0"
    loaded = load_policy(tmp_path / "ckpt")
    assert isinstance(loaded, PI0Policy) and loaded.config == policy.config
    obs, noise = observation(12), torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.predict_action_chunk(obs, noise=noise), policy.predict_action_chunk(obs, noise=noise))


def test_bfloat16_runs_close_to_float32(policy, tmp_path):
    policy.save_pretrained(tmp_path / "ckpt")
    bf16 = load_policy(tmp_path / "ckpt", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    obs, noise = observation(13), torch.randn(10, 2, generator=torch.Generator().manual_seed(2))
    ref = policy.predict_action_chunk(obs, noise=noise)
    out = bf16.predict_action_chunk(obs, noise=noise)
    assert out.dtype == torch.float32 and (out - ref).abs().max().item() < 0.2 * ref.abs().max().item()


def test_corrupt_checkpoint_names_the_tensor(policy, tmp_path):
    from safetensors.torch import load_file, save_file

    policy.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["model.action_in_proj.weight"]
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="model.action_in_proj.weight"):
        load_policy(tmp_path / "ckpt")


def test_config_json_round_trip():
    cfg = make_config("pi05-tiny", joint_names=["a", "b"])
    assert PI0Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown PI0Config fields"):
        PI0Config.from_dict({**cfg.to_dict(), "bogus": 1})
