"""Inference: prefix computed once, cached == uncached, determinism, conditioning, processor behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import CallCounter, fixed_noise, make_observation, tiny_policy, torch_single_thread  # noqa: F401

from hlrp_ros.policies.hlrp.processor_hlrp import resize_with_pad
from hlrp_ros.policies.hlrp.smolvlm_with_expert import make_att_2d_masks

ABSTRACT = {"abstract_tokens_enabled": True, "abstract_vocab_size": 16, "abstract_max_length": 4}


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(seed=0)


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_vlm_prefix_layers_run_exactly_once_per_chunk(policy, num_steps, monkeypatch):
    from hlrp_ros.policies.hlrp import smolvlm_with_expert

    # Every layer starts with its RMSNorm (applied through ``rms_norm``; linears may bypass their modules
    # through prepacked weights), so counting norm applications per module counts layer runs.
    applied: dict[int, int] = {}
    real_rms_norm = smolvlm_with_expert.rms_norm

    def counting_rms_norm(norm, x):
        applied[id(norm)] = applied.get(id(norm), 0) + 1
        return real_rms_norm(norm, x)

    monkeypatch.setattr(smolvlm_with_expert, "rms_norm", counting_rms_norm)
    wrapper = policy.model.vlm_with_expert
    vision = wrapper.get_vlm_model().vision_model
    with CallCounter([vision.post_layernorm]) as vision_calls:
        chunk = policy.predict_action_chunk(make_observation(), num_steps=num_steps, noise=fixed_noise(policy))
    assert vision_calls.counts == [1]
    assert [applied.get(id(layer.input_layernorm), 0) for layer in wrapper.vlm_layers] == [1] * len(wrapper.vlm_layers)
    expert_mlps = [layer.post_attention_layernorm for layer in wrapper.lm_expert.layers]
    assert [applied.get(id(norm), 0) for norm in expert_mlps] == [num_steps] * len(expert_mlps)
    assert chunk.shape == (policy.config.chunk_size, policy.config.action_dim)


def _uncached_vs_cached(policy, observations, num_steps=4):
    inputs, _ = policy._prefix_inputs(observations)
    noise = fixed_noise(policy, batch=len(observations))
    with torch.no_grad():
        cached = policy.model.sample_actions(*inputs[:5], noise=noise, abstract_tokens=inputs[5],
                                             abstract_masks=inputs[6], num_steps=num_steps)
        uncached = policy.model.sample_actions_uncached(*inputs[:5], noise=noise, abstract_tokens=inputs[5],
                                                        abstract_masks=inputs[6], num_steps=num_steps)
    return cached, uncached


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"add_image_special_tokens": True, "pad_language_to": "max_length"},
        {**ABSTRACT, "prefix_length": 64},
        {"self_attn_every_n_layers": 3},
        {"num_expert_layers": 2, "self_attn_every_n_layers": 4},
    ],
    ids=["default", "special-tokens+max-length-padding", "abstract+prefix-padding", "sa-every-3", "half-expert"],
)
def test_cached_denoising_equals_recomputing_the_full_sequence(overrides):
    policy = tiny_policy(seed=1, **overrides)
    observations = [
        make_observation(seed=0, instruction="push the red cube to the left corner slowly",
                         abstract_tokens=[3, 1, 4] if overrides.get("abstract_tokens_enabled") else None),
        make_observation(seed=1, instruction="go", image_hw=(64, 40)),  # shorter: language padding
    ]
    cached, uncached = _uncached_vs_cached(policy, observations)
    assert cached.shape == (2, policy.config.chunk_size, policy.config.max_action_dim)
    assert float((cached - uncached).abs().max()) <= 1e-5


def test_same_inputs_and_noise_give_identical_actions(policy):
    obs = make_observation()
    a = policy.predict_action_chunk(obs, noise=fixed_noise(policy))
    b = policy.predict_action_chunk(obs, noise=fixed_noise(policy))
    assert torch.equal(a, b)
    c = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    d = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    assert torch.equal(c, d)
    assert a.dtype == torch.float32 and a.device.type == "cpu"


def test_split_calls_equal_predict_action_chunk_and_prefix_is_reusable(policy):
    obs = make_observation(seed=4)
    prefix = policy.encode_prefix(obs)
    first = policy.sample_chunk(prefix, noise=fixed_noise(policy))
    again = policy.sample_chunk(prefix, noise=fixed_noise(policy))
    assert torch.equal(first, again)
    assert torch.equal(first, policy.predict_action_chunk(obs, noise=fixed_noise(policy)))


def test_different_instruction_gives_different_actions(policy):
    noise = fixed_noise(policy)
    a = policy.predict_action_chunk(make_observation(instruction="push the red cube left"), noise=noise)
    b = policy.predict_action_chunk(make_observation(instruction="push the blue cube right"), noise=noise)
    assert float((a - b).abs().max()) > 1e-4


def test_abstract_branch_disabled_enabled_absent_and_present():
    noise_seed = 2
    disabled = tiny_policy(seed=3)
    enabled = tiny_policy(seed=3, **ABSTRACT)
    obs = make_observation(seed=2)
    # Disabled: abstract tokens are ignored by the processor.
    base = disabled.predict_action_chunk(obs, noise=fixed_noise(disabled, noise_seed))
    # Enabled but absent: identical prefix to the disabled model with the same weights.
    absent = enabled.predict_action_chunk(obs, noise=fixed_noise(enabled, noise_seed))
    assert torch.allclose(base, absent, atol=1e-6)
    # Present: the tokens change the actions, and different tokens differ.
    obs_a = make_observation(seed=2, abstract_tokens=[1, 2, 3])
    obs_b = make_observation(seed=2, abstract_tokens=[7, 7])
    a = enabled.predict_action_chunk(obs_a, noise=fixed_noise(enabled, noise_seed))
    b = enabled.predict_action_chunk(obs_b, noise=fixed_noise(enabled, noise_seed))
    assert float((a - absent).abs().max()) > 1e-4
    assert float((a - b).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="abstract_max_length"):
        enabled.predict_action_chunk(make_observation(abstract_tokens=[1] * 5))
    with pytest.raises(ValueError, match="abstract token ids"):
        enabled.predict_action_chunk(make_observation(abstract_tokens=[16]))


def test_batched_prefix_gives_one_chunk_per_observation(policy):
    observations = [make_observation(seed=s, instruction=t) for s, t in [(0, "go left"), (1, "push the ball up")]]
    noise = fixed_noise(policy, batch=2)
    batched = policy.sample_chunk(policy.encode_prefix(observations), noise=noise)
    assert batched.shape == (2, policy.config.chunk_size, policy.config.action_dim)
    single = policy.sample_chunk(policy.encode_prefix(observations[1]), noise=noise[1])
    assert torch.allclose(batched[1], single, atol=1e-5)


def test_bfloat16_runs_and_stays_close_to_float32():
    policy = tiny_policy(seed=0)
    obs = make_observation()
    ref = policy.predict_action_chunk(obs, noise=fixed_noise(policy))
    policy.to_device_dtype("cpu", "bfloat16")
    assert policy.dtype == torch.bfloat16
    assert policy.model.action_out_proj.weight.dtype == torch.float32
    assert policy.normalize_action.mean.dtype == torch.float32
    out = policy.predict_action_chunk(obs, noise=fixed_noise(policy))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert float((out - ref).abs().max()) < 0.25 * float(ref.abs().max()) + 0.05


def test_noise_of_the_wrong_shape_is_rejected(policy):
    with pytest.raises(ValueError, match="noise must have shape"):
        policy.predict_action_chunk(make_observation(), noise=torch.zeros(3, 3))


def test_tokenizer_caches_the_last_instruction_and_reports_truncation(policy):
    proc = policy.processor
    before = proc.num_tokenizations
    first = proc.tokenize("move the arm to the left")
    assert proc.tokenize("move the arm to the left") is first
    assert proc.num_tokenizations == before + 1
    assert not first.truncated and first.text.endswith("\n")
    long = proc.tokenize(" ".join(["left"] * 40))
    assert long.truncated and long.ids.shape == (1, policy.config.tokenizer_max_length)
    assert long.num_tokens > policy.config.tokenizer_max_length
    assert proc.num_tokenizations == before + 2


def test_predicting_twice_with_one_instruction_tokenizes_once(policy):
    policy.processor.tokenize("reset cache")
    before = policy.processor.num_tokenizations
    for seed in range(3):
        policy.predict_action_chunk(make_observation(seed=seed, instruction="pick the green ball"))
    assert policy.processor.num_tokenizations == before + 1


def test_images_are_resized_with_padding_on_top_left_and_scaled_to_minus_one_one(policy):
    img = np.full((32, 64, 3), 255, dtype=np.uint8)  # wide image into 64x64: 32 rows of padding on top
    out = policy.processor.prepare_image(img)
    assert out.shape == (1, 3, 64, 64)
    assert torch.all(out[:, :, :32] == -1.0) and torch.allclose(out[:, :, 32:], torch.ones(1))
    assert resize_with_pad(torch.zeros(1, 3, 10, 20), 20, 20).shape == (1, 3, 20, 20)
    with pytest.raises(ValueError, match="camera"):
        policy.processor.prepare_images({"wrist": img})


def test_an_image_already_at_the_model_size_is_not_resampled():
    img = torch.rand(1, 3, 24, 40)
    assert resize_with_pad(img, 40, 24) is img  # skipping is exact: a same-size bilinear resize is the identity
    assert torch.equal(torch.nn.functional.interpolate(img, size=(24, 40), mode="bilinear", align_corners=False), img)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_images_prepared_on_the_gpu_match_the_host(policy):
    img = np.random.default_rng(0).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    host = policy.processor.prepare_image(img)
    gpu = policy.processor.prepare_image(img, device="cuda")
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), host, atol=1e-6)


def test_prefix_lm_mask_blocks():
    # [img img lang | state | a0 | a1]
    att = torch.tensor([[0, 0, 0, 1, 1, 1]])
    pad = torch.tensor([[True, True, False, True, True, True]])
    m = make_att_2d_masks(pad, att)[0]
    assert m[0, 1] and m[1, 0] and not m[0, 3]  # image+language bidirectional, cannot see state
    assert m[3, 0] and not m[3, 4]  # state sees the prefix, not the actions
    assert m[5, 4] and not m[4, 5]  # actions causal
    assert not m[:, 2].any() and not m[2].any()  # padding neither attends nor is attended


def test_vision_sincos_position_embeddings_can_be_fixed_and_frozen():
    policy = tiny_policy(vision_sincos_pos_embed=True, freeze_vision_pos_embed=True)
    pos = policy.model.vlm_with_expert.get_vlm_model().vision_model.embeddings.position_embedding.weight
    assert not pos.requires_grad
    quarter = pos.shape[1] // 4  # [sin(row), cos(row), sin(col), cos(col)]
    assert torch.allclose(pos[0], torch.tensor(([0.0] * quarter + [1.0] * quarter) * 2))
    assert not torch.allclose(pos[1], pos[8])  # (row 0, col 1) differs from (row 1, col 0)


def test_vision_position_ids_follow_the_transformers_version_smolvla_was_trained_with():
    exact = tiny_policy().model.vlm_with_expert  # legacy_vision_position_ids=False in the tiny preset
    assert exact.vision_position_ids(8, 8, torch.device("cpu")).tolist() == list(range(64))
    # Smaller images spread over the same grid (NaViT-style fractional buckets).
    assert exact.vision_position_ids(2, 3, torch.device("cpu")).tolist() == [0, 2, 5, 32, 34, 37]
    old = tiny_policy(legacy_vision_position_ids=True).model.vlm_with_expert
    # transformers < 5 bucketed i / n * (1 - 1e-6): patches 0 and 1 of an 8-patch axis share bucket 0.
    ids = old.vision_position_ids(8, 8, torch.device("cpu")).view(8, 8)
    assert ids[0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6] and ids[:, 0].tolist() == [0, 0, 8, 16, 24, 32, 40, 48]


def test_prepacked_linears_match_the_modules_and_follow_weight_updates():
    from hlrp_ros.policies.hlrp.smolvlm_with_expert import PackedLinears

    linear = torch.nn.Linear(240, 400)
    packed = PackedLinears()
    x = torch.randn(3, 50, 240)
    with torch.no_grad():
        assert torch.allclose(packed(linear, x), linear(x), atol=1e-5)
        linear.weight.mul_(2.0)  # in-place update (as an optimizer step): the packed copy must follow
        assert torch.allclose(packed(linear, x), linear(x), atol=1e-5)
    # With autograd the module itself runs, so gradients flow.
    packed(linear, x).sum().backward()
    assert linear.weight.grad is not None


@pytest.mark.parametrize("act", ["gelu_pytorch_tanh", "gelu", "silu"])
def test_fused_activation_and_residual_equal_the_separate_ops(act):
    from hlrp_ros.policies.hlrp.smolvlm_with_expert import PackedLinears

    linear = torch.nn.Linear(240, 400)
    packed = PackedLinears()
    x, residual = torch.randn(2, 50, 240), torch.randn(2, 50, 400)
    reference = {"gelu_pytorch_tanh": lambda y: torch.nn.functional.gelu(y, approximate="tanh"),
                 "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu}[act]
    with torch.no_grad():
        assert float((packed(linear, x, act=act) - reference(linear(x))).abs().max()) <= 1e-5
        assert float((packed(linear, x, residual=residual) - (linear(x) + residual)).abs().max()) <= 1e-5
        packed.enabled = False  # the fallback path computes the same thing
        assert float((packed(linear, x, act=act) - reference(linear(x))).abs().max()) == 0.0
    with pytest.raises(ValueError, match="either an activation or a residual"):
        packed(linear, x, act=act, residual=residual)


def test_prepacked_and_plain_linears_give_the_same_chunk(policy, monkeypatch):
    from hlrp_ros.policies.hlrp.smolvlm_with_expert import PackedLinears

    monkeypatch.setattr(PackedLinears, "MIN_WEIGHT_NUMEL", 0)  # the tiny model's weights are below the cutoff
    obs = make_observation(seed=6)
    fast = policy.predict_action_chunk(obs, noise=fixed_noise(policy))
    policy.model.vlm_with_expert.linear.enabled = False
    try:
        plain = policy.predict_action_chunk(obs, noise=fixed_noise(policy))
    finally:
        policy.model.vlm_with_expert.linear.enabled = True
    assert float((fast - plain).abs().max()) <= 1e-5
