"""SmolVLM backbone plus a smaller Llama "action expert" that attends to the VLM's key/value cache.

The math follows LeRobot 0.4.4's SmolVLA (``SmolVLMWithExpertModel``) so that its checkpoints load one to
one (module names included): keys are cached after RoPE, the expert's cross-attention layers re-project the
cached VLM keys/values with their own ``k_proj``/``v_proj``, cross-attention query positions restart at 0,
self-attention layers (every ``self_attn_every_n_layers``) attend to ``[prefix, actions]`` with the action
positions continuing after the prefix, and RoPE uses a fixed wavelength of 10_000.

What differs is the execution plan: attention runs through ``torch.nn.functional.scaled_dot_product_attention``
(grouped-query heads folded into the query length, no K/V copies), and everything that is constant during
one chunk (prefix K/V, the expert's projections of them, masks, RoPE tables) lives in an
:class:`ExpertKVCache` built once per chunk, so a denoising step only runs the expert on the action tokens.

Shapes: ``B`` batch, ``P`` prefix tokens, ``C`` action tokens (chunk size), ``Hq``/``Hkv`` query / key-value
heads, ``G = Hq / Hkv``, ``D`` head dim.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from transformers import AutoModel, SmolVLMConfig, SmolVLMForConditionalGeneration
from transformers.activations import ACT2FN


def get_intermediate_size(hidden_dim: int, ffn_dim_multiplier: int = 4, multiple_of: int = 256) -> int:
    """SmolVLA's expert MLP width: ``int(2h/3) * 4`` rounded up to a multiple of 256."""
    hidden_dim = int(2 * hidden_dim / 3)
    hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


def make_att_2d_masks(pad_masks: Tensor, att_masks: Tensor) -> Tensor:
    """Prefix-LM attention mask from per-token block starts (big_vision / PI0 convention).

    Token ``i`` may attend to token ``j`` iff ``cumsum(att)[j] <= cumsum(att)[i]`` and both are real tokens.
    ``att`` is 1 where a new block starts (earlier tokens cannot see it) and 0 where a token joins the
    previous block, e.g. ``[0 0 0 1 1 1]``: a bidirectional block of 3 followed by 3 causal tokens.

    Args:
        pad_masks: ``(B, N)`` bool, True for real tokens.
        att_masks: ``(B, N)`` bool/int block-start flags.

    Returns:
        ``(B, N, N)`` bool, True where attention is allowed.
    """
    if att_masks.ndim != 2 or pad_masks.ndim != 2:
        raise ValueError(f"expected 2-D masks, got {tuple(pad_masks.shape)} and {tuple(att_masks.shape)}")
    cumsum = torch.cumsum(att_masks, dim=1)
    att_2d = cumsum[:, None, :] <= cumsum[:, :, None]
    pad_2d = pad_masks[:, None, :] & pad_masks[:, :, None]
    return att_2d & pad_2d


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask -> additive float mask (0 allowed, dtype min disallowed).

    The dtype minimum (not -inf) keeps fully masked rows (padding queries) finite, as SmolVLA's eager
    attention does, so padded tokens never produce NaNs that could leak through a zero probability.
    """
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def rope_tables(positions: Tensor, head_dim: int, max_wavelength: float) -> tuple[Tensor, Tensor]:
    """RoPE cos/sin tables in float32, computed exactly as SmolVLA's ``apply_rope`` does.

    Args:
        positions: ``(B, L)`` integer positions.
        head_dim: Head dimension ``D`` (even).
        max_wavelength: RoPE base wavelength.

    Returns:
        ``(cos, sin)``, each ``(B, L, 1, D)`` float32, laid out for :func:`apply_rope`: ``cos`` is the
        ``D/2`` angles' cosines twice, ``sin`` their sines negated then as they are.
    """
    d_half = head_dim // 2
    freq_exponents = (2.0 / head_dim) * torch.arange(d_half, dtype=torch.float32, device=positions.device)
    timescale = max_wavelength**freq_exponents
    radians = positions[..., None].to(torch.float32) / timescale[None, None, :].to(torch.float32)
    radians = radians[..., None, :]
    cos, sin = torch.cos(radians), torch.sin(radians)
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates ``x`` ``(B, L, H, D)`` (half-split convention) in float32 and returns it in ``x.dtype``.

    ``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]`` written as ``x * cos + roll(x, D/2) * sin`` with the
    tables of :func:`rope_tables`: the same products and sums (so the same bits), in 4 kernels instead of 8;
    a denoising step applies it 24 times.
    """
    dtype = x.dtype
    x = x.to(torch.float32)
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, dims=-1), sin).to(dtype)


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """A Llama ``RMSNorm`` module applied to ``x``: one fused kernel in float32 (the module's 6 kernels otherwise)."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


def fold_mask(mask: Tensor | None, groups: int) -> Tensor | None:
    """``(B, L, S)`` mask -> ``(B, 1, G*L, S)`` for grouped-query attention folded into the query length."""
    if mask is None:
        return None
    b, l_len, s_len = mask.shape
    return mask[:, None, None].expand(b, 1, groups, l_len, s_len).reshape(b, 1, groups * l_len, s_len)


def gqa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Grouped-query attention through SDPA without repeating keys/values.

    The ``G`` query heads that share a key/value head are folded into the query length, so SDPA sees
    ``Hkv`` heads of ``G*L`` queries (identical math to repeating K/V ``G`` times, minus the copies).

    Args:
        q: ``(B, L, Hq, D)`` queries.
        k: ``(B, Hkv, S, D)`` keys.
        v: ``(B, Hkv, S, D)`` values.
        mask: ``(B, 1, G*L, S)`` additive mask (see :func:`fold_mask`) or None.

    Returns:
        ``(B, L, Hq*D)`` attention output (head order ``kv_head * G + g``, as ``repeat_kv``).
    """
    b, l_len, hq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    qf = q.view(b, l_len, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * l_len, d)
    out = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask)
    return out.view(b, hkv, g, l_len, d).permute(0, 3, 1, 2, 4).reshape(b, l_len, hq * d)


def _heads(x: Tensor, head_dim: int) -> Tensor:
    """``(B, L, H*D)`` -> ``(B, L, H, D)`` view."""
    return x.view(*x.shape[:-1], -1, head_dim)


class PackedLinears:
    """Inference-time cache of oneDNN-prepacked ``nn.Linear`` weights (CPU only).

    A prepacked weight skips the per-call packing that dominates small-batch GEMMs (the expert runs 50
    action tokens against ~100M weights at every denoising step): about 1.4x faster matmuls in float32
    and 1.2x in bfloat16 on AVX-512 CPUs, at the cost of a second copy of the packed weights.
    Entries are keyed by module and stamped with the weight's version counter, storage and dtype, so
    any in-place update (optimizer step, ``load_state_dict``) or move repacks it. Autograd calls (grad
    enabled and a tensor requiring grad), non-CPU tensors, code being compiled, or a CPU without oneDNN use
    the module itself.

    A call can also apply what follows the matmul: an activation (``act``, a transformers ``hidden_act``
    name) or a residual add (``residual``). Where oneDNN has it (:attr:`FUSED_ACTIVATIONS`, the add) it
    runs in the matmul's epilogue, so the output is written once instead of being re-read by a separate
    elementwise kernel (SigLIP's 1024x3072 GELU alone is ~5 % of a prefix).
    """

    #: Weights smaller than this many elements run through the module (packing does not pay off there).
    MIN_WEIGHT_NUMEL = 1 << 15

    #: transformers ``hidden_act`` names oneDNN can fuse -> (its post-op, the post-op's algorithm).
    FUSED_ACTIVATIONS = {"gelu_pytorch_tanh": ("gelu", "tanh"), "gelu": ("gelu", "none"), "silu": ("swish", "")}

    def __init__(self) -> None:
        self.enabled = torch.backends.mkldnn.is_available()
        self._cache: dict[int, tuple[tuple[int, int, torch.dtype], Tensor]] = {}
        self._activations: dict[str, nn.Module] = {}  # hidden_act name -> the function the modules use

    def clear(self) -> None:
        """Drops every packed weight (frees their memory)."""
        self._cache.clear()

    def __call__(self, module: nn.Linear, x: Tensor, act: str | None = None, residual: Tensor | None = None) -> Tensor:
        """``act(module(x)) + residual`` (either optional) through a prepacked weight when possible.

        Args:
            module: The linear layer.
            x: ``(..., in_features)`` input.
            act: A transformers ``hidden_act`` name applied to the output (``ACT2FN``), or None.
            residual: Added to the output (same shape), or None. Not combined with ``act``.
        """
        if act is not None and residual is not None:
            raise ValueError("fuse either an activation or a residual add, not both")
        weight = module.weight
        if (
            not self.enabled
            or torch.compiler.is_compiling()  # the compiler packs weights itself; a cache lookup would break its graph
            or x.device.type != "cpu"
            or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
            or x.dtype != weight.dtype
            or weight.numel() < self.MIN_WEIGHT_NUMEL
            or (residual is not None and (residual.dtype != x.dtype or residual.shape[:-1] != x.shape[:-1]))
        ):
            return self._unfused(module, x, act, residual)
        stamp = (weight._version, weight.data_ptr(), weight.dtype)
        entry = self._cache.get(id(module))
        if entry is None or entry[0] != stamp:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, x.numel() // x.shape[-1]))
            except RuntimeError:  # no usable oneDNN kernel for this dtype/CPU: stop trying
                self.enabled = False
                return self._unfused(module, x, act, residual)
            entry = (stamp, packed)
            self._cache[id(module)] = entry
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), entry[1], module.bias, "add")
        if act is None or act in self.FUSED_ACTIVATIONS:
            attr, algorithm = self.FUSED_ACTIVATIONS[act] if act is not None else ("none", "")
            return torch.ops.mkldnn._linear_pointwise(x, entry[1], module.bias, attr, [], algorithm)
        return self._activation(act)(torch.ops.mkldnn._linear_pointwise(x, entry[1], module.bias, "none", [], ""))

    def _unfused(self, module: nn.Linear, x: Tensor, act: str | None, residual: Tensor | None) -> Tensor:
        """The same result through the module and separate kernels (autograd, GPU, no oneDNN)."""
        y = module(x)
        if act is not None:
            y = self._activation(act)(y)
        return y if residual is None else y + residual

    def _activation(self, name: str) -> nn.Module:
        if name not in self._activations:
            self._activations[name] = ACT2FN[name]
        return self._activations[name]


@dataclass
class ExpertKVCache:
    """Everything the expert needs from the prefix, constant within one chunk.

    Attributes:
        prefix_len: ``P`` (prefix tokens, padding included).
        chunk_size: ``C``.
        self_k / self_v: VLM layer index -> ``(B, Hkv, P + C, D)`` buffers whose first ``P`` slots hold the
            VLM's cached (post-RoPE) keys/values; each denoising step writes the action keys/values into
            the last ``C`` slots in place.
        cross_k / cross_v: VLM layer index -> ``(B, Hkv, P, D)``: the expert's ``k_proj``/``v_proj`` applied
            to the cached VLM keys/values (SmolVLA re-projects them at every step; here once per chunk).
        self_mask: ``(B, 1, G*C, P + C)`` additive mask of the self-attention layers.
        cross_mask: ``(B, 1, G*C, P)`` additive mask of the cross-attention layers, None without padding.
        self_rope / cross_rope: RoPE ``(cos, sin)`` of the action tokens in self layers (positions continue
            after the prefix) and cross layers (positions restart at 0).
    """

    prefix_len: int
    chunk_size: int
    self_k: dict[int, Tensor] = field(default_factory=dict)
    self_v: dict[int, Tensor] = field(default_factory=dict)
    cross_k: dict[int, Tensor] = field(default_factory=dict)
    cross_v: dict[int, Tensor] = field(default_factory=dict)
    self_mask: Tensor | None = None
    cross_mask: Tensor | None = None
    self_rope: tuple[Tensor, Tensor] | None = None
    cross_rope: tuple[Tensor, Tensor] | None = None


class SmolVLMWithExpertModel(nn.Module):
    """SmolVLM (vision tower, connector, truncated Llama text model) with a Llama action expert.

    Args:
        vlm_config: transformers ``SmolVLMConfig`` of the backbone (random weights are created from it).
        num_vlm_layers: Text layers kept (the first ones); <= 0 keeps all.
        num_expert_layers: Expert layers; <= 0 -> as many as VLM layers (must divide them otherwise).
        self_attn_every_n_layers: Layers with ``index % n == 0`` are self-attention; others cross-attend.
        expert_width_multiplier: Expert hidden size = text hidden size * multiplier.
        attention_mode: Only "cross_attn".
        freeze_vision_encoder: Freeze the vision tower.
        train_expert_only: Freeze the whole VLM.
        rope_max_wavelength: RoPE base wavelength (SmolVLA: 10_000).
        legacy_vision_position_ids: Bucket vision patch positions as transformers < 5 did (SmolVLA checkpoints).
    """

    def __init__(
        self,
        vlm_config: SmolVLMConfig,
        *,
        num_vlm_layers: int = -1,
        num_expert_layers: int = -1,
        self_attn_every_n_layers: int = 2,
        expert_width_multiplier: float = 0.75,
        attention_mode: str = "cross_attn",
        freeze_vision_encoder: bool = False,
        train_expert_only: bool = False,
        rope_max_wavelength: float = 10_000.0,
        legacy_vision_position_ids: bool = True,
    ) -> None:
        super().__init__()
        if attention_mode != "cross_attn":
            raise NotImplementedError(f"attention_mode {attention_mode!r} (only 'cross_attn')")
        config = copy.deepcopy(vlm_config)
        config._attn_implementation = "sdpa"
        config.vision_config._attn_implementation = "sdpa"
        config.text_config._attn_implementation = "sdpa"
        self.vlm = SmolVLMForConditionalGeneration(config)
        text_model = self.get_vlm_model().text_model
        if num_vlm_layers > 0:
            text_model.layers = text_model.layers[:num_vlm_layers]
        self.num_vlm_layers = len(text_model.layers)
        self.config = config

        text_cfg = config.text_config
        expert_cfg = copy.deepcopy(text_cfg)
        expert_cfg.hidden_size = int(text_cfg.hidden_size * expert_width_multiplier)
        expert_cfg.intermediate_size = get_intermediate_size(int(text_cfg.hidden_size * expert_width_multiplier))
        expert_cfg.num_hidden_layers = self.num_vlm_layers
        if num_expert_layers > 0:
            if self.num_vlm_layers % num_expert_layers != 0:
                raise ValueError(
                    f"num_expert_layers ({num_expert_layers}) must divide the VLM layers ({self.num_vlm_layers})"
                )
            expert_cfg.num_hidden_layers = num_expert_layers
        self.lm_expert = AutoModel.from_config(expert_cfg)
        self.num_expert_layers = len(self.lm_expert.layers)
        self.self_attn_every_n_layers = self_attn_every_n_layers
        self.head_dim = text_cfg.head_dim
        kv_dim = text_cfg.num_key_value_heads * text_cfg.head_dim
        expert_kv_dim = expert_cfg.num_key_value_heads * expert_cfg.head_dim
        multiple_of = self.num_vlm_layers // self.num_expert_layers
        for idx, layer in enumerate(self.lm_expert.layers):
            # SmolVLA picks the projection shape by expert index but the attention kind by VLM index.
            if self.is_self_attn_layer(idx) != self.is_self_attn_layer(idx * multiple_of):
                raise ValueError(
                    f"expert layer {idx} sits at VLM layer {idx * multiple_of}: with num_expert_layers="
                    f"{self.num_expert_layers} and self_attn_every_n_layers={self_attn_every_n_layers} its "
                    "attention kind is inconsistent (SmolVLA cannot run this combination either)"
                )
            if self.is_self_attn_layer(idx):
                continue
            # Cross-attention layers project the VLM's cached keys/values (kv_dim wide).
            layer.self_attn.k_proj = nn.Linear(kv_dim, expert_kv_dim, bias=expert_cfg.attention_bias)
            layer.self_attn.v_proj = nn.Linear(kv_dim, expert_kv_dim, bias=expert_cfg.attention_bias)
        self.lm_expert.embed_tokens = None
        self.expert_config = expert_cfg
        self.expert_hidden_size = expert_cfg.hidden_size
        self.num_attention_heads = text_cfg.num_attention_heads
        self.num_key_value_heads = text_cfg.num_key_value_heads
        self.rope_max_wavelength = rope_max_wavelength
        self.legacy_vision_position_ids = legacy_vision_position_ids
        #: Prepacked-weight linears for inference (``self.linear.enabled = False`` turns them off).
        self.linear = PackedLinears()
        # Activation names, applied (fused where oneDNN can) by ``self.linear``; the expert shares the text's.
        self.vision_act = config.vision_config.hidden_act
        self.text_act = text_cfg.hidden_act
        self._vision_pos_cache: dict[tuple[int, int, str], Tensor] = {}
        self.attention_mode = attention_mode
        self.freeze_vision_encoder = freeze_vision_encoder
        self.train_expert_only = train_expert_only
        self.set_requires_grad()

    # --- structure ------------------------------------------------------------------------------------
    def get_vlm_model(self) -> nn.Module:
        """The ``SmolVLMModel`` (vision_model, connector, text_model)."""
        return self.vlm.model

    @property
    def vlm_layers(self) -> nn.ModuleList:
        """The (truncated) VLM text layers."""
        return self.get_vlm_model().text_model.layers

    def expert_layer(self, vlm_layer_idx: int) -> nn.Module | None:
        """The expert layer paired with VLM layer ``vlm_layer_idx`` (None where the expert has no layer)."""
        multiple_of = self.num_vlm_layers // self.num_expert_layers
        if multiple_of > 0 and vlm_layer_idx > 0 and vlm_layer_idx % multiple_of != 0:
            return None
        return self.lm_expert.layers[vlm_layer_idx // multiple_of if multiple_of > 0 else vlm_layer_idx]

    def is_self_attn_layer(self, vlm_layer_idx: int) -> bool:
        """True where the expert attends to ``[prefix, actions]`` (else it cross-attends to the prefix)."""
        n = self.self_attn_every_n_layers
        return n > 0 and vlm_layer_idx % n == 0

    def set_requires_grad(self) -> None:
        """Freezes what SmolVLA freezes plus parameters that no output depends on."""
        vlm_model = self.get_vlm_model()
        if self.freeze_vision_encoder:
            vlm_model.vision_model.eval()
            for p in vlm_model.vision_model.parameters():
                p.requires_grad = False
        if self.train_expert_only:
            self.vlm.eval()
            for p in self.vlm.parameters():
                p.requires_grad = False
        # Never used: LM head, final text norm, and the last VLM layer's query/output/MLP (only its K/V are read).
        last = self.vlm_layers[-1]
        unused = [self.vlm.lm_head, vlm_model.text_model.norm, last.self_attn.q_proj, last.self_attn.o_proj,
                  last.mlp, last.post_attention_layernorm]
        for module in unused:
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> SmolVLMWithExpertModel:
        """Like ``nn.Module.train`` but keeps frozen parts in eval mode (as SmolVLA)."""
        super().train(mode)
        if self.freeze_vision_encoder:
            self.get_vlm_model().vision_model.eval()
        if self.train_expert_only:
            self.vlm.eval()
        return self

    # --- embeddings -----------------------------------------------------------------------------------
    def vision_position_ids(self, patches_h: int, patches_w: int, device: torch.device) -> Tensor:
        """Position-embedding ids ``(patches_h * patches_w,)`` of a full (unpadded) image's patches.

        Patch coordinates are bucketed onto the ``num_patches_per_side`` grid (NaViT-style, any image
        size). With ``legacy_vision_position_ids`` the fractional coordinates are ``i / n * (1 - 1e-6)`` as
        in transformers < 5, the version SmolVLA checkpoints were trained and exported with (it maps
        patches 0 and 1 of each axis to the same bucket); otherwise ``i / n`` (transformers >= 5).
        """
        key = (patches_h, patches_w, str(device))
        cached = self._vision_pos_cache.get(key)
        if cached is not None:
            return cached
        n_side = self.get_vlm_model().vision_model.embeddings.num_patches_per_side
        boundaries = torch.arange(1 / n_side, 1.0, 1 / n_side, device=device)

        def buckets(n: int) -> Tensor:
            idx = torch.arange(n, device=device, dtype=torch.float32)
            if self.legacy_vision_position_ids:
                frac = idx / n * (1 - 1e-6)
            else:
                frac = torch.clamp(idx * (1.0 / n), max=1.0 - 1e-6)
            return torch.bucketize(frac, boundaries, right=True)

        ids = (buckets(patches_h)[:, None] * n_side + buckets(patches_w)[None, :]).reshape(-1)
        self._vision_pos_cache[key] = ids
        return ids

    def embed_image(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, N_img, text_hidden)`` image tokens (vision tower + connector)."""
        return self.connect(self.encode_vision(image))

    def encode_vision(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, N_patches, vision_hidden)`` after the tower's final LayerNorm.

        Runs the SigLIP-style tower module by module (patch conv, position embeddings, encoder, final
        LayerNorm) so that the position ids follow :meth:`vision_position_ids`.
        """
        vision = self.get_vlm_model().vision_model
        emb = vision.embeddings
        pixels = image.to(dtype=emb.patch_embedding.weight.dtype)
        patches = emb.patch_embedding(pixels)  # (B, hidden, H/ps, W/ps)
        pos_ids = self.vision_position_ids(patches.shape[2], patches.shape[3], patches.device)
        hidden = patches.flatten(2).transpose(1, 2) + emb.position_embedding(pos_ids)[None]
        for layer in vision.encoder.layers:  # SmolVLMEncoderLayer, computed as transformers does
            hidden = self._vision_layer(layer, hidden)
        return vision.post_layernorm(hidden)

    def connect(self, vision_hidden: Tensor) -> Tensor:
        """The connector: pixel shuffle + modality projection, ``(B, N_patches, vision_hidden)`` -> image tokens."""
        connector = self.get_vlm_model().connector
        shuffled = connector.pixel_shuffle(vision_hidden, connector.scale_factor)
        return self.linear(connector.modality_projection.proj, shuffled)

    def _vision_layer(self, layer: nn.Module, hidden: Tensor) -> Tensor:
        """One pre-norm SigLIP encoder layer (bidirectional SDPA attention, GELU MLP)."""
        attn, lin = layer.self_attn, self.linear
        normed = layer.layer_norm1(hidden)
        b, n_tok, _ = normed.shape
        q, k, v = (
            lin(proj, normed).view(b, n_tok, attn.num_heads, attn.head_dim).transpose(1, 2)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale).transpose(1, 2).reshape(b, n_tok, -1)
        hidden = lin(attn.out_proj, out, residual=hidden)
        mlp = layer.mlp
        inner = lin(mlp.fc1, layer.layer_norm2(hidden), act=self.vision_act)
        return lin(mlp.fc2, inner, residual=hidden)

    def embed_language_tokens(self, tokens: Tensor) -> Tensor:
        """``(B, L)`` token ids -> ``(B, L, text_hidden)`` (unscaled) embeddings."""
        return self.get_vlm_model().text_model.get_input_embeddings()(tokens)

    # --- layer pieces ---------------------------------------------------------------------------------
    def _project_qkv(self, layer: nn.Module, hidden: Tensor, need_q: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
        """input_layernorm + q/k/v projections -> ``(B, L, H, D)`` each (q None when not needed)."""
        attn, lin = layer.self_attn, self.linear
        normed = rms_norm(layer.input_layernorm, hidden).to(dtype=attn.q_proj.weight.dtype)
        q = _heads(lin(attn.q_proj, normed), self.head_dim) if need_q else None
        return q, _heads(lin(attn.k_proj, normed), self.head_dim), _heads(lin(attn.v_proj, normed), self.head_dim)

    def _finish_layer(self, layer: nn.Module, attn_out: Tensor, residual: Tensor) -> Tensor:
        """o_proj + residual, then post_attention_layernorm + gated MLP (``down(act(gate) * up)``) + residual."""
        lin, mlp = self.linear, layer.mlp
        attn_out = attn_out.to(layer.self_attn.o_proj.weight.dtype)
        hidden = lin(layer.self_attn.o_proj, attn_out, residual=residual)
        normed = rms_norm(layer.post_attention_layernorm, hidden)
        gate = lin(mlp.gate_proj, normed, act=self.text_act)
        return lin(mlp.down_proj, gate * lin(mlp.up_proj, normed), residual=hidden)

    def _cross_kv(self, expert_layer: nn.Module, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Expert re-projection of cached VLM keys/values ``(B, P, Hkv, D)`` -> ``(B, Hkv, P, D)`` each."""
        attn = expert_layer.self_attn
        dtype = attn.k_proj.weight.dtype
        ek = _heads(self.linear(attn.k_proj, k.reshape(*k.shape[:2], -1).to(dtype)), self.head_dim)
        ev = _heads(self.linear(attn.v_proj, v.reshape(*v.shape[:2], -1).to(dtype)), self.head_dim)
        return ek.transpose(1, 2), ev.transpose(1, 2)

    # --- prefix pass (once per chunk) -----------------------------------------------------------------
    def forward_prefix(self, prefix_embs: Tensor, att_2d_mask: Tensor, position_ids: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Runs the prefix through the VLM text layers once and returns each layer's key/value cache.

        Args:
            prefix_embs: ``(B, P, text_hidden)``.
            att_2d_mask: ``(B, P, P)`` bool prefix-LM mask.
            position_ids: ``(B, P)``.

        Returns:
            Per VLM layer ``(k, v)``, each ``(B, P, Hkv, D)``; keys after RoPE. The last layer only computes
            its keys/values (its attention output and MLP feed nothing).
        """
        groups = self.num_attention_heads // self.num_key_value_heads
        hidden = prefix_embs
        dtype = self.vlm_layers[0].self_attn.q_proj.weight.dtype
        mask = fold_mask(additive_mask(att_2d_mask, dtype), groups)
        cos, sin = rope_tables(position_ids, self.head_dim, self.rope_max_wavelength)
        cache: list[tuple[Tensor, Tensor]] = []
        n_layers = len(self.vlm_layers)
        for idx, layer in enumerate(self.vlm_layers):
            last = idx == n_layers - 1
            q, k, v = self._project_qkv(layer, hidden, need_q=not last)
            k = apply_rope(k, cos, sin)
            cache.append((k, v))
            if last:
                break
            q = apply_rope(q, cos, sin)
            out = gqa_attention(q, k.transpose(1, 2), v.transpose(1, 2), mask)
            hidden = self._finish_layer(layer, out, hidden)
        return cache

    def build_expert_cache(
        self, kv_cache: list[tuple[Tensor, Tensor]], prefix_pad_masks: Tensor, chunk_size: int,
        always_mask: bool = False,
    ) -> ExpertKVCache:
        """Precomputes everything the denoising steps reuse: K/V buffers, re-projected K/V, masks, RoPE.

        Args:
            kv_cache: Output of :meth:`forward_prefix`.
            prefix_pad_masks: ``(B, P)`` bool, True for real prefix tokens.
            chunk_size: Number of action tokens ``C``.
            always_mask: Build the cross-attention mask even when nothing is padded. Otherwise it is left out
                then, which costs a host synchronisation (reading the padding) but saves the masked kernels.
        """
        b, p_len = prefix_pad_masks.shape
        device = prefix_pad_masks.device
        groups = self.num_attention_heads // self.num_key_value_heads
        cache = ExpertKVCache(prefix_len=p_len, chunk_size=chunk_size)
        for idx, (k, v) in enumerate(kv_cache):
            expert_layer = self.expert_layer(idx)
            if expert_layer is None:
                continue
            if self.is_self_attn_layer(idx):
                kb = k.new_empty(b, k.shape[2], p_len + chunk_size, k.shape[3])
                vb = v.new_empty(b, v.shape[2], p_len + chunk_size, v.shape[3])
                kb[:, :, :p_len] = k.transpose(1, 2)
                vb[:, :, :p_len] = v.transpose(1, 2)
                cache.self_k[idx], cache.self_v[idx] = kb, vb
            else:
                cache.cross_k[idx], cache.cross_v[idx] = self._cross_kv(expert_layer, k, v)
        dtype = self.lm_expert.layers[0].self_attn.q_proj.weight.dtype
        causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=device).tril()
        prefix_rows = prefix_pad_masks[:, None, :].expand(b, chunk_size, p_len)
        self_mask = torch.cat([prefix_rows, causal[None].expand(b, -1, -1)], dim=2)
        cache.self_mask = fold_mask(additive_mask(self_mask, dtype), groups)
        if always_mask or not bool(prefix_pad_masks.all()):
            cache.cross_mask = fold_mask(additive_mask(prefix_rows, dtype), groups)
        arange = torch.arange(chunk_size, device=device)
        n_valid = prefix_pad_masks.sum(dim=-1, keepdim=True)
        cache.self_rope = rope_tables(n_valid + arange[None], self.head_dim, self.rope_max_wavelength)
        cache.cross_rope = rope_tables(arange[None], self.head_dim, self.rope_max_wavelength)
        return cache

    # --- expert pass (once per denoising step) --------------------------------------------------------
    def forward_expert(self, suffix_embs: Tensor, cache: ExpertKVCache) -> Tensor:
        """Runs the action tokens through the expert against a prefix cache.

        Args:
            suffix_embs: ``(B, C, expert_hidden)`` action/time embeddings.
            cache: From :meth:`build_expert_cache` (its self-attention buffers are written in place).

        Returns:
            ``(B, C, expert_hidden)`` after the expert's final norm.
        """
        hidden = suffix_embs
        p_len = cache.prefix_len
        for idx in range(self.num_vlm_layers):
            layer = self.expert_layer(idx)
            if layer is None:
                continue
            if idx in cache.self_k:
                q, k, v = self._project_qkv(layer, hidden)
                cos, sin = cache.self_rope
                kb, vb = cache.self_k[idx], cache.self_v[idx]
                kb[:, :, p_len:] = apply_rope(k, cos, sin).transpose(1, 2)
                vb[:, :, p_len:] = v.transpose(1, 2)
                out = gqa_attention(apply_rope(q, cos, sin), kb, vb, cache.self_mask)
            else:
                attn = layer.self_attn
                normed = rms_norm(layer.input_layernorm, hidden).to(dtype=attn.q_proj.weight.dtype)
                cos, sin = cache.cross_rope
                q = apply_rope(_heads(self.linear(attn.q_proj, normed), self.head_dim), cos, sin)
                out = gqa_attention(q, cache.cross_k[idx], cache.cross_v[idx], cache.cross_mask)
            hidden = self._finish_layer(layer, out, hidden)
        return rms_norm(self.lm_expert.norm, hidden)

    # --- joint pass (training, and the uncached reference) ---------------------------------------------
    def forward_joint(self, prefix_embs: Tensor, suffix_embs: Tensor, att_2d_mask: Tensor, position_ids: Tensor) -> Tensor:
        """Prefix and action tokens through VLM and expert together, recomputing everything (no cache).

        Same math as SmolVLA's ``forward(inputs_embeds=[prefix, suffix], use_cache=False)``.

        Args:
            prefix_embs: ``(B, P, text_hidden)``.
            suffix_embs: ``(B, C, expert_hidden)``.
            att_2d_mask: ``(B, P + C, P + C)`` bool mask over the whole sequence.
            position_ids: ``(B, P + C)``.

        Returns:
            ``(B, C, expert_hidden)`` after the expert's final norm.
        """
        p_len = prefix_embs.shape[1]
        groups = self.num_attention_heads // self.num_key_value_heads
        dtype = self.vlm_layers[0].self_attn.q_proj.weight.dtype
        full_mask = additive_mask(att_2d_mask, dtype)
        mask_full = fold_mask(full_mask, groups)
        mask_prefix = fold_mask(full_mask[:, :p_len, :p_len], groups)
        mask_cross = fold_mask(full_mask[:, p_len:, :p_len], groups)
        cos, sin = rope_tables(position_ids, self.head_dim, self.rope_max_wavelength)
        cos_p, sin_p, cos_s, sin_s = cos[:, :p_len], sin[:, :p_len], cos[:, p_len:], sin[:, p_len:]
        suffix_pos = position_ids[:, p_len:]
        cos_x, sin_x = rope_tables(
            suffix_pos - suffix_pos.min(dim=1, keepdim=True).values, self.head_dim, self.rope_max_wavelength
        )
        prefix, suffix = prefix_embs, suffix_embs
        n_layers = len(self.vlm_layers)
        for idx, vlm_layer in enumerate(self.vlm_layers):
            last = idx == n_layers - 1
            expert_layer = self.expert_layer(idx)
            q, k, v = self._project_qkv(vlm_layer, prefix, need_q=not last)
            k = apply_rope(k, cos_p, sin_p)
            if expert_layer is not None and self.is_self_attn_layer(idx):
                eq, ek, ev = self._project_qkv(expert_layer, suffix)
                k_all = torch.cat([k, apply_rope(ek, cos_s, sin_s)], dim=1).transpose(1, 2)
                v_all = torch.cat([v, ev], dim=1).transpose(1, 2)
                if last:
                    # Last layer: only the action tokens' output is needed.
                    out = gqa_attention(apply_rope(eq, cos_s, sin_s), k_all, v_all, fold_mask(full_mask[:, p_len:], groups))
                    suffix = self._finish_layer(expert_layer, out, suffix)
                    break
                q_all = torch.cat([apply_rope(q, cos_p, sin_p), apply_rope(eq, cos_s, sin_s)], dim=1)
                out = gqa_attention(q_all, k_all, v_all, mask_full)
                prefix_next = self._finish_layer(vlm_layer, out[:, :p_len], prefix)
                suffix = self._finish_layer(expert_layer, out[:, p_len:], suffix)
                prefix = prefix_next
                continue
            if expert_layer is not None:
                attn = expert_layer.self_attn
                normed = rms_norm(expert_layer.input_layernorm, suffix).to(dtype=attn.q_proj.weight.dtype)
                eq = apply_rope(_heads(self.linear(attn.q_proj, normed), self.head_dim), cos_x, sin_x)
                ek, ev = self._cross_kv(expert_layer, k, v)
                suffix = self._finish_layer(expert_layer, gqa_attention(eq, ek, ev, mask_cross), suffix)
            if last:
                break
            out = gqa_attention(apply_rope(q, cos_p, sin_p), k.transpose(1, 2), v.transpose(1, 2), mask_prefix)
            prefix = self._finish_layer(vlm_layer, out, prefix)
        return rms_norm(self.lm_expert.norm, suffix)
