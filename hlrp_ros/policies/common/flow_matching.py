"""Flow-matching primitives shared by the action experts.

Convention (PI0 / SmolVLA): ``t = 1`` is pure noise and ``t = 0`` is data.

* interpolation: ``x_t = t * noise + (1 - t) * actions``
* regression target (velocity): ``u_t = noise - actions``
* sampling integrates ``dx/dt = v(x_t, t)`` from ``t = 1`` to ``t = 0`` with explicit Euler steps of size
  ``dt = -1 / num_steps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: PI0/SmolVLA time distribution: ``t = Beta(1.5, 1) * 0.999 + 0.001``.
TIME_BETA_ALPHA = 1.5
TIME_BETA_BETA = 1.0
TIME_SCALE = 0.999
TIME_OFFSET = 0.001


def sample_time(
    batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """Draws flow-matching times as PI0/SmolVLA do: ``Beta(1.5, 1) * 0.999 + 0.001``.

    Args:
        batch_size: Number of times to draw.
        device: Device of the returned tensor.
        generator: Optional generator for reproducible draws. ``torch.distributions.Beta`` cannot take a
            generator, so with one the Beta variate is built from two Gamma variates drawn with it.

    Returns:
        Float32 tensor of shape ``(batch_size,)`` with values in ``[0.001, 1.0]``.
    """
    if generator is None:
        beta = torch.distributions.Beta(
            torch.tensor(TIME_BETA_ALPHA), torch.tensor(TIME_BETA_BETA)
        ).sample((batch_size,))
    else:
        gen_device = generator.device
        a = torch._standard_gamma(torch.full((batch_size,), TIME_BETA_ALPHA, device=gen_device), generator=generator)
        b = torch._standard_gamma(torch.full((batch_size,), TIME_BETA_BETA, device=gen_device), generator=generator)
        beta = a / (a + b)
    return (beta * TIME_SCALE + TIME_OFFSET).to(device=device, dtype=torch.float32)


def sample_noise(
    shape: tuple[int, ...],
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard normal float32 noise of ``shape`` (drawn on the generator's device when one is given)."""
    if generator is None:
        return torch.randn(shape, dtype=torch.float32, device=device)
    noise = torch.randn(shape, dtype=torch.float32, device=generator.device, generator=generator)
    return noise.to(device)


def interpolate(actions: Tensor, noise: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """Builds the noisy sample and the velocity target.

    Args:
        actions: Clean actions ``(B, T, A)``.
        noise: Noise of the same shape.
        time: Times ``(B,)``.

    Returns:
        ``(x_t, u_t)``: ``x_t = t * noise + (1 - t) * actions`` and ``u_t = noise - actions``, both ``(B, T, A)``.
    """
    t = time[:, None, None]
    return t * noise + (1 - t) * actions, noise - actions


def euler_times(num_steps: int) -> list[float]:
    """Times at which the velocity is evaluated: ``1, 1 + dt, ..., 1 + (num_steps - 1) dt`` with ``dt = -1/num_steps``.

    The values are computed exactly as SmolVLA computes them (``1.0 + step * dt`` in Python floats), so
    checkpoints reproduce LeRobot's actions bit for bit in the time embedding.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = -1.0 / num_steps
    return [1.0 + step * dt for step in range(num_steps)]


def euler_integrate(
    velocity_fn: Callable[[Tensor, float], Tensor],
    noise: Tensor,
    num_steps: int,
) -> Tensor:
    """Integrates ``dx/dt = velocity_fn(x, t)`` from ``t = 1`` (``x = noise``) to ``t = 0`` with Euler steps.

    Args:
        velocity_fn: Callable ``(x_t, t) -> v_t`` with ``t`` a Python float; ``v_t`` has the shape of ``x_t``.
        noise: Initial state at ``t = 1``, e.g. ``(B, T, A)``.
        num_steps: Number of Euler steps (each calls ``velocity_fn`` once).

    Returns:
        The state at ``t = 0`` (same shape and dtype as ``noise``).
    """
    dt = -1.0 / num_steps
    x_t = noise
    for t in euler_times(num_steps):
        x_t = x_t + dt * velocity_fn(x_t, t)
    return x_t


def euler_time_tensor(num_steps: int, device: torch.device | str) -> Tensor:
    """:func:`euler_times` as a ``(num_steps,)`` float32 tensor on ``device`` (the same values as a 0-d tensor
    made from each Python float): indexing it inside a chunk copies nothing from the host."""
    return torch.tensor(euler_times(num_steps), dtype=torch.float32).to(device)


def euler_denoise(step: Callable[[object, Tensor, Tensor], Tensor], prefix: object, noise: Tensor,
                  times: Tensor) -> Tensor:
    """:func:`euler_integrate` against an encoded prefix, with the step times in a device tensor.

    Args:
        step: ``step(prefix, x_t, t)`` -> velocity, ``t`` a ``(B,)`` float32 tensor (a family's ``denoise_step``
            or a compiled form of it).
        prefix: What ``step`` reads (a family's encoded observation).
        noise: ``(B, C, A)`` float32 at ``t = 1``.
        times: From :func:`euler_time_tensor`.
    """
    dt = -1.0 / times.shape[0]
    x = noise
    for index in range(times.shape[0]):
        x = x + dt * step(prefix, x, times[index].expand(noise.shape[0]))
    return x
