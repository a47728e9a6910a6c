"""Flow-matching primitives: time distribution, interpolation and the Euler integrator."""

from __future__ import annotations

import math

import pytest
import torch

from hlrp_ros.policies.common import flow_matching as fm


def test_time_is_beta_1p5_1_scaled_into_0p001_1():
    t = fm.sample_time(200_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (200_000,)
    assert float(t.min()) >= 0.001 and float(t.max()) <= 1.0
    # Beta(1.5, 1): mean 0.6, var = 1.5 / (2.5^2 * 3.5) = 0.06857; scaled by 0.999, shifted by 0.001.
    assert float(t.mean()) == pytest.approx(0.6 * 0.999 + 0.001, abs=3e-3)
    assert float(t.var()) == pytest.approx(0.06857 * 0.999**2, abs=2e-3)
    # CDF of Beta(a, 1) is x^a: P(beta <= 0.5) = 0.5^1.5.
    frac = float(((t - 0.001) / 0.999 <= 0.5).float().mean())
    assert frac == pytest.approx(0.5**1.5, abs=5e-3)


def test_time_with_generator_is_reproducible_and_without_varies():
    a = fm.sample_time(8, generator=torch.Generator().manual_seed(3))
    b = fm.sample_time(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert fm.sample_time(8).shape == (8,)


def test_noise_with_generator_is_reproducible():
    a = fm.sample_noise((2, 5, 3), generator=torch.Generator().manual_seed(1))
    b = fm.sample_noise((2, 5, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32


def test_interpolation_is_noise_at_t1_data_at_t0_and_target_is_noise_minus_data():
    actions = torch.randn(3, 4, 2)
    noise = torch.randn(3, 4, 2)
    x_t, u_t = fm.interpolate(actions, noise, torch.tensor([1.0, 0.0, 0.25]))
    assert torch.allclose(x_t[0], noise[0]) and torch.allclose(x_t[1], actions[1])
    assert torch.allclose(x_t[2], 0.25 * noise[2] + 0.75 * actions[2])
    assert torch.equal(u_t, noise - actions)


def test_euler_times_match_smolvla_expression():
    assert fm.euler_times(4) == [1.0, 0.75, 0.5, 0.25]
    dt = -1.0 / 10
    assert fm.euler_times(10) == [1.0 + s * dt for s in range(10)]
    with pytest.raises(ValueError):
        fm.euler_times(0)


def test_euler_recovers_data_exactly_for_the_ideal_straight_flow():
    # For x_t = t*noise + (1-t)*a the true velocity is constant (noise - a): Euler is exact.
    actions, noise = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    calls = []

    def velocity(x, t):
        calls.append(t)
        return noise - actions

    out = fm.euler_integrate(velocity, noise, num_steps=7)
    assert torch.allclose(out, actions, atol=1e-6)
    assert len(calls) == 7 and calls[0] == 1.0


def test_euler_on_linear_field_matches_closed_form():
    # dx/dt = x integrated from t=1 to 0 with n steps of dt=-1/n: x0 = x1 * (1 - 1/n)^n.
    x1 = torch.ones(3, dtype=torch.float64)
    out = fm.euler_integrate(lambda x, t: x, x1, num_steps=5)
    assert torch.allclose(out, x1 * (1 - 1 / 5) ** 5)
    assert float(out[0]) == pytest.approx(math.pow(0.8, 5))
