"""PI0 / PI0.5 policy: a PaliGemma prefix and a Gemma action expert in one joint transformer.

Modules are transformers' own (``PaliGemmaModel`` with its SigLIP tower, projector and ``GemmaModel``; a
``GemmaModel`` for the expert); module names follow LeRobot's PI0/PI0.5 so their checkpoints map one to one
under ``model.``. PI0.5's adaptive RMSNorm, which transformers does not have, is :class:`AdaRMSNorm`.

Attention layout (blocks separated by ``|``; a block sees itself and every earlier block)::

    pi0:  [images, language] | state | a_0 ... a_{C-1}        (actions bidirectional among themselves)
    pi05: [images, prompt with the state]  | a_0 ... a_{C-1}

In every layer the prefix tokens go through the PaliGemma layer's weights and the suffix tokens through the
expert layer's; queries, keys and values of both are concatenated and attend jointly (same heads and head
dim). The execution plan:

* once per chunk (:meth:`PI0FlowMatching.encode_prefix`): vision tower, embeddings and the PaliGemma layers
  over the prefix, keeping each layer's keys/values after RoPE (the last layer stops after its K/V); for
  PI0 also the state token through the expert layers (it cannot see the actions, so it does not change
  during denoising), appended to the cache; masks and RoPE tables of the action tokens;
* per denoising step (:meth:`PI0FlowMatching.denoise_step`): only the expert layers on the ``C`` action
  tokens, attending to the cache.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import GemmaConfig, GemmaModel, PaliGemmaConfig, PaliGemmaModel, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights
from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

from hlrp_ros.policies.base import ActionExpert, Observation
from hlrp_ros.policies.common import flow_matching, realtime_chunking
from hlrp_ros.policies.common.fixed_shapes import FixedShapeExecution, pad_to_length
from hlrp_ros.policies.common.realtime_chunking import ChunkGuide
from hlrp_ros.policies.common.weights import tensor_problems
from hlrp_ros.policies.hlrp.modeling_hlrp import (
    CheckpointError,
    Normalizer,
    create_sinusoidal_pos_embedding,
    pad_vector,
    read_safetensors,
    resolve_dtype,
)
from hlrp_ros.policies.hlrp.processor_hlrp import build_tiny_tokenizer, load_tokenizer
from hlrp_ros.policies.hlrp.smolvlm_with_expert import (
    additive_mask,
    fold_mask,
    gqa_attention,
    make_att_2d_masks,
)
from hlrp_ros.policies.pi0.configuration_pi0 import PI0Config
from hlrp_ros.policies.pi0.processor_pi0 import PI0Processor

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


class AdaRMSNorm(nn.Module):
    """RMSNorm whose scale, shift and residual gate come from a conditioning vector (PI0.5's time).

    ``dense(cond) -> (scale, shift, gate)``; ``y = rmsnorm(x) * (1 + scale) + shift`` (in float32), and the
    sub-layer output joins the residual stream as ``x + out * gate``.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, dim * 3, bias=True)
        nn.init.zeros_(self.dense.weight)

    def modulation(self, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``cond (B, cond_dim)`` -> ``(scale, shift, gate)``, each ``(B, 1, dim)`` (computed once per step)."""
        scale, shift, gate = self.dense(cond.to(self.dense.weight.dtype))[:, None].chunk(3, dim=-1)
        return scale, shift, gate

    def forward(self, x: Tensor, mod: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        scale, shift, gate = mod
        var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
        normed = (x * torch.rsqrt(var + self.eps)) * (1 + scale.float()) + shift.float()
        return normed.to(x.dtype), gate.to(x.dtype)


class _Holder(nn.Module):
    """Holds a transformers model under ``.model`` (LeRobot's ``paligemma.model`` / ``gemma_expert.model`` names)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def paligemma_config(config: PI0Config) -> PaliGemmaConfig:
    """transformers ``PaliGemmaConfig`` of the prefix (SigLIP vision config, Gemma text config)."""
    p = config.paligemma
    text = {
        "model_type": "gemma", "hidden_size": p["width"], "intermediate_size": p["mlp_dim"],
        "num_hidden_layers": p["depth"], "num_attention_heads": p["num_heads"],
        "num_key_value_heads": p["num_kv_heads"], "head_dim": p["head_dim"], "vocab_size": config.vocab_size,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta, "max_position_embeddings": 8192,
    }
    vision = {"model_type": "siglip_vision_model", "vision_use_head": False, **config.vision}
    return PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=p["width"],
                           vocab_size=config.vocab_size, image_token_index=config.vocab_size - 1,
                           hidden_size=p["width"])


def expert_config(config: PI0Config) -> GemmaConfig:
    """transformers ``GemmaConfig`` of the action expert (its token embedding is not used)."""
    e = config.expert
    return GemmaConfig(hidden_size=e["width"], intermediate_size=e["mlp_dim"], num_hidden_layers=e["depth"],
                       num_attention_heads=e["num_heads"], num_key_value_heads=e["num_kv_heads"],
                       head_dim=e["head_dim"], vocab_size=1, hidden_activation="gelu_pytorch_tanh",
                       rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta, max_position_embeddings=8192,
                       pad_token_id=None, bos_token_id=None, eos_token_id=None)


class PaliGemmaWithExpert(nn.Module):
    """The two transformers models side by side: ``paligemma.model`` (prefix) and ``gemma_expert.model``."""

    def __init__(self, config: PI0Config) -> None:
        super().__init__()
        self.paligemma = _Holder(PaliGemmaModel(paligemma_config(config)))
        expert = GemmaModel(expert_config(config))
        expert.embed_tokens = None
        if config.is_pi05:
            width = config.expert_width
            for layer in expert.layers:
                layer.input_layernorm = AdaRMSNorm(width, width, config.rms_norm_eps)
                layer.post_attention_layernorm = AdaRMSNorm(width, width, config.rms_norm_eps)
            expert.norm = AdaRMSNorm(width, width, config.rms_norm_eps)
        self.gemma_expert = _Holder(expert)

    @property
    def vlm(self) -> PaliGemmaModel:
        return self.paligemma.model

    @property
    def expert(self) -> GemmaModel:
        return self.gemma_expert.model


@dataclass
class PI0Prefix:
    """An encoded observation batch: everything a denoising step needs, computed once per chunk.

    Attributes:
        keys / values: Per layer ``(B, Hkv, K, D)`` keys (after RoPE) and values of the cached tokens
            (prefix, then PI0's state token).
        mask: ``(B, 1, G*C, K + C)`` additive attention mask of the action queries (grouped-query folded).
        cos / sin: RoPE tables of the action positions ``(B, C, D)``.
        batch_size: ``B``.
        batched: False when built from one observation (sample_chunk then returns ``(C, A)``).
        truncated: Whether an instruction was truncated.
        fixed_generation: Set by the fixed-shape sampler (``common.fixed_shapes``); None on the eager path.
    """

    keys: list[Tensor]
    values: list[Tensor]
    mask: Tensor
    cos: Tensor
    sin: Tensor
    batch_size: int
    batched: bool = True
    truncated: bool = False
    fixed_generation: int | None = None


def _sublayer_norm(norm: nn.Module, x: Tensor, mod: tuple[Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor | None]:
    if mod is None:
        return norm(x), None
    return norm(x, mod)


def _residual(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    return x + y if gate is None else x + y * gate


class PI0FlowMatching(nn.Module):
    """The networks and the maths; inputs are model-space tensors (normalised, padded to max dims)."""

    def __init__(self, config: PI0Config) -> None:
        super().__init__()
        self.config = config
        self.paligemma_with_expert = PaliGemmaWithExpert(config)
        we = config.expert_width
        self.action_in_proj = nn.Linear(config.max_action_dim, we)
        self.action_out_proj = nn.Linear(we, config.max_action_dim)
        if config.is_pi05:
            self.time_mlp_in = nn.Linear(we, we)
            self.time_mlp_out = nn.Linear(we, we)
        else:
            self.state_proj = nn.Linear(config.max_state_dim, we)
            self.action_time_mlp_in = nn.Linear(2 * we, we)
            self.action_time_mlp_out = nn.Linear(we, we)
        self.head_dim = config.paligemma["head_dim"]
        self.groups = config.paligemma["num_heads"] // config.paligemma["num_kv_heads"]
        self._set_requires_grad()

    def _set_requires_grad(self) -> None:
        vlm = self.paligemma_with_expert.vlm
        if self.config.freeze_vision_encoder:
            vlm.vision_tower.requires_grad_(False)
        if self.config.train_expert_only:
            vlm.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    # --- embeddings -----------------------------------------------------------------------------------
    def embed_image(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[-1, 1]`` -> projected SigLIP patch tokens ``(B, N, width)``."""
        vlm = self.paligemma_with_expert.vlm
        tower_dtype = vlm.multi_modal_projector.linear.weight.dtype
        hidden = vlm.vision_tower(pixel_values=image.to(tower_dtype)).last_hidden_state
        return vlm.multi_modal_projector(hidden)

    def embed_prefix(self, images: list[Tensor], img_masks: list[Tensor], lang_tokens: Tensor,
                     lang_masks: Tensor) -> tuple[Tensor, Tensor]:
        """Images and language (one bidirectional block) -> ``(embs (B, P, width), pad_masks (B, P))``."""
        embs, pads = [], []
        for img, mask in zip(images, img_masks, strict=True):
            emb = self.embed_image(img)
            embs.append(emb)
            pads.append(mask[:, None].expand(emb.shape[0], emb.shape[1]))
        lang = self.paligemma_with_expert.vlm.language_model.embed_tokens(lang_tokens)  # scaled by sqrt(width)
        embs.append(lang.to(embs[0].dtype))
        pads.append(lang_masks)
        return torch.cat(embs, dim=1).to(self.dtype), torch.cat(pads, dim=1)

    def time_embedding(self, timestep: Tensor) -> Tensor:
        """Sine-cosine embedding of ``(B,)`` times at the expert width (float32)."""
        return create_sinusoidal_pos_embedding(timestep, self.config.expert_width, self.config.min_period,
                                               self.config.max_period).to(torch.float32)

    def embed_actions(self, noisy_actions: Tensor, timestep: Tensor) -> tuple[Tensor, Tensor | None]:
        """Action tokens ``(B, C, expert_width)`` and PI0.5's conditioning vector ``(B, expert_width)`` (else None)."""
        action_emb = self.action_in_proj(noisy_actions.to(self.dtype))
        time_emb = self.time_embedding(timestep).to(self.dtype)
        if self.config.is_pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
            return action_emb, cond
        time_emb = time_emb[:, None, :].expand_as(action_emb)
        x = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([action_emb, time_emb], dim=2))))
        return x, None

    def embed_state(self, state: Tensor) -> Tensor:
        """PI0's state token ``(B, 1, expert_width)``."""
        return self.state_proj(state.to(self.state_proj.weight.dtype))[:, None, :]

    # --- transformer pieces ---------------------------------------------------------------------------
    def _rope(self, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        return self.paligemma_with_expert.vlm.language_model.rotary_emb(like, positions)

    def _qkv(self, attn: nn.Module, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, L, width)`` -> queries ``(B, L, Hq, D)``, keys / values ``(B, Hkv, L, D)`` (RoPE applied)."""
        b, n, _ = h.shape
        q = attn.q_proj(h).view(b, n, -1, self.head_dim)
        k = attn.k_proj(h).view(b, n, -1, self.head_dim)
        v = attn.v_proj(h).view(b, n, -1, self.head_dim)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    def _mods(self, cond: Tensor | None, layer: nn.Module) -> tuple:
        if cond is None:
            return None, None
        return layer.input_layernorm.modulation(cond), layer.post_attention_layernorm.modulation(cond)

    def _finish_layer(self, layer: nn.Module, x: Tensor, att: Tensor, gate: Tensor | None,
                      mod2: tuple | None) -> Tensor:
        x = _residual(x, layer.self_attn.o_proj(att.to(x.dtype)), gate)
        h, gate2 = _sublayer_norm(layer.post_attention_layernorm, x, mod2)
        return _residual(x, layer.mlp(h), gate2)

    # --- inference --------------------------------------------------------------------------------------
    def encode_prefix(self, images: list[Tensor], img_masks: list[Tensor], lang_tokens: Tensor,
                      lang_masks: Tensor, state: Tensor | None, fixed_shapes: bool = False) -> PI0Prefix:
        """Runs the prefix (and PI0's state token) once; returns the per-layer cache for the action tokens.

        ``fixed_shapes`` changes nothing: this pass never reads a device value on the host (the argument
        exists for the fixed-shape sampler, which passes it to every family)."""
        cfg = self.config
        embs, pad = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        b, p = pad.shape
        c = cfg.chunk_size
        n_state = 0 if cfg.is_pi05 else 1
        suffix_pad = torch.ones(b, n_state + c, dtype=torch.bool, device=pad.device)
        # blocks start at the state token (PI0) and at the first action token; built without host data
        suffix_att = (torch.arange(n_state + c, device=pad.device) < 1 + n_state).long()[None].expand(b, -1)
        full_pad = torch.cat([pad, suffix_pad], dim=1)
        full_att = torch.cat([torch.zeros_like(pad, dtype=torch.long), suffix_att], dim=1)
        allowed = make_att_2d_masks(full_pad, full_att)
        positions = torch.cumsum(full_pad, dim=1) - 1
        dtype = self.dtype
        masks = additive_mask(allowed, dtype)

        vlm_layers = self.paligemma_with_expert.vlm.language_model.layers
        expert_layers = self.paligemma_with_expert.expert.layers
        cos, sin = self._rope(positions, embs)
        keys, values = [], []
        x = embs
        prefix_mask = fold_mask(masks[:, :p, :p], self.groups)
        for i, layer in enumerate(vlm_layers):
            q, k, v = self._qkv(layer.self_attn, layer.input_layernorm(x), cos[:, :p], sin[:, :p])
            keys.append(k)
            values.append(v)
            if i + 1 < len(vlm_layers):  # the last layer's output is never used
                x = self._finish_layer(layer, x, gqa_attention(q, k, v, prefix_mask), None, None)
        if n_state:
            s = self.embed_state(state).to(dtype)
            state_mask = fold_mask(masks[:, p:p + 1, :p + 1], self.groups)
            for i, layer in enumerate(expert_layers):
                q, k, v = self._qkv(layer.self_attn, layer.input_layernorm(s), cos[:, p:p + 1], sin[:, p:p + 1])
                keys[i] = torch.cat([keys[i], k], dim=2)
                values[i] = torch.cat([values[i], v], dim=2)
                if i + 1 < len(expert_layers):
                    s = self._finish_layer(layer, s, gqa_attention(q, keys[i], values[i], state_mask), None, None)
        action_rows = slice(p + n_state, p + n_state + c)
        return PI0Prefix(keys=keys, values=values, mask=fold_mask(masks[:, action_rows], self.groups),
                         cos=cos[:, action_rows], sin=sin[:, action_rows], batch_size=b)

    def denoise_step(self, prefix: PI0Prefix, x_t: Tensor, timestep: Tensor) -> Tensor:
        """One velocity evaluation ``v(x_t, t)`` ``(B, C, max_action_dim)`` (float32) against the cache."""
        x, cond = self.embed_actions(x_t, timestep)
        expert = self.paligemma_with_expert.expert
        for i, layer in enumerate(expert.layers):
            mod1, mod2 = self._mods(cond, layer)
            h, gate = _sublayer_norm(layer.input_layernorm, x, mod1)
            q, k, v = self._qkv(layer.self_attn, h, prefix.cos, prefix.sin)
            keys = torch.cat([prefix.keys[i], k], dim=2)
            values = torch.cat([prefix.values[i], v], dim=2)
            x = self._finish_layer(layer, x, gqa_attention(q, keys, values, prefix.mask), gate, mod2)
        x, _ = _sublayer_norm(expert.norm, x, None if cond is None else expert.norm.modulation(cond))
        return self.action_out_proj(x.to(torch.float32).to(self.action_out_proj.weight.dtype)).to(torch.float32)

    def _noise(self, bsize: int, device: torch.device, noise: Tensor | None,
               generator: torch.Generator | None) -> Tensor:
        shape = (bsize, self.config.chunk_size, self.config.max_action_dim)
        if noise is None:
            return flow_matching.sample_noise(shape, device=device, generator=generator)
        noise = noise.to(device=device, dtype=torch.float32)
        if noise.ndim == 2:
            noise = noise[None].expand(bsize, -1, -1)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (or {shape[1:]}), got {tuple(noise.shape)}")
        return noise

    def sample_from_prefix(self, prefix: PI0Prefix, noise: Tensor | None = None, num_steps: int | None = None,
                           generator: torch.Generator | None = None) -> Tensor:
        """Euler-integrates from noise (t=1) to actions (t=0): normalised ``(B, C, max_action_dim)``."""
        device = prefix.mask.device
        x = self._noise(prefix.batch_size, device, noise, generator)
        times = flow_matching.euler_time_tensor(num_steps or self.config.num_steps, device)
        return flow_matching.euler_denoise(self.denoise_step, prefix, x, times)

    def sample_guided_from_prefix(self, prefix: PI0Prefix, target: Tensor, weights: Tensor, beta: float,
                                  noise: Tensor | None = None, num_steps: int | None = None,
                                  generator: torch.Generator | None = None) -> Tensor:
        """Real-time chunking: guided Euler integration towards ``target`` (``(B or 1, C, max_action_dim)``,
        normalised, with its soft mask ``weights``); the prefix cache is a constant (gradient through the
        expert only). Returns normalised ``(B, C, max_action_dim)``."""
        device = prefix.mask.device
        bsize = prefix.batch_size
        x = self._noise(bsize, device, noise, generator)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            return self.denoise_step(prefix, x_t, torch.tensor(t, dtype=torch.float32, device=device).expand(bsize))

        return realtime_chunking.guided_euler_integrate(velocity, x, num_steps or self.config.num_steps,
                                                        target, weights, beta)

    # --- the joint pass (training, and the uncached reference) -----------------------------------------
    def joint_forward(self, prefix_embs: Tensor, prefix_pad: Tensor, state: Tensor | None, x_t: Tensor,
                      timestep: Tensor) -> Tensor:
        """Prefix and suffix through every layer together; returns the velocity ``(B, C, max_action_dim)``."""
        cfg = self.config
        actions, cond = self.embed_actions(x_t, timestep)
        suffix = actions if state is None else torch.cat([self.embed_state(state).to(actions.dtype), actions], 1)
        b, p = prefix_pad.shape
        n_s = suffix.shape[1]
        suffix_pad = torch.ones(b, n_s, dtype=torch.bool, device=prefix_pad.device)
        suffix_att = torch.zeros(b, n_s, dtype=torch.long, device=prefix_pad.device)
        suffix_att[:, 0] = 1
        if state is not None:
            suffix_att[:, 1] = 1
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        att = torch.cat([torch.zeros_like(prefix_pad, dtype=torch.long), suffix_att], dim=1)
        mask = fold_mask(additive_mask(make_att_2d_masks(pad, att), self.dtype), self.groups)
        cos, sin = self._rope(torch.cumsum(pad, dim=1) - 1, prefix_embs)
        x_p, x_s = prefix_embs, suffix.to(self.dtype)
        pwe = self.paligemma_with_expert
        for lp, le in zip(pwe.vlm.language_model.layers, pwe.expert.layers, strict=True):
            mod1, mod2 = self._mods(cond, le)
            hp = lp.input_layernorm(x_p)
            hs, gate = _sublayer_norm(le.input_layernorm, x_s, mod1)
            qp, kp, vp = self._qkv(lp.self_attn, hp, cos[:, :p], sin[:, :p])
            qs, ks, vs = self._qkv(le.self_attn, hs, cos[:, p:], sin[:, p:])
            att_out = gqa_attention(torch.cat([qp, qs], 1), torch.cat([kp, ks], 2), torch.cat([vp, vs], 2), mask)
            x_p = self._finish_layer(lp, x_p, att_out[:, :p], None, None)
            x_s = self._finish_layer(le, x_s, att_out[:, p:], gate, mod2)
        x_s, _ = _sublayer_norm(pwe.expert.norm, x_s, None if cond is None else pwe.expert.norm.modulation(cond))
        out = x_s[:, -cfg.chunk_size:].to(torch.float32)
        return self.action_out_proj(out.to(self.action_out_proj.weight.dtype)).to(torch.float32)

    def sample_uncached(self, images: list[Tensor], img_masks: list[Tensor], lang_tokens: Tensor,
                        lang_masks: Tensor, state: Tensor | None, noise: Tensor | None = None,
                        num_steps: int | None = None) -> Tensor:
        """Reference sampler: every step runs the whole joint pass (no cache). Used by tests."""
        embs, pad = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        bsize = embs.shape[0]
        x = self._noise(bsize, embs.device, noise, None)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            timestep = torch.tensor(t, dtype=torch.float32, device=embs.device).expand(bsize)
            return self.joint_forward(embs, pad, state, x_t, timestep)

        return flow_matching.euler_integrate(velocity, x, num_steps or self.config.num_steps)

    def forward(self, images: list[Tensor], img_masks: list[Tensor], lang_tokens: Tensor, lang_masks: Tensor,
                state: Tensor | None, actions: Tensor, noise: Tensor | None = None, time: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching losses ``(B, C, max_action_dim)``: ``(v(x_t, t) - (noise - actions))**2``."""
        if noise is None:
            noise = flow_matching.sample_noise(tuple(actions.shape), device=actions.device, generator=generator)
        if time is None:
            time = flow_matching.sample_time(actions.shape[0], device=actions.device, generator=generator)
        x_t, u_t = flow_matching.interpolate(actions, noise, time)
        embs, pad = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        v_t = self.joint_forward(embs, pad, state, x_t, time)
        return F.mse_loss(u_t, v_t, reduction="none")


class PI0Policy(FixedShapeExecution, nn.Module, ActionExpert):
    """The PI0 / PI0.5 action expert: model, normalisation, processor and checkpoints.

    Args:
        config: Sizes and knobs.
        tokenizer: PaliGemma's tokenizer; None -> :func:`build_tiny_tokenizer` sized to the vocabulary
            (byte-level BPE for PI0.5, whose prompt holds the state as numbers).
        init_weights: False skips random initialisation (for loading a checkpoint into a large model).
    """

    #: Real-time chunking: ``sample_chunk`` takes a ``guide``.
    supports_guidance = True

    def __init__(self, config: PI0Config, tokenizer: PreTrainedTokenizerBase | None = None,
                 init_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        with contextlib.nullcontext() if init_weights else no_init_weights():
            self.model = PI0FlowMatching(config)
        self.normalize_state = Normalizer(config.state_dim, config.state_norm_mode, config.norm_eps)
        self.normalize_action = Normalizer(config.action_dim, config.action_norm_mode, config.norm_eps)
        if tokenizer is None:
            # PI0.5 writes the state as numbers into the prompt: byte-level BPE spells any of them.
            tokenizer = build_tiny_tokenizer(vocab_size=config.vocab_size, kind="bpe" if config.is_pi05 else "wordlevel")
        self.processor = PI0Processor(config, tokenizer, normalize_state=self.normalize_state)
        self.eval()

    # --- device and dtype -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.action_in_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to_device_dtype(self, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32") -> PI0Policy:
        """Moves to ``device`` and casts the networks to ``dtype``; normalisers, norms' statistics and
        ``action_out_proj`` stay float32 (RMSNorm and the time embedding compute in float32)."""
        torch_dtype = resolve_dtype(dtype)
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        self.to(device=device)
        self.model.to(dtype=torch_dtype)
        self.model.action_out_proj.to(dtype=torch.float32)
        self._renew_execution()
        return self

    def fixed_shape_inputs(self, inputs: list) -> list:
        """Model inputs with the prompt padded to ``tokenizer_max_length`` (LeRobot's processors already do)."""
        images, img_masks, lang, lang_masks, state = inputs
        length = self.config.tokenizer_max_length
        return [images, img_masks, pad_to_length(lang, length), pad_to_length(lang_masks, length), state]

    # --- inputs -------------------------------------------------------------------------------------------
    def _model_inputs(self, batch: dict[str, Tensor]) -> list:
        device = self.device
        images = [batch["images"][:, i].to(device) for i in range(batch["images"].shape[1])]
        img_masks = [batch["image_masks"][:, i].to(device) for i in range(batch["image_masks"].shape[1])]
        state = None
        if not self.config.is_pi05:
            state = pad_vector(self.normalize_state(batch["state"].to(device)), self.config.max_state_dim)
        return [images, img_masks, batch["lang_tokens"].to(device), batch["lang_masks"].to(device), state]

    @torch.no_grad()
    def encode_prefix(self, observation: Observation | list[Observation]) -> PI0Prefix:
        """Encodes one observation (or a list) into a :class:`PI0Prefix` (prefix layers run once)."""
        batched = isinstance(observation, list | tuple)
        observations = list(observation) if batched else [observation]
        batch = self.processor.collate(observations, image_device=self.device)
        prefix = self._encode_inputs(self._model_inputs(batch))
        prefix.batched = batched
        prefix.truncated = bool(batch["lang_truncated"].any())
        return prefix

    @torch.no_grad()
    def sample_chunk(self, prefix: PI0Prefix, num_steps: int | None = None, noise: Tensor | None = None,
                     generator: torch.Generator | None = None, guide: ChunkGuide | None = None) -> Tensor:
        """Un-normalised float32 CPU actions ``(C, action_dim)`` (``(B, C, action_dim)`` when batched).

        ``guide`` (robot units) turns on real-time chunking; None samples unguided."""
        self._check_prefix(prefix)
        if guide is None:
            actions = self._sample_unguided(prefix, noise, generator, num_steps)
        else:
            cfg = self.config
            guide.check(cfg.chunk_size, cfg.action_dim, prefix.batch_size)
            target, weights = realtime_chunking.guide_tensors(guide, cfg.chunk_size, cfg.max_action_dim,
                                                              self.normalize_action, self.device)
            actions = self.model.sample_guided_from_prefix(prefix, target, weights, guide.beta, noise=noise,
                                                           num_steps=num_steps, generator=generator)
        actions = self.normalize_action.inverse(actions[..., : self.config.action_dim]).cpu()
        return actions if prefix.batched else actions[0]

    @torch.no_grad()
    def predict_uncached(self, observations: list[Observation], num_steps: int | None = None,
                         noise: Tensor | None = None) -> Tensor:
        """Reference path without the cache (whole joint pass per step): ``(B, C, action_dim)``."""
        batch = self.processor.collate(observations, image_device=self.device)
        actions = self.model.sample_uncached(*self._model_inputs(batch), noise=noise, num_steps=num_steps)
        return self.normalize_action.inverse(actions[..., : self.config.action_dim]).cpu()

    def reset(self) -> None:
        """Nothing is kept between chunks."""

    # --- training -----------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Tensor], noise: Tensor | None = None, time: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """Mean flow-matching loss over the real action dims (and non-padded steps with ``action_is_pad``)."""
        device = self.device
        actions = pad_vector(self.normalize_action(batch["actions"].to(device)), self.config.max_action_dim)
        losses = self.model(*self._model_inputs(batch), actions, noise=noise, time=time,
                            generator=generator)[..., : self.config.action_dim]
        if "action_is_pad" in batch:
            keep = (~batch["action_is_pad"].to(device))[..., None].to(losses.dtype)
            return (losses * keep).sum() / (keep.sum() * losses.shape[-1]).clamp_min(1)
        return losses.mean()

    def set_normalization_stats(self, state: dict[str, np.ndarray] | None = None,
                                action: dict[str, np.ndarray] | None = None) -> None:
        """Stores ``mean``/``std`` and/or ``min``/``max`` statistics per dim."""
        if state:
            self.normalize_state.set_stats(state)
        if action:
            self.normalize_action.set_stats(action)

    def num_parameters(self) -> int:
        """Parameters of the networks."""
        return sum(p.numel() for p in self.model.parameters())

    # --- checkpoints ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``config.json``, ``model.safetensors`` (weights + statistics) and ``tokenizer/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "type": "hlrp_pi0"})
        self.processor.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "float32", tokenizer_dir: str | Path | None = None) -> PI0Policy:
        """Loads a checkpoint written by :meth:`save_pretrained` (safetensors only)."""
        directory = Path(directory)
        config = PI0Config.load(directory)
        tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else directory / TOKENIZER_DIR
        if not tok_dir.is_dir():
            raise FileNotFoundError(f"no tokenizer directory at {tok_dir}")
        policy = cls(config, tokenizer=load_tokenizer(tok_dir), init_weights=False)
        policy.load_tensors(read_safetensors(directory / WEIGHTS_NAME), directory / WEIGHTS_NAME)
        policy.to_device_dtype(device, dtype)
        return policy.eval()

    def load_weights(self, path: str | Path) -> None:
        """Loads a ``model.safetensors`` written by :meth:`save_pretrained` strictly (resume, fine-tuning)."""
        self.load_tensors(read_safetensors(Path(path)), Path(path))

    def load_tensors(self, tensors: dict[str, Tensor], source: Path, prefix_only: str = "") -> None:
        """Loads ``tensors`` strictly (restricted to keys starting with ``prefix_only``); errors name each tensor."""
        expected = {k: v for k, v in self.state_dict().items() if k.startswith(prefix_only)}
        problems = tensor_problems(expected, tensors, extra="unknown")
        if problems:
            raise CheckpointError(f"{source}: " + "; ".join(problems))
        self.load_state_dict(tensors, strict=not prefix_only)
