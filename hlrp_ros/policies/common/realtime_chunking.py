"""Guided real-time chunking (RTC): inpainting a new action chunk onto the one being executed.

Black, Galliker, Levine (2025), "Real-Time Execution of Action Chunking Flow Policies". While a chunk is
being sampled the robot keeps executing the previous one, so by the time the new chunk arrives its first
``d`` actions (the inference delay, in action steps) are already in the past and the controller switches
at index ``d``. Sampling the new chunk from fresh noise makes that switch jump. RTC guides the denoiser
towards the previous chunk's actions on the overlap, with a soft mask ``W`` over the chunk's ``H`` steps:

* ``W_i = 1`` for ``i < d`` (frozen: these are executed from the previous chunk anyway);
* ``W_i = c_i (e^{c_i} - 1) / (e - 1)`` with ``c_i = (H - s - i) / (H - s - d + 1)`` for ``d <= i < H - s``;
* ``W_i = 0`` for ``i >= H - s`` (free: new information only), ``s`` the execution horizon.

Time convention. The paper integrates ``tau`` from 0 (noise) to 1 (data); this package, like PI0/SmolVLA,
integrates ``t`` from 1 (noise) to 0 (data) (see :mod:`flow_matching`), so ``tau = 1 - t`` and our velocity
is the negative of the paper's (``v_ours = noise - actions``). The denoised estimate is the same function of
the state in both: ``A_hat = x_t - t v(x_t)``. The paper's guided update ``A += (1/n)(v_paper + w g)``
becomes, with ``dt = -1/n``, ``x += dt (v - w g)``, where

* ``g = e . dA_hat/dx`` is the vector-Jacobian product of ``e = W * (Y - A_hat)`` (``Y``: the previous chunk's
  actions on the new chunk's time grid, normalised), computed by autograd through the velocity network
  only (the observation prefix / KV cache is a constant of the chunk);
* ``w = min(beta, (1 - tau) / (tau r^2))``, ``r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)``, which simplifies to
  ``(t^2 + (1 - t)^2) / (t (1 - t))`` (infinite at ``t = 1``, hence the clip ``beta``).

LeRobot's ``execution_horizon`` is the length of the guided region, i.e. the paper's ``H - s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hlrp_ros.policies.common.flow_matching import euler_times

#: The paper's guidance weight clip (``beta = 5`` in its experiments).
DEFAULT_BETA = 5.0
#: How a chunk is made to continue the previous one: inference-time guidance or a trained conditioning.
GUIDE_METHODS = ("guided", "conditioned")


@dataclass(frozen=True)
class ChunkGuide:
    """What a guided chunk is inpainted onto.

    Attributes:
        actions: The previous chunk's actions on the new chunk's time grid, robot units: row ``i`` is the
            action due at the new chunk's step ``i``. ``(n, action_dim)``, or ``(B, n, action_dim)`` for a
            batched prefix; ``n <= H`` (steps the previous chunk does not reach get no guidance).
        delay: ``d``, the inference delay in action steps (the new chunk's first ``d`` actions are frozen).
        execution_horizon: ``s``, the steps executed from a chunk before the next one replaces it; the
            last ``s`` steps of the new chunk are left free.
        beta: Clip of the guidance weight (the paper's ``beta``).
        method: ``guided`` (the paper's inference-time guidance) or ``conditioned`` (the first ``d`` actions
            handed to a model trained to continue them, see ``HLRPConfig.rtc_max_delay``; no guidance).
    """

    actions: Tensor
    delay: int
    execution_horizon: int
    beta: float = DEFAULT_BETA
    method: str = "guided"

    def __post_init__(self) -> None:
        if self.actions.ndim not in (2, 3) or self.actions.shape[-2] < 1:
            raise ValueError(f"guide actions must be (n, action_dim) or (B, n, action_dim) with n >= 1, "
                             f"got shape {tuple(self.actions.shape)}")
        if not bool(torch.isfinite(self.actions).all()):
            raise ValueError("guide actions contain NaN or infinite values")
        if self.delay < 0:
            raise ValueError(f"delay d must be >= 0 action steps, got {self.delay}")
        if self.execution_horizon < 0:
            raise ValueError(f"execution horizon s must be >= 0 action steps, got {self.execution_horizon}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if self.method not in GUIDE_METHODS:
            raise ValueError(f"method must be one of {GUIDE_METHODS}, got {self.method!r}")

    def check(self, chunk_size: int, action_dim: int, batch_size: int = 1, can_condition: bool = False) -> None:
        """Raises ``ValueError`` when the guide does not fit ``batch_size`` chunks ``(chunk_size, action_dim)``
        of a policy (``can_condition``: trained to continue a chunk prefix)."""
        if self.method == "conditioned" and not can_condition:
            raise ValueError("conditioned real-time chunking needs a model trained to continue a chunk prefix "
                             "(HLRP with rtc_max_delay > 0); use method 'guided'")
        n, dim = self.actions.shape[-2:]
        if self.actions.ndim == 3 and self.actions.shape[0] not in (1, batch_size):
            raise ValueError(f"guide actions are for a batch of {self.actions.shape[0]}, the prefix holds {batch_size}")
        if dim != action_dim:
            raise ValueError(f"guide actions have {dim} dims, the policy has {action_dim}")
        if n > chunk_size:
            raise ValueError(f"guide has {n} actions, more than the chunk length H = {chunk_size}")
        if self.delay > chunk_size or self.execution_horizon > chunk_size:
            raise ValueError(f"delay d = {self.delay} and execution horizon s = {self.execution_horizon} must "
                             f"be <= the chunk length H = {chunk_size}")


def soft_mask(chunk_size: int, delay: int, execution_horizon: int) -> Tensor:
    """The paper's soft mask ``W`` (its Eq. 5) over ``H = chunk_size`` steps, float32 ``(H,)``.

    1 for ``i < d``, exponential decay ``c_i (e^{c_i} - 1) / (e - 1)``, ``c_i = (H - s - i) / (H - s - d + 1)``
    for ``d <= i < H - s``, and 0 from ``H - s`` on. When ``d >= H - s`` there is no decaying part.
    """
    h, d, s = chunk_size, delay, execution_horizon
    i = torch.arange(h, dtype=torch.float64)
    c = (h - s - i) / (h - s - d + 1) if h - s - d + 1 > 0 else torch.zeros_like(i)
    decay = c * torch.expm1(c) / math.expm1(1.0)
    mask = torch.where(i < d, torch.ones_like(i), torch.where(i < h - s, decay, torch.zeros_like(i)))
    return mask.to(torch.float32)


def guidance_weight(t: float, beta: float) -> float:
    """``min(beta, (1 - tau) / (tau r_tau^2))`` at our time ``t = 1 - tau``: ``(t^2 + (1-t)^2) / (t (1-t))``."""
    if t <= 0.0 or t >= 1.0:
        return beta
    return min(beta, (t * t + (1.0 - t) ** 2) / (t * (1.0 - t)))


def guide_tensors(
    guide: ChunkGuide, chunk_size: int, max_action_dim: int, normalize: Callable[[Tensor], Tensor],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """The target ``Y`` and weights in the model's action space, both ``(B or 1, H, max_action_dim)``.

    Args:
        guide: The guide (robot units; :meth:`ChunkGuide.check` already passed).
        chunk_size: ``H``.
        max_action_dim: The model's padded action width (padded dims get weight 0).
        normalize: Robot units -> the model's normalised action space, ``(..., action_dim)``.
        device: Device of the sampling.
    """
    actions = guide.actions if guide.actions.ndim == 3 else guide.actions[None]
    b, n, dim = actions.shape
    target = torch.zeros(b, chunk_size, max_action_dim, dtype=torch.float32, device=device)
    target[:, :n, :dim] = normalize(actions.to(device=device, dtype=torch.float32))
    weights = torch.zeros(1, chunk_size, max_action_dim, dtype=torch.float32, device=device)
    weights[0, :n, :dim] = soft_mask(chunk_size, guide.delay, guide.execution_horizon)[:n, None].to(device)
    return target, weights


def guided_velocity(
    velocity_fn: Callable[[Tensor, float], Tensor], x_t: Tensor, t: float, target: Tensor, weights: Tensor,
    beta: float,
) -> Tensor:
    """``v - w g``: the velocity at ``(x_t, t)`` corrected towards ``target`` where ``weights`` > 0.

    ``g`` is the vector-Jacobian product of ``weights * (target - A_hat)`` through ``A_hat = x - t v(x)``
    (autograd through ``velocity_fn`` only; whatever it closes over is a constant), ``w`` the clipped
    guidance weight. Returns a detached tensor shaped like ``x_t``.
    """
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        v = velocity_fn(x, t)
        denoised = x - t * v
        error = weights * (target - denoised)
        (g,) = torch.autograd.grad(denoised, x, grad_outputs=error)
    return (v - guidance_weight(t, beta) * g).detach()


def guided_euler_integrate(
    velocity_fn: Callable[[Tensor, float], Tensor], noise: Tensor, num_steps: int, target: Tensor,
    weights: Tensor, beta: float,
) -> Tensor:
    """:func:`flow_matching.euler_integrate` with every velocity replaced by :func:`guided_velocity`."""
    dt = -1.0 / num_steps
    x_t = noise
    for t in euler_times(num_steps):
        x_t = x_t + dt * guided_velocity(velocity_fn, x_t, t, target, weights, beta)
    return x_t
