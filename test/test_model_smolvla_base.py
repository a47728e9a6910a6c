"""smolvla-base (SmolVLM2-500M backbone truncated to 16 layers) builds on CPU with random weights and runs."""

from __future__ import annotations

import logging

import torch
from model_fixtures import make_observation

from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy
from hlrp_ros.policies.hlrp.presets import make_config

logger = logging.getLogger(__name__)


def test_smolvla_base_builds_on_cpu_and_predicts_a_50_step_chunk():
    torch.manual_seed(0)
    policy = HLRPPolicy(make_config("smolvla-base")).eval()
    n_params = sum(p.numel() for p in policy.parameters())
    expert = sum(p.numel() for p in policy.model.vlm_with_expert.lm_expert.parameters())
    logger.info("smolvla-base: %.1fM parameters (expert %.1fM)", n_params / 1e6, expert / 1e6)
    assert 430e6 < n_params < 470e6, n_params  # SmolVLA reports ~450M
    wrapper = policy.model.vlm_with_expert
    assert len(wrapper.vlm_layers) == 16 and wrapper.expert_hidden_size == 720
    obs = make_observation(seed=0, image_hw=(480, 640), state_dim=policy.config.state_dim)
    # 3 denoising steps keep the test short (benchmarks/bench_model.py times the full 10).
    chunk = policy.predict_action_chunk(obs, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (50, policy.config.action_dim)
    assert torch.isfinite(chunk).all()
