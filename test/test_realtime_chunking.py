"""Guided real-time chunking: the paper's schedule and weight, and inpainting in every flow family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_fixtures import fixed_noise, make_observation, tiny_policy, torch_single_thread  # noqa: F401

from hlrp_ros.policies.common import realtime_chunking as rtc
from hlrp_ros.policies.common.realtime_chunking import ChunkGuide
from hlrp_ros.policies.hlrp.modeling_hlrp import pad_vector
from hlrp_ros.policies.pi0 import PI0Policy
from hlrp_ros.policies.pi0 import make_config as pi0_config

ACTION_STATS = {"mean": [0.4, -1.5], "std": [0.2, 3.0], "min": [-1.0, -6.0], "max": [2.0, 4.0]}


def paper_mask(h: int, d: int, s: int) -> list[float]:
    """Eq. 5 of Black et al. 2025, written out element by element."""
    out = []
    for i in range(h):
        if i < d:
            out.append(1.0)
        elif i < h - s:
            c = (h - s - i) / (h - s - d + 1)
            out.append(c * (math.exp(c) - 1) / (math.e - 1))
        else:
            out.append(0.0)
    return out


@pytest.mark.parametrize(("h", "d", "s"), [(50, 4, 10), (10, 2, 3), (10, 0, 0), (8, 5, 3), (8, 6, 4), (8, 8, 0)])
def test_soft_mask_is_the_papers_formula(h, d, s):
    assert rtc.soft_mask(h, d, s).tolist() == pytest.approx(paper_mask(h, d, s), abs=1e-7)


def test_soft_mask_is_one_then_decays_monotonically_to_zero_at_h_minus_s():
    w = rtc.soft_mask(50, 5, 10).numpy()
    assert (w[:5] == 1).all() and (w[40:] == 0).all()
    assert (np.diff(w[5:41]) < 0).all() and 0 < w[39] < 0.05


def test_guidance_weight_is_the_papers_clipped_weight_at_tau_equal_one_minus_t():
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        tau = 1 - t
        r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
        assert rtc.guidance_weight(t, 100.0) == pytest.approx((1 - tau) / (tau * r2))
    assert rtc.guidance_weight(1.0, 5.0) == 5.0  # tau = 0: unbounded, clipped
    assert rtc.guidance_weight(0.5, 5.0) == pytest.approx(2.0)
    assert rtc.guidance_weight(0.9, 5.0) == 5.0


def test_guided_velocity_subtracts_the_clipped_weight_times_the_vjp_through_the_denoised_estimate():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen)
    x = torch.randn(1, 3, 2, generator=gen)
    target = torch.randn(1, 3, 2, generator=gen)
    weights = torch.rand(1, 3, 2, generator=gen)
    t = 0.7

    def velocity(x_t, _t):  # linear: v = x A over the flattened chunk
        return (x_t.reshape(1, 6) @ a).reshape(1, 3, 2)

    v = velocity(x, t)
    error = (weights * (target - (x - t * v))).reshape(6)
    g = error @ (torch.eye(6) - t * a.T)  # e^T d(x - t x A)/dx
    expected = v - rtc.guidance_weight(t, 5.0) * g.reshape(1, 3, 2)
    assert torch.allclose(rtc.guided_velocity(velocity, x, t, target, weights, 5.0), expected, atol=1e-5)


def test_guide_rejects_bad_input_with_a_clear_error():
    ok = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="NaN"):
        ChunkGuide(torch.full((4, 2), float("nan")), delay=1, execution_horizon=1)
    with pytest.raises(ValueError, match="delay"):
        ChunkGuide(ok, delay=-1, execution_horizon=1)
    with pytest.raises(ValueError, match="beta"):
        ChunkGuide(ok, delay=1, execution_horizon=1, beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        ChunkGuide(torch.zeros(4), delay=1, execution_horizon=1)
    with pytest.raises(ValueError, match="3 dims"):
        ChunkGuide(torch.zeros(4, 3), delay=1, execution_horizon=1).check(10, 2)
    with pytest.raises(ValueError, match="chunk length"):
        ChunkGuide(ok, delay=11, execution_horizon=1).check(10, 2)
    with pytest.raises(ValueError, match="more than the chunk length"):
        ChunkGuide(torch.zeros(11, 2), delay=1, execution_horizon=1).check(10, 2)


# --- in the families ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hlrp():
    pol = tiny_policy(0)
    pol.set_normalization_stats(action=ACTION_STATS)
    return pol


@pytest.fixture(scope="module", params=["pi0-tiny", "pi05-tiny"])
def pi0(request):
    torch.manual_seed(0)
    pol = PI0Policy(pi0_config(request.param))
    pol.set_normalization_stats(action=ACTION_STATS)
    return pol


def pi0_observation(seed: int):
    return make_observation(seed, image_hw=(40, 30))


def seam_errors(policy, observe, d: int, num_steps: int | None, beta: float, shift: int = 3):
    """Largest gap (normalised units) between the previous chunk's due actions and the new chunk's first d.

    The previous chunk comes from one observation, the new one from another, so without guidance they
    differ. Returns ``(guided gap, unguided gap, guided chunk, due actions)``.
    """
    cfg = policy.config
    due = policy.sample_chunk(policy.encode_prefix(observe(0)), noise=fixed_noise(policy, 1))[shift:]
    prefix = policy.encode_prefix(observe(1))
    guide = ChunkGuide(due, delay=d, execution_horizon=max(1, cfg.chunk_size // 4), beta=beta)
    guided = policy.sample_chunk(prefix, num_steps=num_steps, noise=fixed_noise(policy, 2), guide=guide)
    unguided = policy.sample_chunk(prefix, num_steps=num_steps, noise=fixed_noise(policy, 2))

    def gap(chunk):  # in the model's normalised action space, where the guidance acts
        return (policy.normalize_action(chunk[:d]) - policy.normalize_action(due[:d])).abs().max().item()

    return gap(guided), gap(unguided), guided, due


def assert_first_d_actions_follow_the_previous_chunk(policy, observe, d: int):
    # At the family's step count and the default beta, guidance removes most of the gap; random weights
    # have a rough velocity field, so the approximate (pseudo-inverse) guidance is not exact here...
    guided, unguided, chunk, due = seam_errors(policy, observe, d, None, rtc.DEFAULT_BETA)
    assert unguided > 0.25, "the seam test needs chunks that differ without guidance"
    assert guided < 0.2 * unguided, f"guided gap {guided:.3f} vs unguided {unguided:.3f}"
    assert not torch.allclose(chunk[-1], due[-1], atol=1e-3), "the free tail must not copy the guide"
    # ... and with finer steps and a loose clip it pins them tightly.
    guided, _, _, _ = seam_errors(policy, observe, d, 30, 100.0)
    assert guided < 0.02, f"guided first {d} actions are {guided:.3f} away from the previous chunk's"


@pytest.mark.parametrize("d", [1, 4])
def test_hlrp_first_d_actions_equal_the_previous_chunks_due_actions(hlrp, d):
    assert_first_d_actions_follow_the_previous_chunk(hlrp, make_observation, d)


def test_pi0_first_d_actions_equal_the_previous_chunks_due_actions(pi0):
    assert_first_d_actions_follow_the_previous_chunk(pi0, pi0_observation, 3)


def test_guidance_off_is_todays_sampling_bit_for_bit(hlrp, pi0):
    for policy, observe in ((hlrp, make_observation), (pi0, pi0_observation)):
        prefix = policy.encode_prefix(observe(1))
        today = policy.sample_chunk(prefix, noise=fixed_noise(policy, 2))
        assert torch.equal(policy.sample_chunk(prefix, noise=fixed_noise(policy, 2), guide=None), today)


def test_a_guide_with_nothing_to_follow_samples_the_unguided_chunk(hlrp):
    # d = 0 and s = H: the mask is zero everywhere, so only the velocity's grad-mode evaluation differs.
    prefix = hlrp.encode_prefix(make_observation(1))
    h = hlrp.config.chunk_size
    guide = ChunkGuide(torch.zeros(h, 2), delay=0, execution_horizon=h)
    guided = hlrp.sample_chunk(prefix, noise=fixed_noise(hlrp, 2), guide=guide)
    assert torch.allclose(guided, hlrp.sample_chunk(prefix, noise=fixed_noise(hlrp, 2)), atol=1e-5)


def test_the_prefix_cache_is_left_usable_and_without_autograd_history(hlrp):
    prefix = hlrp.encode_prefix(make_observation(1))
    before = hlrp.sample_chunk(prefix, noise=fixed_noise(hlrp, 2))
    guide = ChunkGuide(torch.ones(6, 2), delay=2, execution_horizon=2)
    hlrp.sample_chunk(prefix, noise=fixed_noise(hlrp, 3), guide=guide)
    hlrp.sample_chunk(prefix, noise=fixed_noise(hlrp, 3), guide=guide)  # twice: no stale graph in the buffers
    cache = prefix.expert_cache
    assert not any(t.requires_grad for t in [*cache.self_k.values(), *cache.self_v.values()])
    assert torch.equal(hlrp.sample_chunk(prefix, noise=fixed_noise(hlrp, 2)), before)


def test_a_batched_prefix_is_guided_row_by_row(hlrp):
    prefix = hlrp.encode_prefix([make_observation(1), make_observation(2)])
    due = torch.stack([torch.full((6, 2), 0.5), torch.full((6, 2), -0.5)])
    out = hlrp.sample_chunk(prefix, noise=fixed_noise(hlrp, 2, batch=2), guide=ChunkGuide(due, 3, 2, beta=10.0))
    assert out.shape == (2, hlrp.config.chunk_size, 2)
    assert torch.allclose(out[:, :3], due[:, :3], atol=0.05)
    with pytest.raises(ValueError, match="batch of 3"):
        hlrp.sample_chunk(prefix, guide=ChunkGuide(torch.zeros(3, 6, 2), 3, 2))


# --- real-time chunking by conditioning (a model trained to continue a chunk prefix) -----------------------


@pytest.fixture(scope="module")
def conditioned_hlrp():
    pol = tiny_policy(0, rtc_max_delay=5)
    pol.set_normalization_stats(action=ACTION_STATS)
    return pol


def test_conditioned_first_d_actions_are_the_previous_chunks_due_actions_exactly(conditioned_hlrp):
    policy = conditioned_hlrp
    due = policy.sample_chunk(policy.encode_prefix(make_observation(0)), noise=fixed_noise(policy, 1))[3:]
    prefix = policy.encode_prefix(make_observation(1))
    chunk = policy.sample_chunk(prefix, noise=fixed_noise(policy, 2),
                                guide=ChunkGuide(due, delay=4, execution_horizon=3, method="conditioned"))
    assert torch.allclose(chunk[:4], due[:4], atol=1e-5)
    assert not torch.allclose(chunk[4:len(due)], due[4:], atol=1e-2), "the rest is sampled, not copied"


def test_conditioning_gives_at_most_the_trained_prefix_length_and_the_rows_the_guide_has(conditioned_hlrp):
    policy = conditioned_hlrp
    prefix = policy.encode_prefix(make_observation(1))
    due = torch.full((policy.config.chunk_size, 2), 0.3)

    def given_rows(delay: int, rows: int) -> int:
        chunk = policy.sample_chunk(prefix, noise=fixed_noise(policy, 2),
                                    guide=ChunkGuide(due[:rows], delay, 3, method="conditioned"))
        return int((chunk - 0.3).abs().amax(dim=1).lt(1e-5).int().cumprod(0).sum())

    assert given_rows(8, len(due)) == 5  # rtc_max_delay = 5
    assert given_rows(4, 2) == 2
    assert given_rows(0, len(due)) == 0


def test_conditioning_with_no_given_actions_is_the_unguided_chunk(conditioned_hlrp):
    policy = conditioned_hlrp
    prefix = policy.encode_prefix(make_observation(1))
    plain = policy.sample_chunk(prefix, noise=fixed_noise(policy, 2))
    given_none = policy.sample_chunk(prefix, noise=fixed_noise(policy, 2),
                                     guide=ChunkGuide(torch.zeros(4, 2), 0, 3, method="conditioned"))
    assert torch.allclose(given_none, plain, atol=1e-6)


def test_only_a_model_trained_to_continue_a_prefix_accepts_a_conditioned_guide(hlrp, pi0):
    guide = ChunkGuide(torch.zeros(4, 2), 2, 3, method="conditioned")
    for policy, observe in ((hlrp, make_observation), (pi0, pi0_observation)):
        assert not policy.supports_conditioning
        with pytest.raises(ValueError, match="trained to continue a chunk prefix"):
            policy.sample_chunk(policy.encode_prefix(observe(1)), guide=guide)
    with pytest.raises(ValueError, match="method must be one of"):
        ChunkGuide(torch.zeros(4, 2), 2, 3, method="inpaint")


def training_batch(policy, n: int = 3):
    actions = torch.randn(n, policy.config.chunk_size, 2, generator=torch.Generator().manual_seed(5))
    return policy.processor.collate([make_observation(i) for i in range(n)], actions)


def test_training_gives_the_first_d_actions_clean_and_leaves_them_out_of_the_loss(conditioned_hlrp):
    policy = conditioned_hlrp
    model, cfg = policy.model, policy.config
    batch = training_batch(policy)
    images = [batch["images"][:, 0]]
    masks = [batch["image_masks"][:, 0]]
    actions = policy.normalize_action(batch["actions"])
    given = torch.zeros(3, cfg.chunk_size, dtype=torch.bool)
    given[:, :4] = True
    noise = fixed_noise(policy, 3, batch=3)
    time = torch.full((3,), 0.7)
    args = (images, masks, batch["lang_tokens"], batch["lang_masks"], torch.zeros(3, cfg.max_state_dim), actions)
    with torch.no_grad():
        losses = model(*args, noise=noise, time=time, given=given)
        other = noise.clone()
        other[:, :4] = 9.0  # the noise of given actions is never seen
        assert torch.equal(model(*args, noise=other, time=time, given=given)[:, 4:], losses[:, 4:])
        assert not torch.equal(model(*args, noise=noise, time=time)[:, 4:], losses[:, 4:])
    # compute_loss draws d per sample and averages over the actions not given
    replay = torch.Generator().manual_seed(11)
    drawn = policy._draw_given_prefix(3, replay)
    assert drawn.shape == (3, cfg.chunk_size) and int(drawn.sum(1).max()) <= cfg.rtc_max_delay
    with torch.no_grad():
        total = policy.compute_loss(batch, generator=torch.Generator().manual_seed(11))
        state = pad_vector(policy.normalize_state(batch["state"]), cfg.max_state_dim)
        per_action = model(*args[:4], state, actions, generator=replay, given=drawn)
    keep = (~drawn)[..., None].float()
    assert torch.allclose(total, (per_action * keep).sum() / (keep.sum() * 2), atol=1e-6)


def test_a_time_per_action_equal_for_all_actions_is_the_shared_time_embedding(conditioned_hlrp):
    model, cfg = conditioned_hlrp.model, conditioned_hlrp.config
    x = fixed_noise(conditioned_hlrp, 4, batch=2)
    shared, _, _ = model.embed_suffix(x, torch.tensor([0.3, 0.8]))
    per_action, _, _ = model.embed_suffix(x, torch.tensor([[0.3] * cfg.chunk_size, [0.8] * cfg.chunk_size]))
    assert torch.allclose(shared, per_action, atol=1e-6)


def test_training_bends_the_given_prefix_fully_at_its_first_action_and_not_at_its_last():
    policy = tiny_policy(0, rtc_max_delay=5, rtc_prefix_noise=0.5)
    given = torch.zeros(2, policy.config.chunk_size, dtype=torch.bool)
    given[0, :4] = True
    given[1, :1] = True
    bend = policy._prefix_bend(given, torch.Generator().manual_seed(0))
    assert bend[0, 0].abs().max() > 0
    assert torch.allclose(bend[0, 1], bend[0, 0] * 2 / 3) and torch.allclose(bend[0, 2], bend[0, 0] / 3)
    assert torch.equal(bend[0, 3:], torch.zeros_like(bend[0, 3:]))  # the seam and everything after: unbent
    assert torch.equal(bend[1], torch.zeros_like(bend[1]))  # a one-action prefix is its own seam


def test_the_shipped_rtc_checkpoint_continues_the_previous_chunk_and_the_demo_one_cannot():
    from pathlib import Path

    from hlrp_ros.policies.factory import load_policy

    models = Path(__file__).resolve().parents[1] / "models"
    rtc_model, plain = load_policy(models / "demo_arm_rtc"), load_policy(models / "demo_arm")
    assert rtc_model.supports_conditioning and not plain.supports_conditioning
    obs = make_observation(3, instruction="touch the red circle", image_hw=(64, 64), state_dim=3)
    due = rtc_model.sample_chunk(rtc_model.encode_prefix(obs), noise=fixed_noise(rtc_model, 1))[4:]
    chunk = rtc_model.sample_chunk(rtc_model.encode_prefix(obs), noise=fixed_noise(rtc_model, 2),
                                   guide=ChunkGuide(due, delay=5, execution_horizon=4, method="conditioned"))
    assert torch.allclose(chunk[:5], due[:5], atol=1e-5)
