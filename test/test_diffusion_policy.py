"""The diffusion family with tiny configs: encoder pieces, UNet, scheduler loop, history, language, checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from hlrp_ros.policies.base import Observation, ObservationHistoryError, history_length
from hlrp_ros.policies.diffusion import DiffusionConfig, DiffusionPolicy
from hlrp_ros.policies.diffusion import modeling_diffusion as md
from hlrp_ros.policies.diffusion.modeling_diffusion import (
    SpatialSoftmax,
    center_crop,
    random_crop,
    resnet_trunk,
    trunk_output_size,
)
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.policies.history import ObservationBuffer
from hlrp_ros.policies.hlrp.processor_hlrp import build_tiny_tokenizer

TINY = dict(state_dim=3, action_dim=2, camera_names=["top", "wrist"], image_size=(64, 64), crop_shape=(60, 60),
            down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16, spatial_softmax_num_keypoints=4,
            horizon=8, n_action_steps=4, n_obs_steps=2, noise_scheduler_type="DDIM", num_train_timesteps=50,
            num_inference_steps=5)
LANG = dict(language_conditioned=True, text_vocab_size=128, text_hidden_size=32, text_num_layers=1,
            text_num_heads=4, text_feature_dim=16, tokenizer_max_length=8, abstract_tokens_enabled=True,
            abstract_vocab_size=10, abstract_max_length=4, abstract_feature_dim=8)


def make_policy(**changes) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = DiffusionConfig(**{**TINY, **changes})
    tokenizer = build_tiny_tokenizer(vocab_size=128) if cfg.language_conditioned else None
    policy = DiffusionPolicy(cfg, tokenizer=tokenizer)
    policy.set_normalization_stats(state={"min": [-1, -2, -3], "max": [1, 2, 3]},
                                   action={"min": [-0.5, 0.0], "max": [0.5, 2.0]})
    return policy


def observation(seed: int, n_obs_steps: int = 2, instruction: str = "push the red cube",
                abstract_tokens: list[int] | None = None) -> Observation:
    rng = np.random.default_rng(seed)

    def one() -> Observation:
        return Observation(images={c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in ("top", "wrist")},
                           state=rng.normal(size=3).astype(np.float32), instruction=instruction,
                           abstract_tokens=abstract_tokens)

    steps = [one() for _ in range(n_obs_steps)]
    return dataclasses.replace(steps[-1], history=steps[:-1])


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicy:
    return make_policy()


@pytest.fixture(scope="module")
def lang_policy() -> DiffusionPolicy:
    return make_policy(**LANG)


# --- encoder pieces -------------------------------------------------------------------------------------
def test_resnet_trunk_layout_and_output_size():
    trunk, channels = resnet_trunk("resnet18", group_norm=True)
    assert channels == 512 and sum(p.numel() for p in trunk.parameters()) == 11_176_512
    keys = set(trunk.state_dict())
    assert {"0.weight", "1.weight", "4.0.conv1.weight", "5.0.downsample.0.weight", "5.0.downsample.1.bias",
            "7.1.bn2.weight"} <= keys and "4.0.downsample.0.weight" not in keys
    assert isinstance(trunk[1], torch.nn.GroupNorm) and trunk[1].num_groups == 4
    with torch.no_grad():
        for hw in ((28, 28), (33, 47), (84, 84)):
            assert tuple(trunk(torch.zeros(1, 3, *hw)).shape[2:]) == trunk_output_size(*hw)
    bn_trunk, _ = resnet_trunk("resnet18", group_norm=False)
    assert "1.running_mean" in bn_trunk.state_dict()
    # cut after layer3: stride 16, so a 60x60 crop keeps a 4x4 map for the keypoints (the whole trunk: 2x2)
    short, channels = resnet_trunk("resnet18", group_norm=True, stages=3)
    assert channels == 256 and len(short) == 7 and set(short.state_dict()) <= keys
    with torch.no_grad():
        assert tuple(short(torch.zeros(1, 3, 60, 60)).shape[1:]) == (256, 4, 4) == (256, *trunk_output_size(
            60, 60, stages=3))
    assert trunk_output_size(60, 60) == (2, 2)


def test_spatial_softmax_finds_a_peak():
    pool = SpatialSoftmax(1, 5, 7, num_kp=1)
    with torch.no_grad():
        pool.nets.weight.fill_(1.0)
        pool.nets.bias.zero_()
    maps = torch.full((1, 1, 5, 7), -50.0)
    maps[0, 0, 4, 0] = 50.0  # bottom-left: x = -1, y = +1
    assert torch.allclose(pool(maps), torch.tensor([[[-1.0, 1.0]]]), atol=1e-4)


def test_crops_centre_at_inference_random_in_training():
    x = torch.arange(10 * 12, dtype=torch.float32).reshape(1, 1, 10, 12)
    assert torch.equal(center_crop(x, 6, 8), x[..., 2:8, 2:10])
    crops = {tuple(random_crop(x, 6, 8, torch.Generator().manual_seed(s))[0, 0, 0, :2].tolist()) for s in range(20)}
    assert len(crops) > 3


def test_inference_convolutions_as_one_matmul_match_torch(monkeypatch):
    """The GEMM path of large 1D convolutions (inference on the CPU) computes what nn.Conv1d computes."""
    monkeypatch.setattr(md, "MATMUL_MIN_WEIGHT", 0)
    torch.manual_seed(0)
    for kernel, bias in ((5, True), (3, False), (1, True)):
        conv = torch.nn.Conv1d(12, 7, kernel, padding=kernel // 2, bias=bias)
        x = torch.randn(3, 12, 9)
        with torch.no_grad():
            fast = md.conv1d(conv, x)
        assert torch.allclose(fast, conv(x), atol=1e-5) and fast.shape == (3, 7, 9)
        assert torch.allclose(md.conv1d(conv, x[:1]).detach(), conv(x[:1]), atol=1e-5)  # autograd: nn.Conv1d
    for b in (1, 3):
        x = torch.randn(b, 12, 8)
        down = torch.nn.Conv1d(12, 12, 3, 2, 1)
        up = torch.nn.ConvTranspose1d(12, 5, 4, 2, 1)
        with torch.no_grad():
            assert torch.allclose(md.conv1d(down, x), down(x), atol=1e-5)
            assert torch.allclose(md.conv_transpose1d(up, x), up(x), atol=1e-5) and up(x).shape == (b, 5, 16)


# --- sampling -------------------------------------------------------------------------------------------
def test_chunk_shape_and_ddim_is_deterministic_from_noise(policy):
    obs = observation(1)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    a = policy.predict_action_chunk(obs, noise=noise, generator=torch.Generator().manual_seed(1))
    b = policy.predict_action_chunk(obs, noise=noise, generator=torch.Generator().manual_seed(2))
    assert a.shape == (4, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    prefix = policy.encode_prefix(obs)
    assert prefix.global_cond.shape == (1, policy.diffusion.global_cond_dim) == (1, 2 * (3 + 2 * 8))
    assert torch.equal(policy.sample_chunk(prefix, noise=noise), a)


@pytest.mark.parametrize("changes", [{}, LANG])
def test_a_bfloat16_policy_samples_close_to_float32(changes):
    obs = observation(3, instruction="push the red cube")
    noise = torch.randn(TINY["horizon"], TINY["action_dim"], generator=torch.Generator().manual_seed(0))
    expected = make_policy(**changes).predict_action_chunk(obs, noise=noise)
    got = make_policy(**changes).to_device_dtype("cpu", "bfloat16").predict_action_chunk(obs, noise=noise)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - expected).abs().max() < 0.1, (got - expected).abs().max()


def test_sample_chunk_is_the_diffusers_loop(policy):
    """The chunk equals a loop written against diffusers' DDIMScheduler directly (then sliced, un-normalised)."""
    prefix = policy.encode_prefix(observation(2))
    noise = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(4))
    cfg = policy.config
    scheduler = DDIMScheduler(num_train_timesteps=50, beta_schedule=cfg.beta_schedule, clip_sample=True,
                              prediction_type="epsilon")
    scheduler.set_timesteps(5)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(policy.diffusion.unet(x, t.repeat(1), prefix.global_cond), t, x).prev_sample
    expected = policy.normalize_action.inverse(x[0, 1:5])
    assert torch.allclose(policy.sample_chunk(prefix, noise=noise[0]), expected, atol=1e-5)
    assert list(scheduler.timesteps) == [40, 30, 20, 10, 0]


@pytest.mark.parametrize("scale", [True, False])
def test_film_tables_equal_the_per_step_conditioning(scale):
    unet = md.ConditionalUnet1d(DiffusionConfig(**{**TINY, "use_film_scale_modulation": scale}), global_cond_dim=6)
    cond, x, steps = torch.randn(2, 6), torch.randn(2, 8, 2), torch.tensor([45, 3])
    with torch.no_grad():
        tables = unet.film_tables(steps, cond)
        for i, t in enumerate(steps):
            assert torch.allclose(unet(x, t, cond, films=[tb[i] for tb in tables]), unet(x, t.repeat(2), cond),
                                  atol=1e-5)


def test_ddpm_noise_comes_from_the_generator():
    ddpm = make_policy(noise_scheduler_type="DDPM", num_inference_steps=None)
    prefix = ddpm.encode_prefix(observation(3))
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))

    def run(seed: int) -> torch.Tensor:
        return ddpm.sample_chunk(prefix, noise=noise, generator=torch.Generator().manual_seed(seed))

    assert ddpm.config.num_steps == 50
    assert torch.equal(run(7), run(7))
    assert (run(7) - run(8)).abs().max() > 1e-3
    assert (ddpm.sample_chunk(prefix, num_steps=10, noise=noise, generator=torch.Generator().manual_seed(7))
            - run(7)).abs().max() > 1e-4


def test_clip_sample_bounds_the_prediction():
    clipped = make_policy(prediction_type="sample", clip_sample_range=0.25, action_norm_mode="identity")
    actions = clipped.predict_action_chunk(observation(4), noise=torch.randn(8, 2) * 5)
    assert actions.abs().max() <= 0.25 + 1e-6


def test_every_input_changes_the_actions(policy):
    obs = observation(5)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(6))
    base = policy.predict_action_chunk(obs, noise=noise)
    older = obs.history[0]
    variants = {
        "current image": dataclasses.replace(obs, images={**obs.images, "top": 255 - obs.images["top"]}),
        "wrist image": dataclasses.replace(obs, images={**obs.images, "wrist": 255 - obs.images["wrist"]}),
        "current state": dataclasses.replace(obs, state=obs.state + 0.5),
        "history state": dataclasses.replace(obs, history=[dataclasses.replace(older, state=older.state + 0.5)]),
        "history order": dataclasses.replace(dataclasses.replace(older, history=None), history=[
            dataclasses.replace(obs, history=None)]),
    }
    for name, variant in variants.items():
        diff = (policy.predict_action_chunk(variant, noise=noise) - base).abs().max().item()
        assert diff > 1e-4, f"changing the {name} changed the actions by only {diff:.2g}"
    blind = dataclasses.replace(obs, instruction="something else entirely")
    assert torch.equal(policy.predict_action_chunk(blind, noise=noise), base)


def test_history_is_required_and_checked(policy):
    obs = observation(6)
    with pytest.raises(ObservationHistoryError) as err:
        policy.predict_action_chunk(dataclasses.replace(obs, history=None))
    assert err.value.reason == "history_short"
    with pytest.raises(ObservationHistoryError) as err:
        policy.predict_action_chunk(dataclasses.replace(obs, history=[obs.history[0]] * 2))
    assert err.value.reason == "history_long"
    assert history_length(policy.config) == 2 and history_length(object()) == 1


def test_batched_rows_match_single_observations(policy):
    obs = [observation(7), observation(8)]
    noise = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(9))
    batched = policy.predict_action_chunk(obs, noise=noise)
    for i in range(2):
        assert torch.allclose(batched[i], policy.predict_action_chunk(obs[i], noise=noise[i]), atol=1e-5)


def test_images_of_other_sizes_are_resized_with_padding(policy):
    obs = observation(10)
    wide = {c: np.repeat(img, 2, axis=1) for c, img in obs.images.items()}  # 64x128
    actions = policy.predict_action_chunk(dataclasses.replace(obs, images=wide), noise=torch.zeros(8, 2))
    assert actions.shape == (4, 2) and torch.isfinite(actions).all()


# --- language -------------------------------------------------------------------------------------------
def test_language_conditioning_uses_the_current_instruction(lang_policy):
    obs = observation(11, abstract_tokens=[1, 2])
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(12))
    base = lang_policy.predict_action_chunk(obs, noise=noise)
    other = lang_policy.predict_action_chunk(dataclasses.replace(obs, instruction="pull the blue ball"), noise=noise)
    assert (other - base).abs().max() > 1e-4
    tokens = lang_policy.predict_action_chunk(dataclasses.replace(obs, abstract_tokens=[3]), noise=noise)
    assert (tokens - base).abs().max() > 1e-4
    # The history's instructions are not used: only the current one counts (a switch acts at the next chunk).
    old = dataclasses.replace(obs.history[0], instruction="pull the blue ball")
    assert torch.equal(lang_policy.predict_action_chunk(dataclasses.replace(obs, history=[old]), noise=noise), base)
    assert lang_policy.diffusion.global_cond_dim == 2 * (3 + 16) + 16 + 8


def test_text_film_makes_the_image_keypoints_depend_on_the_instruction():
    """With ``text_film_vision`` the trunk's stages are FiLMed on the instruction: the keypoints follow the
    words. It starts as the identity (zero projection), so a checkpoint trained without it gains it unchanged."""
    plain, filmed = make_policy(**LANG), make_policy(**LANG, text_film_vision=True)
    missing = filmed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["diffusion.vision_film.proj.bias", "diffusion.vision_film.proj.weight"]
    assert filmed.diffusion.vision_film.proj.out_features == 2 * (64 + 128 + 256 + 512)
    obs = observation(16, abstract_tokens=[1])
    other = dataclasses.replace(obs, instruction="pull the blue ball")

    def keypoints(model, o):
        inputs = model._model_inputs(model.processor.collate([o]))
        with torch.no_grad():
            return model.diffusion.global_conditioning(inputs)[:, : 2 * (3 + 16)]  # state + image features

    assert torch.equal(keypoints(filmed, obs), keypoints(plain, obs))
    assert torch.equal(keypoints(plain, other), keypoints(plain, obs))  # blind trunk: the words do not matter
    torch.nn.init.normal_(filmed.diffusion.vision_film.proj.weight, std=0.5)
    assert (keypoints(filmed, other) - keypoints(filmed, obs)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="text_film_vision needs language_conditioned"):
        DiffusionConfig(**TINY, text_film_vision=True)


# --- compiled inference ----------------------------------------------------------------------------------
def test_a_compiled_policy_samples_the_eager_chunks_and_new_instructions_do_not_recompile():
    """``set_execution(compile=...)`` runs the image encoder and the UNet step through torch.compile (aot_eager:
    the graphs inductor is given, without generating kernels); the instruction's encoder stays eager, so
    instructions of other token lengths reuse the compiled graphs; the module tree (state dict) is unchanged."""
    from torch._dynamo.utils import counters

    eager, compiled = make_policy(**LANG, text_film_vision=True), make_policy(**LANG, text_film_vision=True)
    compiled.set_execution(compile="aot_eager")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    before, graphs = counters["stats"]["unique_graphs"], []
    for seed, instruction in ((0, "push the red cube"), (1, "go"), (2, "put the blue block on the green one please")):
        obs, noise = observation(seed, instruction=instruction), torch.randn(8, 2, generator=torch.Generator().manual_seed(seed))
        got, expected = compiled.predict_action_chunk(obs, noise=noise), eager.predict_action_chunk(obs, noise=noise)
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
        graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs == [2, 2, 2]  # the encoder and the UNet step compiled once each, then reused
    compiled.set_execution()  # back to eager
    assert torch.equal(compiled.predict_action_chunk(obs, noise=noise), expected)


def test_inductor_with_frozen_weights_gives_the_eager_actions_and_follows_loaded_weights(tmp_path):
    """Inductor folds the weights into its code (freezing): the chunk still equals the eager one, and weights
    loaded afterwards are the ones used (loading compiles again)."""
    small = dict(backbone_stages=1, camera_names=["top", "wrist"])  # a short trunk compiles quickly
    policy = make_policy(**small)
    obs, noise = observation(4), torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
    expected = policy.predict_action_chunk(obs, noise=noise)
    policy.set_execution(compile=True)
    got = policy.predict_action_chunk(obs, noise=noise)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    other = make_policy(**small)
    with torch.no_grad():
        for p in other.diffusion.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "other")
    policy.load_weights(tmp_path / "other" / md.WEIGHTS_NAME)
    got, expected = policy.predict_action_chunk(obs, noise=noise), other.predict_action_chunk(obs, noise=noise)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_cuda_graphs_are_refused_by_name(policy):
    policy.set_execution()  # eager: always fine
    with pytest.raises(NotImplementedError, match="DiffusionPolicy has no CUDA-graph path"):
        policy.set_execution(cuda_graphs=True)


def test_tokenizer_truncates_and_reports(lang_policy, policy):
    tok = lang_policy.processor.tokenize("push the red cube to the left of the blue ball then stop")
    assert tok.truncated and tok.ids.shape == (1, 8) and tok.num_tokens > 8
    assert not policy.processor.tokenize("anything at all").truncated  # the blind policy ignores text
    prefix = lang_policy.encode_prefix(observation(13, instruction="push the red cube to the left of the blue ball"))
    assert prefix.truncated


# --- training and checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_training_reduces_the_loss(prediction_type):
    """A fixed noise draw (same generator seed every step): the denoising loss must fall under Adam."""
    model = make_policy(**LANG, prediction_type=prediction_type)
    obs = [observation(20 + i, abstract_tokens=[i]) for i in range(2)]
    actions = np.random.default_rng(0).uniform(-0.4, 0.4, size=(2, 8, 2)).astype(np.float32)
    batch = model.processor.collate(obs, actions)
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_("backbone" not in name)  # the trunk runs forward only (fast)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model.compute_loss(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


def test_save_load_round_trip(tmp_path, lang_policy):
    lang_policy.save_pretrained(tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert isinstance(loaded, DiffusionPolicy) and loaded.config == lang_policy.config
    obs = observation(14, abstract_tokens=[4])
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(15))
    assert torch.equal(loaded.predict_action_chunk(obs, noise=noise), lang_policy.predict_action_chunk(obs, noise=noise))


def test_config_validation():
    with pytest.raises(ValueError, match="n_action_steps"):
        DiffusionConfig(**{**TINY, "n_action_steps": 8})
    with pytest.raises(ValueError, match="horizon"):
        DiffusionConfig(**{**TINY, "horizon": 6})
    with pytest.raises(ValueError, match="crop_shape"):
        DiffusionConfig(**{**TINY, "crop_shape": (70, 60)})
    with pytest.raises(ValueError, match="noise_scheduler_type"):
        DiffusionConfig(**{**TINY, "noise_scheduler_type": "Euler"})
    with pytest.raises(ValueError, match="unknown DiffusionConfig fields"):
        DiffusionConfig.from_dict({"type": "hlrp_diffusion", "colour": 1})
    cfg = DiffusionConfig(**TINY)
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg and (cfg.chunk_size, cfg.num_steps) == (4, 5)


# --- observation buffer ---------------------------------------------------------------------------------
def obs_at(i: int) -> Observation:
    return Observation(images={}, state=np.array([float(i)]), instruction="x")


def test_buffer_picks_one_period_apart_and_names_gaps():
    buf = ObservationBuffer(n_obs_steps=3, period=0.1)
    for i in range(10):  # 40 Hz inputs
        buf.push(obs_at(i), 1.0 + 0.025 * i)
    cur = buf.current()  # newest at 1.225: wants 1.125 (i=5) and 1.025 (i=1)
    assert cur.state[0] == 9 and [h.state[0] for h in cur.history] == [1, 5]
    buf.push(obs_at(99), 1.6)  # 0.375 s without input
    with pytest.raises(ObservationHistoryError) as err:
        buf.current()
    assert err.value.reason == "history_gap"


def test_buffer_start_of_episode_and_clock_jumps():
    buf = ObservationBuffer(n_obs_steps=2, period=0.1, pad_start=True)
    with pytest.raises(ObservationHistoryError, match="no observation"):
        buf.current()
    buf.push(obs_at(0), 5.0)
    assert [h.state[0] for h in buf.current().history] == [0]  # repeated, as LeRobot's queues
    strict = ObservationBuffer(n_obs_steps=2, period=0.1, pad_start=False)
    strict.push(obs_at(0), 5.0)
    with pytest.raises(ObservationHistoryError) as err:
        strict.current()
    assert err.value.reason == "history_short"
    strict.push(obs_at(1), 5.1)
    assert strict.current().history[0].state[0] == 0
    strict.push(obs_at(2), 1.0)  # the clock jumped back: a new episode
    assert len(strict) == 1
