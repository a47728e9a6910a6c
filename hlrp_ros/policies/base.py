"""The interface every action-expert family implements, and the observation it consumes.

Families: the SmolVLA-style HLRP expert (``hlrp``), a PI0-style joint expert and the diffusion policies
(``hlrp_diffusion``, LeRobot's ``diffusion``), which condition on ``n_obs_steps`` observations
(:attr:`Observation.history`). Callers (policy node, tools, demo) only use this interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


def fitted_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """Size of a ``height x width`` image resized, aspect kept, to fit ``target_height x target_width``.

    The rest of the target is padding. Raises ``ValueError`` when the image is so elongated that a
    side would shrink to 0 pixels (e.g. 1x2000 into 512x512): such an image carries nothing usable.
    """
    if min(height, width, target_height, target_width) < 1:
        raise ValueError(f"empty image size {width}x{height} or target {target_width}x{target_height}")
    ratio = max(width / target_width, height / target_height)
    fitted = int(height / ratio), int(width / ratio)
    if min(fitted) < 1:
        raise ValueError(f"a {width}x{height} image (aspect {max(width / height, height / width):.0f}:1) shrinks to "
                         f"{fitted[1]}x{fitted[0]} when fitted into {target_width}x{target_height}: too elongated "
                         f"to use (crop it, or send a less extreme aspect)")
    return fitted


@dataclass
class Observation:
    """One time step of robot input.

    Attributes:
        images: Camera name -> RGB ``uint8`` image ``(H, W, 3)`` (any size ``fitted_size`` accepts; resized
            with padding).
        state: Proprioceptive state ``(state_dim,)``, un-normalised (robot units).
        instruction: Natural-language task instruction.
        abstract_tokens: Optional abstract action token ids (used when the policy enables that branch).
        history: Earlier observations, oldest first, one ``config.observation_period`` apart, the last one a
            period before this one. A policy with ``config.n_obs_steps = n > 1`` needs exactly ``n - 1`` of
            them (otherwise it raises :class:`ObservationHistoryError`); the others ignore the field. Only
            their images and state are used: the instruction and abstract tokens are this observation's.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    abstract_tokens: list[int] | None = None
    history: list[Observation] | None = None


class ObservationHistoryError(ValueError):
    """The observation history a policy needs is missing, short or has a gap.

    Attributes:
        reason: Short machine-readable key (``history_short``, ``history_gap``, ...) for rejection counters.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def history_length(config: Any) -> int:
    """Observations a policy conditions on (``config.n_obs_steps``; 1 for families without history)."""
    return int(getattr(config, "n_obs_steps", 1) or 1)


class ActionExpert(abc.ABC):
    """A chunked action generator conditioned on images, state and language.

    ``predict_action_chunk`` is ``sample_chunk(encode_prefix(obs))``; the split calls let a caller encode
    the observation once and sample several chunks (or time the two parts separately).
    """

    #: The family's configuration (exposes camera_names, image_size, state_dim, action_dim, chunk_size,
    #: n_action_steps, num_steps, tokenizer_max_length, joint_names).
    config: Any

    #: Whether ``sample_chunk`` accepts ``guide=`` (a :class:`~hlrp_ros.policies.common.realtime_chunking.ChunkGuide`):
    #: real-time chunking, for the flow-matching families. The others sample unguided only.
    supports_guidance: bool = False

    #: Whether ``sample_chunk`` also takes a ``guide`` with ``method="conditioned"``: a model trained to
    #: continue a given chunk prefix (real-time chunking without guidance).
    supports_conditioning: bool = False

    @abc.abstractmethod
    def encode_prefix(self, observation: Observation) -> Any:
        """Encodes the observation once per chunk (e.g. the VLM key/value cache)."""

    @abc.abstractmethod
    def sample_chunk(
        self,
        prefix: Any,
        num_steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Samples an un-normalised float32 CPU chunk ``(chunk_size, action_dim)`` from an encoded prefix.

        Families with :attr:`supports_guidance` also take ``guide=`` (None: unguided, the same actions as
        without the argument).

        Args:
            prefix: Output of :meth:`encode_prefix`.
            num_steps: Denoising steps (None -> ``config.num_steps``).
            noise: Explicit initial noise (makes the result deterministic).
            generator: Generator for the noise (makes the result deterministic).
        """

    @abc.abstractmethod
    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Scalar training loss of a collated batch (the family's processor builds batches)."""

    def set_execution(self, compile: bool | str = False, cuda_graphs: bool = False) -> None:
        """Fixed-shape execution: the chunk compiled (``torch.compile``) and/or replayed as CUDA graphs.

        Families that have such a path override this; the default runs eager only and refuses the request.
        """
        if compile or cuda_graphs:
            raise NotImplementedError(f"{type(self).__name__} has no fixed-shape (compiled / CUDA-graph) path: run it "
                                      f"eager (compile and cuda_graphs false)")

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forgets per-episode state (caches, queues). Default: nothing to forget."""

    def predict_action_chunk(
        self,
        observation: Observation,
        num_steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Encodes ``observation`` and samples one chunk ``(chunk_size, action_dim)`` (float32, CPU)."""
        return self.sample_chunk(self.encode_prefix(observation), num_steps=num_steps, noise=noise, generator=generator)
