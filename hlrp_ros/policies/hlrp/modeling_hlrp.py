"""HLRP policy: SmolVLA-style flow-matching action expert on a SmolVLM prefix encoder.

``VLAFlowMatching`` holds the networks and the math (same module names and maths as LeRobot's SmolVLA, so
its checkpoints map one to one under ``model.``). ``HLRPPolicy`` wraps it with normalisation statistics,
the processor (tokenizer, images), device/dtype handling and safetensors checkpoints, and implements the
:class:`~hlrp_ros.policies.base.ActionExpert` interface.

Prefix layout (attention blocks separated by ``|``; a block sees itself and every earlier block)::

    [image special tokens?, image tokens]* , language tokens | abstract tokens? | state | a_0 | a_1 | ... | a_{C-1}

Images and language form one bidirectional block, the optional abstract action tokens their own block,
the state token its own block, and the action tokens are strictly causal among themselves.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, SmolVLMConfig
from transformers.initialization import no_init_weights

from hlrp_ros.policies.base import ActionExpert, Observation
from hlrp_ros.policies.common import flow_matching, realtime_chunking
from hlrp_ros.policies.common.fixed_shapes import FixedShapeExecution, pad_to_length
from hlrp_ros.policies.common.realtime_chunking import ChunkGuide
from hlrp_ros.policies.common.weights import tensor_problems
from hlrp_ros.policies.hlrp.configuration_hlrp import HLRPConfig
from hlrp_ros.policies.hlrp.processor_hlrp import HLRPProcessor, build_tiny_tokenizer, load_tokenizer
from hlrp_ros.policies.hlrp.smolvlm_with_expert import (
    ExpertKVCache,
    SmolVLMWithExpertModel,
    make_att_2d_masks,
)

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted, truncated or does not match the model."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """"float32"/"bfloat16" (or the torch dtypes) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32 or bfloat16")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def create_sinusoidal_pos_embedding(
    time: Tensor, dimension: int, min_period: float, max_period: float
) -> Tensor:
    """Sine-cosine embedding of scalar times ``(B,)`` -> ``(B, dimension)`` (float64 where supported)."""
    if dimension % 2 != 0:
        raise ValueError(f"dimension ({dimension}) must be divisible by 2")
    if time.ndim != 1:
        raise ValueError("The time tensor is expected to be of shape `(batch_size, )`.")
    dtype = torch.float32 if time.device.type == "mps" else torch.float64
    fraction = torch.linspace(0.0, 1.0, dimension // 2, dtype=dtype, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    scaling_factor = 1.0 / period * 2 * math.pi
    sin_input = scaling_factor[None, :] * time[:, None]
    return torch.cat([torch.sin(sin_input), torch.cos(sin_input)], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: int) -> Tensor:
    """Fixed 2D sine-cosine position embeddings ``(grid_size**2, embed_dim)``, row-major (row * size + col).

    Half of the channels encode the row, half the column (MAE convention); ``embed_dim % 4 == 0``.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"2D sin-cos embeddings need embed_dim % 4 == 0, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0))
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).to(torch.float32)


@torch.compiler.assume_constant_result  # traced once, as a constant: no tensor reaches the graph
@functools.lru_cache(maxsize=64)  # eager: computed once, not on every chunk
def scale_in_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``, as a Python float: the same product as with a 0-d tensor of that dtype
    (SmolVLA scales image tokens that way), without copying a tensor to the device."""
    return torch.tensor(value, dtype=dtype).item()


def pad_vector(vector: Tensor, new_dim: int) -> Tensor:
    """Zero-pads the last dimension to ``new_dim``."""
    if vector.shape[-1] == new_dim:
        return vector
    return F.pad(vector, (0, new_dim - vector.shape[-1]))


def pad_tensor(tensor: Tensor, max_len: int, pad_value: float = 0) -> Tensor:
    """Pads ``(B, L, ...)`` along ``L`` to ``max_len``."""
    b, d = tensor.shape[:2]
    out = torch.full((b, max_len, *tensor.shape[2:]), pad_value, dtype=tensor.dtype, device=tensor.device)
    out[:, :d] = tensor
    return out


@dataclass
class PrefixCache:
    """An encoded observation batch: what :meth:`VLAFlowMatching.denoise_step` needs, computed once per chunk.

    Attributes:
        expert_cache: Key/value buffers, re-projected cross K/V, masks and RoPE tables.
        prefix_pad_masks: ``(B, P)`` bool, True for real prefix tokens.
        batch_size: ``B``.
        batched: False when built from a single observation (sample_chunk then returns ``(C, A)``).
        truncated: Whether an instruction was truncated (from the processor).
        fixed_generation: Set by the fixed-shape sampler (``fixed_shapes.FixedShapeSampler``): which of its
            encodes made this prefix; None for the eager path.
    """

    expert_cache: ExpertKVCache
    prefix_pad_masks: Tensor
    batch_size: int
    batched: bool = True
    truncated: bool = False
    fixed_generation: int | None = None


def prefix_mask(batch_size: int, chunk_size: int, delay: int | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """``(B, C)`` bool, True for the first ``delay`` actions of each chunk (``delay``: int or ``(B,)``)."""
    delay = torch.as_tensor(delay, device=device).reshape(-1, 1)
    return (torch.arange(chunk_size, device=device)[None] < delay).expand(batch_size, -1)


def _release_graph(cache: object) -> None:
    """Detaches, in place, the cache tensors a guided step wrote autograd history into.

    The self-attention layers write each step's action keys/values into the cache's buffers in place; in a
    guided step those values carry the step's graph, which the next step must not backpropagate into.
    """
    for value in getattr(cache, "__dict__", {}).values():
        tensors = value.values() if isinstance(value, dict) else [value]
        for tensor in tensors:
            if isinstance(tensor, Tensor) and tensor.requires_grad:
                tensor.detach_()


class VLAFlowMatching(nn.Module):
    """The networks: SmolVLM + expert, state/action projections and the action-time MLP.

    Inputs are model-space tensors (normalised state/actions padded to ``max_state_dim``/``max_action_dim``).
    """

    def __init__(self, config: HLRPConfig) -> None:
        super().__init__()
        self.config = config
        self.vlm_with_expert = SmolVLMWithExpertModel(
            SmolVLMConfig.from_dict(config.vlm_config),
            num_vlm_layers=config.num_vlm_layers,
            num_expert_layers=config.num_expert_layers,
            self_attn_every_n_layers=config.self_attn_every_n_layers,
            expert_width_multiplier=config.expert_width_multiplier,
            attention_mode=config.attention_mode,
            freeze_vision_encoder=config.freeze_vision_encoder,
            train_expert_only=config.train_expert_only,
            rope_max_wavelength=config.rope_max_wavelength,
            legacy_vision_position_ids=config.legacy_vision_position_ids,
        )
        text_hidden = self.vlm_with_expert.config.text_config.hidden_size
        expert_hidden = self.vlm_with_expert.expert_hidden_size
        self.state_proj = nn.Linear(config.max_state_dim, text_hidden)
        self.action_in_proj = nn.Linear(config.max_action_dim, expert_hidden)
        self.action_out_proj = nn.Linear(expert_hidden, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(expert_hidden * 2, expert_hidden)
        self.action_time_mlp_out = nn.Linear(expert_hidden, expert_hidden)
        if config.abstract_tokens_enabled:
            self.abstract_token_embedding = nn.Embedding(config.abstract_vocab_size, text_hidden)
        self.register_buffer(
            "global_image_start_token",
            torch.tensor([config.fake_image_token_id, config.global_image_token_id], dtype=torch.long),
            persistent=False,
        )
        self.register_buffer(
            "image_end_token", torch.tensor([config.fake_image_token_id], dtype=torch.long), persistent=False
        )
        if config.vision_sincos_pos_embed:
            self._init_vision_sincos()
        for p in self.state_proj.parameters():
            p.requires_grad = config.train_state_proj

    def _init_vision_sincos(self) -> None:
        emb = self.vlm_with_expert.get_vlm_model().vision_model.embeddings
        with torch.no_grad():
            emb.position_embedding.weight.copy_(sincos_2d_pos_embed(emb.embed_dim, emb.num_patches_per_side))
        if self.config.freeze_vision_pos_embed:
            emb.position_embedding.weight.requires_grad = False

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the transformer layers."""
        return self.action_in_proj.weight.dtype

    # --- embeddings -----------------------------------------------------------------------------------
    def _embed_special(self, ids: Tensor, batch_size: int) -> Tensor:
        return self.vlm_with_expert.embed_language_tokens(ids)[None].expand(batch_size, -1, -1)

    def embed_prefix(
        self,
        images: list[Tensor],
        img_masks: list[Tensor],
        lang_tokens: Tensor,
        lang_masks: Tensor,
        state: Tensor,
        abstract_tokens: Tensor | None = None,
        abstract_masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Builds the prefix sequence.

        Args:
            images: Per camera ``(B, 3, H, W)`` in ``[-1, 1]``.
            img_masks: Per camera ``(B,)`` bool (False: camera missing, its tokens are padding).
            lang_tokens / lang_masks: ``(B, L)`` ids and bool mask.
            state: ``(B, max_state_dim)`` normalised, padded.
            abstract_tokens / abstract_masks: Optional ``(B, La)`` ids and bool mask (needs the branch enabled).

        Returns:
            ``(embs (B, P, hidden), pad_masks (B, P) bool, att_masks (B, P) bool block starts)``.
        """
        embs: list[Tensor] = []
        pad_masks: list[Tensor] = []
        att: list[Tensor] = []  # block starts, built on the device: no host-to-device copy in a captured chunk
        device = lang_tokens.device

        def starts(n_tokens: int, first: bool = False, rest: bool = False) -> Tensor:
            """Block-start flags of ``n_tokens`` tokens: ``first`` for the first, ``rest`` for the others."""
            return torch.cat([torch.full((min(n_tokens, 1),), first, dtype=torch.bool, device=device),
                              torch.full((max(n_tokens - 1, 0),), rest, dtype=torch.bool, device=device)])

        for img, img_mask in zip(images, img_masks, strict=True):
            bsize = img.shape[0]
            if self.config.add_image_special_tokens:
                start = self._embed_special(self.global_image_start_token, bsize)
                embs.append(start)
                pad_masks.append(torch.ones(start.shape[:2], dtype=torch.bool, device=start.device))
                att.append(starts(start.shape[1]))
            img_emb = self.vlm_with_expert.embed_image(img)
            img_emb = img_emb * scale_in_dtype(img_emb.shape[-1] ** 0.5, img_emb.dtype)
            num_img = img_emb.shape[1]
            embs.append(img_emb)
            pad_masks.append(img_mask[:, None].expand(bsize, num_img))
            att.append(starts(num_img))
            if self.config.add_image_special_tokens:
                end = self._embed_special(self.image_end_token, bsize)
                embs.append(end)
                pad_masks.append(torch.ones(end.shape[:2], dtype=torch.bool, device=end.device))
                att.append(starts(end.shape[1]))
        lang_emb = self.vlm_with_expert.embed_language_tokens(lang_tokens)
        lang_emb = lang_emb * math.sqrt(lang_emb.shape[-1])
        embs.append(lang_emb)
        pad_masks.append(lang_masks)
        att.append(starts(lang_emb.shape[1]))

        if abstract_tokens is not None and abstract_tokens.shape[1] > 0:
            if not self.config.abstract_tokens_enabled:
                raise ValueError("abstract tokens given but config.abstract_tokens_enabled is False")
            abs_emb = self.abstract_token_embedding(abstract_tokens)
            abs_emb = abs_emb * math.sqrt(abs_emb.shape[-1])
            embs.append(abs_emb.to(lang_emb.dtype))
            mask = abstract_masks if abstract_masks is not None else torch.ones_like(abstract_tokens, dtype=torch.bool)
            pad_masks.append(mask)
            att.append(starts(abstract_tokens.shape[1], first=True))  # own block: sees images+language, not state

        state_emb = self.state_proj(state.to(self.state_proj.weight.dtype))
        state_emb = state_emb[:, None, :] if state_emb.ndim == 2 else state_emb
        embs.append(state_emb.to(lang_emb.dtype))
        bsize, n_state = state_emb.shape[:2]
        pad_masks.append(torch.ones(bsize, n_state, dtype=torch.bool, device=state_emb.device))
        att.append(starts(n_state, first=True, rest=True))

        embs_t = torch.cat(embs, dim=1)
        pad_t = torch.cat(pad_masks, dim=1)
        att_t = torch.cat(att)[None, :]
        if pad_t.shape[1] < self.config.prefix_length:
            embs_t = pad_tensor(embs_t, self.config.prefix_length, pad_value=0)
            pad_t = pad_tensor(pad_t, self.config.prefix_length, pad_value=0)
            att_t = pad_tensor(att_t, self.config.prefix_length, pad_value=0)
        return embs_t, pad_t, att_t.expand(bsize, -1)

    def embed_suffix(self, noisy_actions: Tensor, timestep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Action-time tokens: ``MLP([action_in_proj(x_t), sincos(t)])`` with swish.

        Args:
            noisy_actions: ``(B, C, max_action_dim)``.
            timestep: ``(B,)`` float32, or ``(B, C)`` for a time per action (a chunk prefix given clean).

        Returns:
            ``(embs (B, C, expert_hidden), pad_masks (B, C), att_masks (B, C))`` (every action token starts a block).
        """
        action_emb = self.action_in_proj(noisy_actions.to(self.action_in_proj.weight.dtype))
        bsize, c_len = action_emb.shape[:2]
        time_emb = create_sinusoidal_pos_embedding(
            timestep.reshape(-1), self.vlm_with_expert.expert_hidden_size, self.config.min_period,
            self.config.max_period,
        ).type(dtype=action_emb.dtype)
        if timestep.ndim == 2:
            time_emb = time_emb.reshape(bsize, c_len, -1)
        else:
            time_emb = time_emb[:, None, :].expand_as(action_emb)
        lin = self.vlm_with_expert.linear  # prepacked at inference, the modules themselves in training
        x = lin(self.action_time_mlp_in, torch.cat([action_emb, time_emb], dim=2), act="silu")
        x = lin(self.action_time_mlp_out, x)
        pad = torch.ones(bsize, c_len, dtype=torch.bool, device=x.device)
        att = torch.ones(bsize, c_len, dtype=x.dtype, device=x.device)
        return x, pad, att

    def _velocity(self, suffix_out: Tensor) -> Tensor:
        """Expert output -> velocity ``(B, C, max_action_dim)`` (upcast to float32 first, as openpi)."""
        suffix_out = suffix_out[:, -self.config.chunk_size :].to(dtype=torch.float32)
        return self.action_out_proj(suffix_out.to(self.action_out_proj.weight.dtype)).to(torch.float32)

    # --- inference --------------------------------------------------------------------------------------
    def encode_prefix(self, *prefix_inputs: Tensor | list[Tensor] | None, fixed_shapes: bool = False) -> PrefixCache:
        """Embeds the prefix, runs it through the VLM layers once and builds the expert cache.

        Args:
            *prefix_inputs: The arguments of :meth:`embed_prefix`.
            fixed_shapes: Always build the cross-attention mask instead of asking the device whether the prefix
                has padding (a host synchronisation): the capturable form (same actions).
        """
        embs, pad_masks, att_masks = self.embed_prefix(*prefix_inputs)
        att_2d = make_att_2d_masks(pad_masks, att_masks)
        position_ids = torch.cumsum(pad_masks, dim=1) - 1
        kv = self.vlm_with_expert.forward_prefix(embs, att_2d, position_ids)
        cache = self.vlm_with_expert.build_expert_cache(kv, pad_masks, self.config.chunk_size, always_mask=fixed_shapes)
        return PrefixCache(expert_cache=cache, prefix_pad_masks=pad_masks, batch_size=embs.shape[0])

    def denoise_step(self, prefix: PrefixCache, x_t: Tensor, timestep: Tensor) -> Tensor:
        """One velocity evaluation ``v(x_t, t)`` ``(B, C, max_action_dim)`` against a cached prefix."""
        suffix_embs, _, _ = self.embed_suffix(x_t, timestep)
        return self._velocity(self.vlm_with_expert.forward_expert(suffix_embs, prefix.expert_cache))

    def _noise(self, bsize: int, device: torch.device, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        shape = (bsize, self.config.chunk_size, self.config.max_action_dim)
        if noise is None:
            return flow_matching.sample_noise(shape, device=device, generator=generator)
        noise = noise.to(device=device, dtype=torch.float32)
        if noise.ndim == 2:
            noise = noise[None].expand(bsize, -1, -1)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (or {shape[1:]}), got {tuple(noise.shape)}")
        return noise

    def sample_from_prefix(
        self,
        prefix: PrefixCache,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Euler-integrates from noise (t=1) to actions (t=0); returns normalised ``(B, C, max_action_dim)``."""
        device = prefix.prefix_pad_masks.device
        x = self._noise(prefix.batch_size, device, noise, generator)
        times = flow_matching.euler_time_tensor(num_steps or self.config.num_steps, device)
        return flow_matching.euler_denoise(self.denoise_step, prefix, x, times)

    def sample_guided_from_prefix(
        self,
        prefix: PrefixCache,
        target: Tensor,
        weights: Tensor,
        beta: float,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Real-time chunking: guided Euler integration towards ``target`` (see :mod:`realtime_chunking`).

        Args:
            prefix: The chunk's cache; a constant here (the gradient runs through the expert only).
            target / weights: ``(B or 1, C, max_action_dim)`` normalised guide actions and their soft mask.
            beta: Guidance weight clip.

        Returns:
            Normalised ``(B, C, max_action_dim)``.
        """
        device = prefix.prefix_pad_masks.device
        x = self._noise(prefix.batch_size, device, noise, generator)
        bsize = prefix.batch_size

        def velocity(x_t: Tensor, t: float) -> Tensor:
            _release_graph(prefix.expert_cache)
            return self.denoise_step(prefix, x_t, torch.tensor(t, dtype=torch.float32, device=device).expand(bsize))

        try:
            return realtime_chunking.guided_euler_integrate(
                velocity, x, num_steps or self.config.num_steps, target, weights, beta
            )
        finally:
            _release_graph(prefix.expert_cache)

    def sample_conditioned_from_prefix(
        self,
        prefix: PrefixCache,
        target: Tensor,
        delay: int,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Real-time chunking by conditioning: the first ``delay`` actions are ``target``'s, given clean.

        For models trained with ``rtc_max_delay`` > 0: those actions enter every step at time 0 (data), as
        in training, and only the rest of the chunk is integrated from noise. No gradient is needed.

        Args:
            prefix: The chunk's cache.
            target: ``(B or 1, C, max_action_dim)`` normalised actions; rows ``< delay`` are used.
            delay: Number of leading actions given.

        Returns:
            Normalised ``(B, C, max_action_dim)``, its first ``delay`` rows equal to ``target``'s.
        """
        device = prefix.prefix_pad_masks.device
        x = self._noise(prefix.batch_size, device, noise, generator)
        given = prefix_mask(prefix.batch_size, self.config.chunk_size, delay, device)
        target = target.to(device).expand_as(x)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            x_t = torch.where(given[..., None], target, x_t)
            timestep = torch.where(given, 0.0, t).to(torch.float32)
            v = self.denoise_step(prefix, x_t, timestep)
            return torch.where(given[..., None], 0.0, v)

        x = flow_matching.euler_integrate(velocity, torch.where(given[..., None], target, x),
                                          num_steps or self.config.num_steps)
        return torch.where(given[..., None], target, x)

    def sample_actions(
        self,
        images: list[Tensor],
        img_masks: list[Tensor],
        lang_tokens: Tensor,
        lang_masks: Tensor,
        state: Tensor,
        noise: Tensor | None = None,
        abstract_tokens: Tensor | None = None,
        abstract_masks: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Cached sampling (SmolVLA ``sample_actions``): normalised actions ``(B, C, max_action_dim)``."""
        prefix = self.encode_prefix(images, img_masks, lang_tokens, lang_masks, state, abstract_tokens, abstract_masks)
        return self.sample_from_prefix(prefix, noise=noise, num_steps=num_steps, generator=generator)

    def sample_actions_uncached(
        self,
        images: list[Tensor],
        img_masks: list[Tensor],
        lang_tokens: Tensor,
        lang_masks: Tensor,
        state: Tensor,
        noise: Tensor | None = None,
        abstract_tokens: Tensor | None = None,
        abstract_masks: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Reference sampler: every step recomputes the full prefix+suffix sequence through VLM and expert.

        The prefix embeddings (vision tower, token embeddings) are computed once; the transformer layers,
        K/V, masks and positions are recomputed at each step. Used by tests and the benchmark.
        """
        embs, pad, att = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state, abstract_tokens, abstract_masks)
        bsize = embs.shape[0]
        x = self._noise(bsize, embs.device, noise, generator)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            timestep = torch.tensor(t, dtype=torch.float32, device=embs.device).expand(bsize)
            suffix, s_pad, s_att = self.embed_suffix(x_t, timestep)
            return self._velocity(self._joint(embs, pad, att, suffix, s_pad, s_att))

        return flow_matching.euler_integrate(velocity, x, num_steps or self.config.num_steps)

    def _joint(self, embs: Tensor, pad: Tensor, att: Tensor, suffix: Tensor, s_pad: Tensor, s_att: Tensor) -> Tensor:
        pad_masks = torch.cat([pad, s_pad], dim=1)
        att_masks = torch.cat([att.to(s_att.dtype), s_att], dim=1)
        att_2d = make_att_2d_masks(pad_masks, att_masks)
        position_ids = torch.cumsum(pad_masks, dim=1) - 1
        return self.vlm_with_expert.forward_joint(embs, suffix, att_2d, position_ids)

    # --- training ---------------------------------------------------------------------------------------
    def forward(
        self,
        images: list[Tensor],
        img_masks: list[Tensor],
        lang_tokens: Tensor,
        lang_masks: Tensor,
        state: Tensor,
        actions: Tensor,
        noise: Tensor | None = None,
        time: Tensor | None = None,
        abstract_tokens: Tensor | None = None,
        abstract_masks: Tensor | None = None,
        generator: torch.Generator | None = None,
        given: Tensor | None = None,
    ) -> Tensor:
        """Flow-matching losses ``(B, C, max_action_dim)``: ``(v(x_t, t) - (noise - actions))**2``.

        ``x_t = t * noise + (1 - t) * actions`` with ``t ~ Beta(1.5, 1) * 0.999 + 0.001`` unless given.
        ``given``: optional ``(B, C)`` bool, actions handed to the model clean (time 0), as a chunk prefix
        is at inference with real-time chunking by conditioning; the caller leaves them out of the loss.
        """
        if noise is None:
            noise = flow_matching.sample_noise(tuple(actions.shape), device=actions.device, generator=generator)
        if time is None:
            time = flow_matching.sample_time(actions.shape[0], device=actions.device, generator=generator)
        x_t, u_t = flow_matching.interpolate(actions, noise, time)
        if given is not None:
            x_t = torch.where(given[..., None], actions, x_t)
            time = torch.where(given, 0.0, time[:, None]).to(torch.float32)
        embs, pad, att = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state, abstract_tokens, abstract_masks)
        suffix, s_pad, s_att = self.embed_suffix(x_t, time)
        v_t = self._velocity(self._joint(embs, pad, att, suffix, s_pad, s_att))
        return F.mse_loss(u_t, v_t, reduction="none")


class Normalizer(nn.Module):
    """Per-dimension normalisation with its statistics stored as (persistent, float32) buffers.

    Modes: "identity"; "mean_std": ``(x - mean) / (std + eps)``, inverse ``x * std + mean``;
    "min_max": ``2 (x - min) / (max - min) - 1`` (denominator ``eps`` where max == min), inverse accordingly.
    Same formulas as LeRobot's normalizer processor.
    """

    def __init__(self, dim: int, mode: str, eps: float = 1e-8) -> None:
        super().__init__()
        self.mode = mode
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("min", -torch.ones(dim))
        self.register_buffer("max", torch.ones(dim))

    def set_stats(self, stats: dict[str, np.ndarray | Tensor | list[float]]) -> None:
        """Sets any of ``mean``, ``std``, ``min``, ``max`` (each ``(dim,)``); unknown keys raise."""
        for key, value in stats.items():
            if key not in ("mean", "std", "min", "max"):
                raise ValueError(f"unknown statistic {key!r} (expected mean, std, min, max)")
            buf = getattr(self, key)
            t = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(-1)
            if t.shape != buf.shape:
                raise ValueError(f"statistic {key!r} has shape {tuple(t.shape)}, expected {tuple(buf.shape)}")
            buf.copy_(t)

    def _min_max_denom(self) -> Tensor:
        denom = self.max - self.min
        return torch.where(denom == 0, torch.full_like(denom, self.eps), denom)

    def forward(self, x: Tensor) -> Tensor:
        """Normalises ``(..., dim)`` (computed in float32)."""
        x = x.to(torch.float32)
        if self.mode == "mean_std":
            return (x - self.mean) / (self.std + self.eps)
        if self.mode == "min_max":
            return 2 * (x - self.min) / self._min_max_denom() - 1
        return x

    def inverse(self, x: Tensor) -> Tensor:
        """Un-normalises ``(..., dim)`` (computed in float32)."""
        x = x.to(torch.float32)
        if self.mode == "mean_std":
            return x * self.std + self.mean
        if self.mode == "min_max":
            return (x + 1) / 2 * self._min_max_denom() + self.min
        return x


class HLRPPolicy(FixedShapeExecution, nn.Module, ActionExpert):
    """The HLRP action expert: model, normalisation, processor and checkpoints.

    Args:
        config: Sizes and knobs.
        tokenizer: Tokenizer; None -> :func:`build_tiny_tokenizer` sized to the text vocabulary.
        init_weights: False skips random initialisation (parameters hold arbitrary values until a checkpoint
            is loaded; much faster for large models). Buffers are always initialised.
    """

    #: Real-time chunking: ``sample_chunk`` takes a ``guide``.
    supports_guidance = True

    def __init__(
        self, config: HLRPConfig, tokenizer: PreTrainedTokenizerBase | None = None, init_weights: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        with contextlib.nullcontext() if init_weights else no_init_weights():
            self.model = VLAFlowMatching(config)
        self.normalize_state = Normalizer(config.state_dim, config.state_norm_mode, config.norm_eps)
        self.normalize_action = Normalizer(config.action_dim, config.action_norm_mode, config.norm_eps)
        if tokenizer is None:
            vocab = int(config.vlm_config["text_config"]["vocab_size"])
            tokenizer = build_tiny_tokenizer(vocab_size=vocab)
        self.processor = HLRPProcessor(config, tokenizer)
        self.eval()

    # --- device and dtype -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.model.action_in_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the transformer layers."""
        return self.model.dtype

    def to_device_dtype(self, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32") -> HLRPPolicy:
        """Moves to ``device`` and casts the networks to ``dtype``.

        Kept in float32 whatever ``dtype``: normalisation buffers and ``action_out_proj`` (the expert output
        is upcast before it, as in SmolVLA/openpi); RMSNorm/LayerNorm statistics, RoPE and the time embedding
        are computed in float32 (or float64) internally.
        """
        torch_dtype = resolve_dtype(dtype)
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        self.to(device=device)
        self.model.to(dtype=torch_dtype)
        self.model.action_out_proj.to(dtype=torch.float32)
        self.model.vlm_with_expert.linear.clear()
        self._renew_execution()
        return self

    def fixed_shape_inputs(self, inputs: list) -> list:
        """Prefix inputs with the prompt padded to ``tokenizer_max_length`` and, when the branch is enabled, the
        abstract tokens to ``abstract_max_length`` (absent ones become masked padding: the same actions)."""
        cfg = self.config
        images, img_masks, lang, lang_masks, state, abstract, abstract_masks = inputs
        lang, lang_masks = (pad_to_length(t, cfg.tokenizer_max_length) for t in (lang, lang_masks))
        if cfg.abstract_tokens_enabled:
            if abstract is None:
                abstract = torch.zeros(lang.shape[0], 0, dtype=torch.long, device=lang.device)
                abstract_masks = abstract.bool()
            abstract, abstract_masks = (pad_to_length(t, cfg.abstract_max_length) for t in (abstract, abstract_masks))
        return [images, img_masks, lang, lang_masks, state, abstract, abstract_masks]

    # --- prefix / sampling --------------------------------------------------------------------------------
    def _prefix_inputs(self, observations: list[Observation]) -> tuple[list, bool]:
        device = self.device
        batch = self.processor.collate(observations, image_device=device)
        images = [batch["images"][:, i].to(device) for i in range(batch["images"].shape[1])]
        img_masks = [batch["image_masks"][:, i].to(device) for i in range(batch["image_masks"].shape[1])]
        state = pad_vector(self.normalize_state(batch["state"].to(device)), self.config.max_state_dim)
        abstract = batch.get("abstract_tokens")
        inputs = [
            images, img_masks, batch["lang_tokens"].to(device), batch["lang_masks"].to(device), state,
            None if abstract is None else abstract.to(device),
            None if abstract is None else batch["abstract_masks"].to(device),
        ]
        return inputs, bool(batch["lang_truncated"].any())

    @torch.no_grad()
    def encode_prefix(self, observation: Observation | list[Observation]) -> PrefixCache:
        """Encodes one observation (or a list) into a :class:`PrefixCache` (VLM layers run once)."""
        batched = isinstance(observation, list | tuple)
        observations = list(observation) if batched else [observation]
        inputs, truncated = self._prefix_inputs(observations)
        prefix = self._encode_inputs(inputs)
        prefix.batched = batched
        prefix.truncated = truncated
        return prefix

    @torch.no_grad()
    def sample_chunk(
        self,
        prefix: PrefixCache,
        num_steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        guide: ChunkGuide | None = None,
    ) -> Tensor:
        """Samples un-normalised float32 CPU actions: ``(C, action_dim)``, or ``(B, C, action_dim)`` when batched.

        Args:
            prefix: From :meth:`encode_prefix`.
            num_steps: Euler steps (None -> config.num_steps).
            noise: ``(C, max_action_dim)`` or ``(B, C, max_action_dim)`` initial noise.
            generator: Generator for the noise.
            guide: Real-time chunking guide (robot units); None samples unguided.
        """
        self._check_prefix(prefix)
        if guide is None:
            actions = self._sample_unguided(prefix, noise, generator, num_steps)
        else:
            guide.check(self.config.chunk_size, self.config.action_dim, prefix.batch_size, self.supports_conditioning)
            target, weights = realtime_chunking.guide_tensors(
                guide, self.config.chunk_size, self.config.max_action_dim, self.normalize_action, self.device
            )
            if guide.method == "conditioned":
                actions = self.model.sample_conditioned_from_prefix(
                    prefix, target, self._conditioned_delay(guide), noise=noise, num_steps=num_steps,
                    generator=generator,
                )
            else:
                actions = self.model.sample_guided_from_prefix(
                    prefix, target, weights, guide.beta, noise=noise, num_steps=num_steps, generator=generator
                )
        actions = self.normalize_action.inverse(actions[..., : self.config.action_dim]).cpu()
        return actions if prefix.batched else actions[0]

    @property
    def supports_conditioning(self) -> bool:
        """Whether the model was trained to continue a given chunk prefix (``rtc_max_delay`` > 0)."""
        return self.config.rtc_max_delay > 0

    def _conditioned_delay(self, guide: ChunkGuide) -> int:
        """Leading actions given to the model: ``d``, at most the rows the guide has and ``rtc_max_delay``.

        Beyond the trained prefix length the rest is sampled free, continuing the given part: the seam is exact
        only while the delay stays within ``rtc_max_delay`` (train with the delays the robot will see).
        """
        return min(guide.delay, guide.actions.shape[-2], self.config.rtc_max_delay)

    def reset(self) -> None:
        """Nothing is kept between chunks except the tokenizer cache, which stays valid."""

    # --- training -----------------------------------------------------------------------------------------
    def compute_loss(
        self,
        batch: dict[str, Tensor],
        noise: Tensor | None = None,
        time: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean flow-matching loss over real action dims (and non-padded steps when ``action_is_pad`` is given).

        Args:
            batch: From ``processor.collate(observations, actions)`` (raw units; normalised here).
            noise: Optional ``(B, C, max_action_dim)`` noise.
            time: Optional ``(B,)`` times.
            generator: Generator for noise and times.
        """
        device = self.device
        images = [batch["images"][:, i].to(device) for i in range(batch["images"].shape[1])]
        img_masks = [batch["image_masks"][:, i].to(device) for i in range(batch["image_masks"].shape[1])]
        state = pad_vector(self.normalize_state(batch["state"].to(device)), self.config.max_state_dim)
        actions = pad_vector(self.normalize_action(batch["actions"].to(device)), self.config.max_action_dim)
        abstract = batch.get("abstract_tokens")
        given = self._draw_given_prefix(actions.shape[0], generator)
        if given is not None and self.config.rtc_prefix_noise > 0:
            actions = actions + self._prefix_bend(given, generator)
        losses = self.model(
            images, img_masks, batch["lang_tokens"].to(device), batch["lang_masks"].to(device), state, actions,
            noise=noise, time=time,
            abstract_tokens=None if abstract is None else abstract.to(device),
            abstract_masks=None if abstract is None else batch["abstract_masks"].to(device),
            generator=generator, given=given,
        )[..., : self.config.action_dim]
        keep = None if "action_is_pad" not in batch else ~batch["action_is_pad"].to(device)
        if given is not None:
            keep = ~given if keep is None else keep & ~given
        if keep is not None:
            keep = keep[..., None].to(losses.dtype)
            return (losses * keep).sum() / (keep.sum() * losses.shape[-1]).clamp_min(1)
        return losses.mean()

    def _prefix_bend(self, given: Tensor, generator: torch.Generator | None) -> Tensor:
        """``(B, C, max_action_dim)``: a random offset ``delta ~ N(0, rtc_prefix_noise^2)`` per sample and
        action dim, times ``(d - 1 - i) / (d - 1)`` on given action ``i < d`` and 0 elsewhere (see the config)."""
        b, c = given.shape
        gen_device = generator.device if generator is not None else "cpu"
        delta = torch.randn(b, 1, self.config.max_action_dim, generator=generator, device=gen_device).to(self.device)
        d = given.sum(dim=1, keepdim=True).to(torch.float32)
        i = torch.arange(c, device=self.device, dtype=torch.float32)[None]
        weight = torch.where(given, (d - 1 - i) / (d - 1).clamp_min(1), 0.0)
        return self.config.rtc_prefix_noise * weight[..., None] * delta

    def _draw_given_prefix(self, batch_size: int, generator: torch.Generator | None) -> Tensor | None:
        """Training-time real-time chunking: ``d ~ U{0..rtc_max_delay}`` leading actions per sample given clean.

        ``d = 0`` is drawn too, so the model still samples a chunk with nothing to continue (start-up).
        """
        if self.config.rtc_max_delay <= 0:
            return None
        gen_device = generator.device if generator is not None else "cpu"
        delay = torch.randint(0, self.config.rtc_max_delay + 1, (batch_size,), generator=generator, device=gen_device)
        return prefix_mask(batch_size, self.config.chunk_size, delay.to(self.device), self.device)

    # --- statistics -----------------------------------------------------------------------------------------
    def set_normalization_stats(
        self, state: dict[str, np.ndarray] | None = None, action: dict[str, np.ndarray] | None = None
    ) -> None:
        """Stores normalisation statistics (``mean``/``std`` and/or ``min``/``max`` per dim) in the model."""
        if state:
            self.normalize_state.set_stats(state)
        if action:
            self.normalize_action.set_stats(action)

    # --- checkpoints ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``config.json``, ``model.safetensors`` (weights + statistics) and ``tokenizer/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "type": "hlrp"})
        self.processor.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        logger.info("saved HLRP policy (%d tensors) to %s", len(tensors), directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        tokenizer_dir: str | Path | None = None,
    ) -> HLRPPolicy:
        """Loads a checkpoint written by :meth:`save_pretrained` (never unpickles anything).

        Raises:
            FileNotFoundError: A file of the checkpoint is missing.
            CheckpointError: Weights corrupted/truncated, or a tensor missing, unexpected or of the wrong shape
                (the message names it).
        """
        directory = Path(directory)
        config = HLRPConfig.load(directory)
        tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else directory / TOKENIZER_DIR
        if not tok_dir.is_dir():
            raise FileNotFoundError(f"no tokenizer directory at {tok_dir}")
        policy = cls(config, tokenizer=load_tokenizer(tok_dir), init_weights=False)
        policy.load_weights(directory / WEIGHTS_NAME)
        policy.to_device_dtype(device, dtype)
        return policy.eval()

    def load_weights(self, path: str | Path) -> None:
        """Loads ``model.safetensors`` strictly, with errors that name the offending tensor."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found")
        tensors = read_safetensors(path)
        problems = tensor_problems(self.state_dict(), tensors, check_finite=True)
        if problems:
            raise CheckpointError(f"{path}: " + "; ".join(problems))
        self.load_state_dict(tensors, strict=True)


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Reads every tensor of a safetensors file; corruption or truncation -> :class:`CheckpointError`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"corrupted or truncated checkpoint {path}: {exc}") from exc
