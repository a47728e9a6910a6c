"""The policy side of real-time chunking: what the controller will be executing when a new chunk lands.

The policy node remembers the chunk it published last (:class:`PublishedChunk`: actions, the due time of
the first one, ``dt``). When it gathers the inputs of the next chunk, whose action ``i`` will be due at
``first_action + i * dt``, :func:`due_actions` puts the previous chunk on that grid (linear interpolation
between its rows, as the controller's ``linear`` interpolation executes them; rows the previous chunk does
not reach are left out), and :class:`DelayEstimator` says how long the new chunk will take to arrive: a high
quantile of the last gather-to-publish latencies. :func:`delay_steps` turns that into the paper's ``d``: the
controller switches at the index due on arrival, so the first ``d`` actions of the new chunk are never
executed and are frozen to the previous chunk's.

A previous chunk is continued only while the robot is where it says: when the measured joint positions at the
new observation are farther from the previous chunk's action due at that instant than
``RtcConfig.max_state_divergence`` (a reset, a teleport, a collision, an operator moving the arm), the new
chunk is sampled fresh from the observation instead of bending it back onto a plan the robot has left.

Numbers only (no ROS, no torch): :class:`SeamPlanner` is unit-tested on its own and the node calls it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

RTC_MODES = ("off", "guided", "conditioned")


@dataclass(frozen=True)
class PublishedChunk:
    """A chunk as published: ``actions[i]`` is due at ``first_action_ns + i * dt``.

    Attributes:
        actions: ``(n, action_dim)`` robot units.
        first_action_ns: Due time of ``actions[0]`` (node clock, ns).
        dt: Seconds between consecutive actions.
        instruction: The instruction it was computed for.
    """

    actions: np.ndarray
    first_action_ns: int
    dt: float
    instruction: str = ""


def due_actions(previous: PublishedChunk, first_action_ns: int, dt: float, horizon: int) -> np.ndarray | None:
    """``previous`` resampled at ``first_action_ns + i * dt`` for ``i < horizon``, rows it covers only.

    Returns ``(m, action_dim)`` with ``1 <= m <= horizon``, or None when the previous chunk has no action
    due on the new grid (it ran out before the new chunk's first action, or starts after it).
    """
    pos = (first_action_ns - previous.first_action_ns) * 1e-9 / previous.dt + np.arange(horizon) * dt / previous.dt
    last = previous.actions.shape[0] - 1
    keep = (pos >= -1e-6) & (pos <= last + 1e-6)
    if not keep[0]:
        return None
    pos = np.clip(pos[: int(np.argmin(keep)) if not keep.all() else horizon], 0.0, last)
    lower = np.floor(pos).astype(int)
    upper = np.minimum(lower + 1, last)
    w = (pos - lower)[:, None]
    return (1.0 - w) * previous.actions[lower] + w * previous.actions[upper]


def delay_steps(delay_s: float, first_action_delay: float, dt: float, horizon: int) -> int:
    """The paper's ``d``: actions of the new chunk already due when it arrives ``delay_s`` after the gather.

    Action ``i`` is due ``first_action_delay + i * dt`` after the gather; the controller starts at the index
    due on arrival, so indices below ``ceil((delay_s - first_action_delay) / dt)`` are never executed.
    Clamped to ``[0, horizon]``.
    """
    steps = math.ceil((delay_s - first_action_delay) / dt - 1e-9)
    return int(min(max(steps, 0), horizon))


class DelayEstimator:
    """Online inference delay: a high quantile of the last ``window`` gather-to-publish latencies.

    The first ``warmup`` samples (allocator growth, lazy initialisation) are not used; the window slides,
    so the estimate comes back down when latency falls.
    """

    def __init__(self, window: int = 20, quantile: float = 0.95, warmup: int = 2) -> None:
        if window < 1 or warmup < 0 or not 0.0 <= quantile <= 1.0:
            raise ValueError(f"need window >= 1, warmup >= 0, quantile in [0, 1]; got {window}, {warmup}, {quantile}")
        self.quantile = quantile
        self.warmup = warmup
        self.seen = 0
        self.samples: deque[float] = deque(maxlen=window)

    def add(self, latency_s: float) -> None:
        """Records one measured latency (seconds); non-finite or negative ones are ignored."""
        if not (math.isfinite(latency_s) and latency_s >= 0.0):
            return
        self.seen += 1
        if self.seen > self.warmup:
            self.samples.append(latency_s)

    def estimate(self) -> float | None:
        """The quantile of the window (the sample at or above it), None before the first usable sample."""
        if not self.samples:
            return None
        return float(np.quantile(np.fromiter(self.samples, float), self.quantile, method="higher"))


@dataclass(frozen=True)
class RtcConfig:
    """Real-time chunking in the policy node (the ``rtc_*`` parameters).

    Attributes:
        mode: ``off`` (every chunk from fresh noise), ``guided`` (inpainted onto the previous one) or
            ``conditioned`` (the previous one's due actions handed to a model trained to continue them).
        beta: Guidance weight clip (the paper's beta).
        execution_horizon: ``s`` in action steps; 0: ``round(inference_period / action_period)``, the steps
            executed from a chunk before the next one replaces it.
        delay_window: Latencies in the delay estimate's sliding window.
        delay_quantile: Quantile of the window used as the delay.
        delay_warmup: First latencies left out of the estimate.
        fixed_delay_steps: ``d`` in action steps instead of the estimate (-1: estimate online).
        max_state_divergence: Largest distance (max over joints, action units) between the measured state and
            the previous chunk's action due at the observation for that chunk to be continued; 0: no check.
    """

    mode: str = "off"
    beta: float = 5.0
    execution_horizon: int = 0
    delay_window: int = 20
    delay_quantile: float = 0.95
    delay_warmup: int = 2
    fixed_delay_steps: int = -1
    max_state_divergence: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in RTC_MODES:
            raise ValueError(f"mode must be one of {RTC_MODES}, got {self.mode!r}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.execution_horizon < 0 or self.fixed_delay_steps < -1:
            raise ValueError("execution_horizon must be >= 0 and fixed_delay_steps >= -1")
        if not (math.isfinite(self.max_state_divergence) and self.max_state_divergence >= 0):
            raise ValueError(f"max_state_divergence must be >= 0, got {self.max_state_divergence}")


@dataclass(frozen=True)
class SeamPlan:
    """What one new chunk is guided with: ``due`` (None: sample unguided, ``reason`` says why), ``d``, ``s``."""

    due: np.ndarray | None
    delay: int
    execution_horizon: int
    reason: str


class SeamPlanner:
    """Remembers the last published chunk and plans the guide of the next (see the module docstring).

    Args:
        config: The ``rtc_*`` settings.
        chunk_size: The model's ``H``.
        default_horizon: ``s`` when ``config.execution_horizon`` is 0.
    """

    def __init__(self, config: RtcConfig, chunk_size: int, default_horizon: int) -> None:
        self.config = config
        self.chunk_size = chunk_size
        self.default_horizon = min(max(default_horizon, 0), chunk_size)
        self.delays = DelayEstimator(config.delay_window, config.delay_quantile, config.delay_warmup)
        self.previous: PublishedChunk | None = None
        self.counts = {"guided": 0, "no_previous": 0, "stale_previous": 0, "instruction_changed": 0,
                       "state_diverged": 0, "off": 0}
        self.last_delay = -1
        self.last_divergence = -1.0  # of the last checked observation (action units); -1: none checked yet

    @property
    def execution_horizon(self) -> int:
        """``s`` in action steps."""
        return min(self.config.execution_horizon or self.default_horizon, self.chunk_size)

    def forget(self) -> None:
        """Drops the previous chunk (the next one is sampled unguided)."""
        self.previous = None

    def plan(self, mode: str, first_action_ns: int, dt: float, first_action_delay: float, instruction: str,
             state: np.ndarray | None = None, state_ns: int | None = None) -> SeamPlan:
        """The guide of the chunk whose first action is due at ``first_action_ns``.

        ``state`` (the measured positions of the action's joints, observed at ``state_ns``) enables the
        divergence check; None skips it (a state that is not the action's joints cannot be compared).
        """
        s = self.execution_horizon
        reason = self._unguided_reason(mode, instruction)
        if reason is None and self._diverged(state, state_ns):
            reason = "state_diverged"
        due = None
        if reason is None:
            due = due_actions(self.previous, first_action_ns, dt, self.chunk_size)
            reason = "stale_previous" if due is None else "guided"
        self.counts[reason] += 1
        if due is None:
            return SeamPlan(None, 0, s, reason)
        d = self.config.fixed_delay_steps
        if d < 0:
            estimate = self.delays.estimate()
            d = delay_steps(estimate if estimate is not None else 0.0, first_action_delay, dt, self.chunk_size)
        self.last_delay = min(d, self.chunk_size)
        return SeamPlan(due, self.last_delay, s, reason)

    def _unguided_reason(self, mode: str, instruction: str) -> str | None:
        if mode == "off":
            return "off"
        if self.previous is None:
            return "no_previous"
        if self.previous.instruction != instruction:
            return "instruction_changed"
        return None

    def _diverged(self, state: np.ndarray | None, state_ns: int | None) -> bool:
        """Whether the robot has left the previous chunk: measured state far from its action due at ``state_ns``."""
        limit = self.config.max_state_divergence
        if limit <= 0 or state is None or state_ns is None:
            return False
        expected = due_actions(self.previous, state_ns, self.previous.dt, 1)
        if expected is None:  # observed before that chunk started (or after it ran out): nothing to compare
            return False
        self.last_divergence = float(np.max(np.abs(np.asarray(state, dtype=float) - expected[0])))
        return self.last_divergence > limit

    def published(self, chunk: PublishedChunk, latency_s: float) -> None:
        """Records a published chunk and its gather-to-publish latency (seconds)."""
        self.previous = chunk
        self.delays.add(latency_s)
