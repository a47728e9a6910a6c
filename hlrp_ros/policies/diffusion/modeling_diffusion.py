"""Diffusion policies: Diffusion Policy's observation encoder and conditional 1D UNet, diffusers' schedulers.

``DiffusionModel`` holds the networks with LeRobot's module names (``rgb_encoder``, ``unet``), so LeRobot's
``diffusion`` checkpoints map one to one under ``diffusion.``; ``DiffusionPolicy`` adds the normalisation
statistics, the processor, the noise scheduler and safetensors checkpoints, and implements
:class:`~hlrp_ros.policies.base.ActionExpert`:

* ``encode_prefix`` runs the encoders once per chunk: for each of the ``n_obs_steps`` observations the
  state and the image features (per camera: ResNet trunk -> spatial-softmax keypoints -> linear + ReLU) are
  concatenated and the steps flattened into ``global_cond`` ``(B, n_obs_steps * (state_dim + N * 2K))``; the
  language-conditioned form appends the pooled instruction feature (and the pooled abstract tokens);
* ``sample_chunk`` runs the scheduler loop over the UNet from the initial noise ``(B, horizon, action_dim)``
  and returns the ``n_action_steps`` actions from the current observation on, un-normalised.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from hlrp_ros.policies.base import ActionExpert, Observation
from hlrp_ros.policies.common.weights import tensor_problems
from hlrp_ros.policies.diffusion.configuration_diffusion import BACKBONES, DiffusionConfig
from hlrp_ros.policies.diffusion.processor_diffusion import DiffusionProcessor
from hlrp_ros.policies.hlrp.modeling_hlrp import CheckpointError, Normalizer, read_safetensors, resolve_dtype
from hlrp_ros.policies.hlrp.processor_hlrp import load_tokenizer

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


# --------------------------------------------------------------------------------------------------
# ResNet trunk, torchvision's layout: Sequential(conv1, bn1, relu, maxpool, layer1..layer4)
# --------------------------------------------------------------------------------------------------
def _norm2d(channels: int, group_norm: bool) -> nn.Module:
    """BatchNorm2d, or GroupNorm with ``channels // 16`` groups (LeRobot's replacement)."""
    return nn.GroupNorm(channels // 16, channels) if group_norm else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34); parameter names as torchvision's."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int, group_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = _norm2d(ch, group_norm)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = _norm2d(ch, group_norm)
        self.downsample = _shortcut(in_ch, ch, stride, group_norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 x4 convolutions with a residual (ResNet-50, torchvision v1.5)."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int, group_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = _norm2d(ch, group_norm)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = _norm2d(ch, group_norm)
        self.conv3 = nn.Conv2d(ch, ch * 4, 1, bias=False)
        self.bn3 = _norm2d(ch * 4, group_norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, ch * 4, stride, group_norm, expansion=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(in_ch: int, out_ch: int, stride: int, group_norm: bool, expansion: int = 1) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch * expansion:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch * expansion, 1, stride, bias=False),
                         _norm2d(out_ch * expansion, group_norm))


def resnet_trunk(name: str, group_norm: bool, stages: int = 4) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet without its pooling and classifier head (``children()[:-2]``), up to ``stages``.

    Returns:
        ``(trunk, out_channels)``; the whole trunk maps ``(B, 3, H, W)`` to ``(B, out_channels, ~H/32, ~W/32)``
        (``stages`` 3: ``~H/16``) and its ``state_dict`` keys are torchvision's under the Sequential's indices
        (``0`` = conv1, ``1`` = bn1, ``4``..``7`` = layer1..layer4).
    """
    kind, blocks = BACKBONES[name]
    block = BasicBlock if kind == "basic" else Bottleneck
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), _norm2d(64, group_norm),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    in_ch = 64
    for stage, (ch, n) in enumerate(zip((64, 128, 256, 512)[:stages], blocks)):
        stage_blocks = []
        for i in range(n):
            stage_blocks.append(block(in_ch, ch, 2 if (i == 0 and stage > 0) else 1, group_norm))
            in_ch = ch * block.expansion
        layers.append(nn.Sequential(*stage_blocks))
    trunk = nn.Sequential(*layers)
    for module in trunk.modules():  # torchvision's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return trunk, in_ch


def trunk_output_size(height: int, width: int, stages: int = 4) -> tuple[int, int]:
    """Feature-map size of a ResNet trunk: stride-2 conv1, maxpool and layer2..layer``stages``, each ceil(x/2)."""
    for _ in range(1 + stages):
        height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    return height, width


class SpatialSoftmax(nn.Module):
    """Keypoints of feature maps: a 1x1 conv to ``num_kp`` maps, a softmax over each, its expected (x, y).

    Coordinates run from -1 to 1 over the map's columns (x) and rows (y).
    """

    def __init__(self, in_channels: int, height: int, width: int, num_kp: int) -> None:
        super().__init__()
        self.nets = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        self.num_kp = num_kp
        # Grid built in float64 with numpy's linspace, then cast (the trained checkpoints' exact values).
        xs, ys = np.meshgrid(np.linspace(-1.0, 1.0, width), np.linspace(-1.0, 1.0, height))
        grid = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
        self.register_buffer("pos_grid", torch.from_numpy(grid).to(torch.float32))  # (H * W, 2)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, num_kp, 2)``."""
        maps = self.nets(features)
        attention = F.softmax(maps.flatten(2), dim=-1)  # (B, K, H * W)
        return attention @ self.pos_grid


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """Centre crop of ``(..., H, W)`` (torchvision's rounding of the offsets)."""
    top = int(round((x.shape[-2] - height) / 2.0))
    left = int(round((x.shape[-1] - width) / 2.0))
    return x[..., top: top + height, left: left + width]


def random_crop(x: Tensor, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
    """One random crop window for the whole ``(..., H, W)`` batch (as torchvision's RandomCrop on a batch)."""
    top = int(torch.randint(0, x.shape[-2] - height + 1, (1,), generator=generator))
    left = int(torch.randint(0, x.shape[-1] - width + 1, (1,), generator=generator))
    return x[..., top: top + height, left: left + width]


class RgbEncoder(nn.Module):
    """Image ``(B, 3, H, W)`` in model units -> feature ``(B, 2 * num_kp)``: resize?, crop, trunk, keypoints.

    The crop is random in training mode (when ``crop_is_random``) and centred in eval mode.
    """

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, channels = resnet_trunk(config.vision_backbone, config.use_group_norm, config.backbone_stages)
        height, width = trunk_output_size(*config.encoder_image_size, stages=config.backbone_stages)
        self.pool = SpatialSoftmax(channels, height, width, config.spatial_softmax_num_keypoints)
        self.feature_dim = 2 * config.spatial_softmax_num_keypoints
        self.out = nn.Linear(self.feature_dim, self.feature_dim)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor, generator: torch.Generator | None = None, film: Tensor | None = None) -> Tensor:
        """``film`` ``(B, 2 * sum(stage channels))``: per-sample FiLM of every trunk stage (see ``TextFilm``)."""
        cfg = self.config
        if cfg.resize_shape is not None and tuple(x.shape[-2:]) != cfg.resize_shape:
            x = F.interpolate(x, size=cfg.resize_shape, mode="bilinear", align_corners=False, antialias=True)
        if cfg.crop_shape is not None:
            if self.training and cfg.crop_is_random:
                x = random_crop(x, *cfg.crop_shape, generator=generator)
            else:
                x = center_crop(x, *cfg.crop_shape)
        keypoints = self.pool(self.backbone(x) if film is None else self._filmed_trunk(x, film))
        return self.relu(self.out(keypoints.flatten(1)))

    def stage_channels(self) -> list[int]:
        """Output channels of the trunk's four stages (layer1..layer4), in order."""
        return [(stage[-1].conv3 if isinstance(stage[-1], Bottleneck) else stage[-1].conv2).out_channels
                for stage in self.backbone[4:]]

    def _filmed_trunk(self, x: Tensor, film: Tensor) -> Tensor:
        x = self.backbone[:4](x)  # stem: conv1, norm, relu, maxpool
        offset = 0
        for stage in self.backbone[4:]:
            x = stage(x)
            c = x.shape[1]
            gamma, beta = film[:, offset: offset + c], film[:, offset + c: offset + 2 * c]
            x = x * (1.0 + gamma[..., None, None]) + beta[..., None, None]
            offset += 2 * c
        return x


# --------------------------------------------------------------------------------------------------
# Conditional 1D UNet with FiLM
# --------------------------------------------------------------------------------------------------
class SinusoidalPosEmb(nn.Module):
    """Diffusion step ``(B,)`` -> ``(B, dim)``: [sin, cos] of the step times ``10000 ** (-i / (dim/2 - 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device) * -(math.log(10000) / (half - 1)))
        angles = x[:, None].to(freqs.dtype) * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


#: Weights from this many values on run as one GEMM at inference on the CPU (see :func:`conv1d`).
MATMUL_MIN_WEIGHT = 1 << 18


def _gemm_path(conv: nn.Conv1d | nn.ConvTranspose1d, x: Tensor) -> bool:
    return (x.device.type == "cpu" and not torch.is_grad_enabled() and conv.groups == 1
            and conv.dilation == (1,) and conv.weight.numel() >= MATMUL_MIN_WEIGHT)


def _mm(weight: Tensor, cols: Tensor, bias: Tensor | None) -> Tensor:
    """``weight (R, K) @ cols (B, K, L) (+ bias)`` -> ``(B, R, L)`` as one 2-D GEMM."""
    b, rows, length = cols.shape
    cols = cols[0] if b == 1 else cols.transpose(0, 1).reshape(rows, b * length)  # (K, B * L)
    out = torch.mm(weight, cols) if bias is None else torch.addmm(bias[:, None], weight, cols)
    return out[None] if b == 1 else out.reshape(-1, b, length).transpose(0, 1)


def conv1d(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """``conv(x)`` for an ``nn.Conv1d`` on ``(B, C_in, T)``; on the CPU without autograd as one matmul.

    At batch 1 the UNet's convolutions are matrix-vector-like (T of 4..64 columns against weights of up to
    2048 x 2048 x 5): oneDNN's convolution then runs several times slower than a plain GEMM of the weight,
    viewed as ``(C_out, C_in * k)``, with the im2col'ed input ``(C_in * k, T_out)``. Same maths; the sums
    are only associated differently (float32 rounding). Small weights (below ``MATMUL_MIN_WEIGHT`` values)
    keep the convolution, which is faster there.
    """
    if not _gemm_path(conv, x) or not isinstance(conv.padding, tuple):
        return conv(x)
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if k == 1 and stride == 1 and pad == 0:
        cols = x
    else:
        cols = F.pad(x, (pad, pad)).unfold(2, k, stride)  # (B, C_in, T_out, k)
        cols = cols.transpose(2, 3).reshape(x.shape[0], -1, cols.shape[2])  # (B, C_in * k, T_out), k fastest
    return _mm(conv.weight.reshape(conv.out_channels, -1), cols, conv.bias)


def conv_transpose1d(conv: nn.ConvTranspose1d, x: Tensor) -> Tensor:
    """``conv(x)`` for an ``nn.ConvTranspose1d``; on the CPU without autograd as one GEMM and an overlap-add.

    ``cols = W^T x`` gives every input step's ``k`` output contributions ``(C_out * k, T)``; ``fold`` adds
    them at stride ``s`` into ``(T - 1) * s + k`` steps, and ``padding`` is cropped from both ends.
    """
    if not _gemm_path(conv, x) or conv.output_padding != (0,):
        return conv(x)
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    cols = _mm(conv.weight.reshape(conv.in_channels, -1).t(), x, None)  # (B, C_out * k, T)
    full = (x.shape[2] - 1) * stride + k
    out = F.fold(cols, output_size=(1, full), kernel_size=(1, k), stride=(1, stride))[:, :, 0]
    out = out[:, :, pad: full - pad]
    return out if conv.bias is None else out + conv.bias[:, None]


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, on ``(B, C, T)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, out_ch), nn.Mish())

    def forward(self, x: Tensor) -> Tensor:
        return self.block[2](self.block[1](conv1d(self.block[0], x)))


class ConditionalResidualBlock1d(nn.Module):
    """Two conv blocks; between them FiLM from the conditioning vector (scale and bias, or bias only)."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int,
                 use_film_scale_modulation: bool) -> None:
        super().__init__()
        self.out_channels = out_ch
        self.use_film_scale_modulation = use_film_scale_modulation
        self.conv1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out_ch * (2 if use_film_scale_modulation
                                                                                     else 1)))
        self.conv2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.residual_conv = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def film_table(self, step_embed: Tensor, global_cond: Tensor) -> Tensor:
        """FiLM vectors of every (step, sample): ``(S, step_dim)``, ``(B, G)`` -> ``(S, B, out_ch or 2 out_ch)``.

        ``Linear(Mish([e, g]))`` split as ``W_e Mish(e) + (W_g Mish(g) + b)`` (Mish is elementwise), so the
        global part is computed once per chunk and the step part once per timestep.
        """
        linear = self.cond_encoder[1]
        dim = step_embed.shape[-1]
        per_step = F.mish(step_embed) @ linear.weight[:, :dim].t()  # (S, C')
        per_sample = F.linear(F.mish(global_cond), linear.weight[:, dim:], linear.bias)  # (B, C')
        return per_step[:, None] + per_sample[None]

    def forward(self, x: Tensor, cond: Tensor, film: Tensor | None = None) -> Tensor:
        """``x`` ``(B, in_ch, T)``, ``cond`` ``(B, cond_dim)`` (or a precomputed ``film`` ``(B, C')``) ->
        ``(B, out_ch, T)``."""
        out = self.conv1(x)
        film = (self.cond_encoder(cond) if film is None else film)[..., None]  # (B, out_ch or 2 out_ch, 1)
        if self.use_film_scale_modulation:
            out = film[:, : self.out_channels] * out + film[:, self.out_channels:]
        else:
            out = out + film
        residual = x if isinstance(self.residual_conv, nn.Identity) else conv1d(self.residual_conv, x)
        return self.conv2(out) + residual


class ConditionalUnet1d(nn.Module):
    """Denoiser over action trajectories: ``(B, T, A)``, step ``(B,)``, ``global_cond`` -> ``(B, T, A)``.

    Encoder stages (two residual blocks, then a stride-2 conv except after the last), two middle blocks,
    decoder stages (skip concatenation, two residual blocks, a transposed conv), a final conv block and a
    1x1 projection. Every residual block is FiLM-conditioned on [step embedding, global_cond].
    """

    def __init__(self, config: DiffusionConfig, global_cond_dim: int) -> None:
        super().__init__()
        dim = config.diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dim), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))
        cond_dim = dim + global_cond_dim
        dims = [config.action_dim, *config.down_dims]
        stages = list(zip(dims[:-1], dims[1:]))

        def block(i: int, o: int) -> ConditionalResidualBlock1d:
            return ConditionalResidualBlock1d(i, o, cond_dim, config.kernel_size, config.n_groups,
                                              config.use_film_scale_modulation)

        self.down_modules = nn.ModuleList(
            nn.ModuleList([block(i, o), block(o, o),
                           nn.Conv1d(o, o, 3, 2, 1) if k < len(stages) - 1 else nn.Identity()])
            for k, (i, o) in enumerate(stages))
        mid = config.down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up_modules = nn.ModuleList(
            nn.ModuleList([block(i * 2, o), block(o, o), nn.ConvTranspose1d(o, o, 4, 2, 1)])
            for o, i in reversed(stages[1:]))
        self.final_conv = nn.Sequential(
            Conv1dBlock(config.down_dims[0], config.down_dims[0], config.kernel_size),
            nn.Conv1d(config.down_dims[0], config.action_dim, 1))

    def residual_blocks(self) -> list[ConditionalResidualBlock1d]:
        """The FiLM residual blocks in the order :meth:`forward` runs them."""
        blocks = [b for stage in self.down_modules for b in stage[:2]] + list(self.mid_modules)
        return blocks + [b for stage in self.up_modules for b in stage[:2]]

    def film_tables(self, timesteps: Tensor, global_cond: Tensor) -> list[Tensor]:
        """Per residual block, the FiLM vectors of every timestep: ``(S, B, C')`` (once per chunk)."""
        embed = self.step_embedding(timesteps)  # (S, step_dim)
        return [block.film_table(embed, global_cond) for block in self.residual_blocks()]

    def step_embedding(self, timesteps: Tensor) -> Tensor:
        """``diffusion_step_encoder``: the sinusoid (float32) cast to the MLP's dtype (bfloat16 networks too)."""
        sinusoid, *mlp = self.diffusion_step_encoder
        x = sinusoid(timesteps).to(mlp[0].weight.dtype)
        for layer in mlp:
            x = layer(x)
        return x

    def forward(self, x: Tensor, timestep: Tensor, global_cond: Tensor, films: list[Tensor] | None = None
                ) -> Tensor:
        """``x`` ``(B, T, A)``; ``films`` (this step's rows of :meth:`film_tables`) replaces the conditioning."""
        cond = None if films is not None else torch.cat([self.step_embedding(timestep), global_cond], -1)
        film = iter(films if films is not None else [None] * len(self.residual_blocks()))
        x = x.transpose(1, 2)  # (B, A, T)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res1(x, cond, next(film))
            x = res2(x, cond, next(film))
            skips.append(x)
            x = x if isinstance(down, nn.Identity) else conv1d(down, x)
        for res in self.mid_modules:
            x = res(x, cond, next(film))
        for res1, res2, up in self.up_modules:
            x = res1(torch.cat([x, skips.pop()], dim=1), cond, next(film))
            x = conv_transpose1d(up, res2(x, cond, next(film)))
        return self.final_conv(x).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# Language: a small trainable transformer over instruction tokens, and abstract-token embeddings
# --------------------------------------------------------------------------------------------------
def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``(B, L, D)`` over real tokens (``mask`` ``(B, L)``); zeros for rows without any."""
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Instruction tokens ``(B, L)`` -> pooled feature ``(B, text_feature_dim)``.

    Token + learned position embeddings, ``text_num_layers`` pre-norm transformer layers (padding masked),
    a final LayerNorm, the mean over real tokens and a linear projection.
    """

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        width = config.text_hidden_size
        self.token_embedding = nn.Embedding(config.text_vocab_size, width)
        self.position_embedding = nn.Embedding(config.tokenizer_max_length, width)
        layer = nn.TransformerEncoderLayer(width, config.text_num_heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.text_num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, config.text_feature_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)[None]
        # Rows without a real token attend to everything (their pooled feature is then zero anyway).
        padding = ~mask & mask.any(dim=1, keepdim=True)
        x = self.norm(self.layers(x, src_key_padding_mask=padding))
        return self.proj(masked_mean(x, mask))


class AbstractTokenEncoder(nn.Module):
    """Abstract action token ids ``(B, L)`` -> ``(B, abstract_feature_dim)``: embedding, masked mean, linear."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.abstract_vocab_size, config.abstract_feature_dim)
        self.proj = nn.Linear(config.abstract_feature_dim, config.abstract_feature_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.proj(masked_mean(self.embedding(ids), mask))


# --------------------------------------------------------------------------------------------------
# Networks and policy
# --------------------------------------------------------------------------------------------------
class TextFilm(nn.Module):
    """Pooled text feature ``(B, D)`` -> FiLM ``(gamma, beta)`` of each trunk stage, ``(B, 2 * sum(channels))``.

    Zero-initialised, so a model gains it as the identity (a checkpoint trained without it still computes the
    same function until training moves it).
    """

    def __init__(self, text_dim: int, channels: list[int]) -> None:
        super().__init__()
        self.proj = nn.Linear(text_dim, 2 * sum(channels))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, text: Tensor) -> Tensor:
        return self.proj(text)


class DiffusionModel(nn.Module):
    """The networks: image encoder(s), optional text / abstract-token encoders and the UNet.

    All inputs are model-space (normalised) tensors.
    """

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        n_cams = config.num_cameras
        if config.use_separate_rgb_encoder_per_camera:
            self.rgb_encoder: nn.Module = nn.ModuleList(RgbEncoder(config) for _ in range(n_cams))
            feature_dim = self.rgb_encoder[0].feature_dim
        else:
            self.rgb_encoder = RgbEncoder(config)
            feature_dim = self.rgb_encoder.feature_dim
        cond_dim = (config.state_dim + n_cams * feature_dim) * config.n_obs_steps
        if config.language_conditioned:
            self.text_encoder = TextEncoder(config)
            cond_dim += config.text_feature_dim
        if config.text_film_vision:
            first = self.rgb_encoder[0] if isinstance(self.rgb_encoder, nn.ModuleList) else self.rgb_encoder
            self.vision_film = TextFilm(config.text_feature_dim, first.stage_channels())
        if config.abstract_tokens_enabled:
            self.abstract_encoder = AbstractTokenEncoder(config)
            cond_dim += config.abstract_feature_dim
        self.global_cond_dim = cond_dim
        self.unet = ConditionalUnet1d(config, global_cond_dim=cond_dim)

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None,
                      film: Tensor | None = None) -> Tensor:
        """``(B, S, N, 3, H, W)`` -> ``(B, S, N * feature_dim)`` (cameras concatenated in order).

        ``film`` ``(B, F)``: the trunk FiLM of each sample, applied to all its frames and cameras.
        """
        b, s, n = images.shape[:3]
        if isinstance(self.rgb_encoder, nn.ModuleList):
            per_frame = None if film is None else film.repeat_interleave(s, dim=0)
            feats = [enc(images[:, :, i].flatten(0, 1), generator, per_frame).reshape(b, s, -1)
                     for i, enc in enumerate(self.rgb_encoder)]
            return torch.cat(feats, dim=-1)
        per_image = None if film is None else film.repeat_interleave(s * n, dim=0)
        feats = self.rgb_encoder(images.flatten(0, 2), generator, per_image)  # (B * S * N, D)
        return feats.reshape(b, s, -1)

    def global_conditioning(self, batch: dict[str, Tensor], generator: torch.Generator | None = None,
                            encode_images: Callable[..., Tensor] | None = None) -> Tensor:
        """Normalised ``state`` ``(B, S, D)``, ``images`` ``(B, S, N, 3, H, W)`` (+ tokens) -> ``(B, cond_dim)``.

        ``encode_images``: a compiled :meth:`encode_images` to use instead (inference).
        """
        text = (self.text_encoder(batch["lang_tokens"], batch["lang_masks"])
                if self.config.language_conditioned else None)
        film = self.vision_film(text) if self.config.text_film_vision else None
        encode = encode_images or self.encode_images
        per_step = torch.cat([batch["state"], encode(batch["images"], generator, film)], dim=-1)
        parts = [per_step.flatten(1)]
        if text is not None:
            parts.append(text)
        if self.config.abstract_tokens_enabled:
            parts.append(self.abstract_encoder(batch["abstract_tokens"], batch["abstract_masks"]))
        return torch.cat(parts, dim=-1)


def make_noise_scheduler(config: DiffusionConfig):
    """The diffusers scheduler of ``config.noise_scheduler_type`` with the config's schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = {"DDPM": DDPMScheduler, "DDIM": DDIMScheduler}[config.noise_scheduler_type]
    return cls(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
               beta_end=config.beta_end, beta_schedule=config.beta_schedule, clip_sample=config.clip_sample,
               clip_sample_range=config.clip_sample_range, prediction_type=config.prediction_type)


def compile_for_inference(fn: Callable[..., Tensor], backend: bool | str) -> Callable[..., Tensor]:
    """``fn`` through ``torch.compile(fullgraph=True, dynamic=False)`` for inference.

    ``backend`` True is inductor with freezing: the weights become constants, folded and prepacked for the
    CPU's convolution and GEMM kernels, and the norms and activations between them fuse into generated
    kernels. Measured on the tiny diffusion checkpoint (one loaded core): UNet step 2.1 vs 3.1 ms eager,
    image encoder 9.9 vs 27 ms. Freezing captures the weights as they are when the first call compiles:
    recompile after changing them (``DiffusionPolicy.set_execution`` again). Another backend's name
    (``"aot_eager"``) compiles without generating kernels (tests).
    """
    if backend is not True:
        return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)

    def frozen(*args, **kwargs):
        # Compilation happens at a call (the first, or a new shape), so freezing must be on around every call.
        # Passing it as torch.compile(options=...) did not freeze (measured: no prepacked kernels, slower).
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return frozen


@dataclass(frozen=True)
class InferenceFunctions:
    """What a chunk runs the networks with: eager, or compiled by :func:`compile_for_inference`.

    Kept outside the module tree (a compiled module is a module too, and would enter the state dict).
    """

    compiled: bool | str
    encode_images: Callable[..., Tensor]
    denoise: Callable[..., Tensor]

    @classmethod
    def of(cls, model: DiffusionModel, compile: bool | str) -> InferenceFunctions:
        if not compile:
            return cls(False, model.encode_images, model.unet)
        # torch.compile keeps its compiled code on the function's code object, and its guards pass after an
        # in-place weight load (same tensors): code with the old weights frozen in would run. Drop it, so the
        # first call compiles against the weights of now (other diffusion policies of this process recompile).
        for code in (DiffusionModel.encode_images.__code__, ConditionalUnet1d.forward.__code__):
            torch._dynamo.reset_code(code)
        return cls(compile, compile_for_inference(model.encode_images, compile),
                   compile_for_inference(model.unet.forward, compile))


@dataclass
class DiffusionPrefix:
    """An encoded observation batch: the UNet's global conditioning, computed once per chunk.

    Attributes:
        global_cond: ``(B, global_cond_dim)``.
        batched: False when built from a single observation (sample_chunk then returns ``(C, A)``).
        truncated: Whether an instruction was truncated.
    """

    global_cond: Tensor
    batched: bool = True
    truncated: bool = False


class DiffusionPolicy(nn.Module, ActionExpert):
    """A diffusion action expert: networks, normalisation, processor, scheduler and checkpoints.

    Args:
        config: Sizes and knobs.
        tokenizer: Instruction tokenizer (needed when ``config.language_conditioned``).
    """

    def __init__(self, config: DiffusionConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__()
        if config.language_conditioned and tokenizer is None:
            raise ValueError("a language-conditioned diffusion policy needs a tokenizer")
        self.config = config
        self.diffusion = DiffusionModel(config)
        # One (3,) statistic per camera, concatenated in camera order: (num_cameras * 3,).
        self.normalize_image = Normalizer(3 * config.num_cameras, config.image_norm_mode, config.norm_eps)
        self.normalize_state = Normalizer(config.state_dim, config.state_norm_mode, config.norm_eps)
        self.normalize_action = Normalizer(config.action_dim, config.action_norm_mode, config.norm_eps)
        self.processor = DiffusionProcessor(config, tokenizer if config.language_conditioned else None)
        self.noise_scheduler = make_noise_scheduler(config)
        self._inference = InferenceFunctions.of(self.diffusion, compile=False)
        self.eval()

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.diffusion.unet.final_conv[1].weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the networks."""
        return self.diffusion.unet.final_conv[1].weight.dtype

    def to_device_dtype(self, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
                        ) -> DiffusionPolicy:
        """Moves to ``device`` and casts the networks to ``dtype`` (normalisation stays float32)."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        self.to(device=device)
        self.diffusion.to(dtype=resolve_dtype(dtype))
        self.set_execution(compile=self._inference.compiled)  # compiled code holds the old device's and dtype's weights
        return self

    def set_execution(self, compile: bool | str = False, cuda_graphs: bool = False) -> None:
        """Compiled inference (``compile``: True for inductor with frozen weights, or a ``torch.compile``
        backend's name; False: eager): the image encoder and the UNet step, at the shapes of the first call
        (another batch or image size compiles again). The instruction's encoder stays eager (under a
        millisecond), so a new instruction never recompiles. The first chunk after this compiles (tens of
        seconds on a CPU); the actions equal the eager ones within float tolerance. Loading weights or moving
        the policy compiles again.
        """
        if cuda_graphs:
            raise NotImplementedError(f"{type(self).__name__} has no CUDA-graph path: set cuda_graphs false "
                                      f"(compile works on every device)")
        self._inference = InferenceFunctions.of(self.diffusion, compile)

    # --- inputs -------------------------------------------------------------------------------------------
    def _model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Moves a collated batch to the device and normalises images, states (and actions)."""
        device, dtype = self.device, self.dtype
        images = batch["images"].to(device)  # (B, S, N, 3, H, W)
        if self.config.image_norm_mode != "identity":
            channels_last = images.permute(0, 1, 4, 5, 2, 3).flatten(-2)  # (B, S, H, W, N * 3)
            images = self.normalize_image(channels_last).unflatten(-1, images.shape[2:4]).permute(0, 1, 4, 5, 2, 3)
        # Contiguous (channels-first): the permutes above leave channels-last strides, and a convolution
        # given those runs oneDNN's channels-last path, several times slower here.
        out = {"images": images.to(dtype).contiguous(), "state": self.normalize_state(batch["state"].to(device)).to(dtype)}
        for key in ("lang_tokens", "lang_masks", "abstract_tokens", "abstract_masks"):
            if key in batch:
                out[key] = batch[key].to(device)
        if "actions" in batch:
            out["actions"] = self.normalize_action(batch["actions"].to(device)).to(dtype)
        return out

    # --- ActionExpert -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prefix(self, observation: Observation | list[Observation]) -> DiffusionPrefix:
        """Encodes one observation (or a list), each with its ``history``, into the global conditioning."""
        batched = isinstance(observation, list | tuple)
        observations = list(observation) if batched else [observation]
        batch = self.processor.collate(observations)
        truncated = self.config.language_conditioned and any(
            self.processor.tokenize(o.instruction).truncated for o in observations)
        global_cond = self.diffusion.global_conditioning(self._model_inputs(batch), encode_images=self._inference.encode_images)
        return DiffusionPrefix(global_cond=global_cond, batched=batched, truncated=truncated)

    def _initial_noise(self, batch_size: int, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        shape = (batch_size, self.config.horizon, self.config.action_dim)
        if noise is None:
            return torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        noise = noise.to(self.device, self.dtype)
        if noise.ndim == 2:
            noise = noise[None]
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape[1:]} or {shape}, got {tuple(noise.shape)}")
        return noise

    @torch.no_grad()
    def sample_chunk(
        self,
        prefix: DiffusionPrefix,
        num_steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Runs the scheduler loop; un-normalised float32 CPU actions ``(n_action_steps, A)`` (or batched).

        Args:
            prefix: From :meth:`encode_prefix`.
            num_steps: Denoising steps (None -> ``config.num_steps``).
            noise: Initial noise ``(horizon, A)`` or ``(B, horizon, A)``; with it DDIM is deterministic.
            generator: Draws the initial noise when none is given, and DDPM's noise of every step.
        """
        steps = int(num_steps or self.config.num_steps)
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.config.num_train_timesteps}], got {steps}")
        cond = prefix.global_cond
        sample = self._initial_noise(cond.shape[0], noise, generator)
        scheduler = self.noise_scheduler
        scheduler.set_timesteps(steps, device=sample.device)
        # The FiLM conditioning of every step at once: per step only the UNet's convolutions remain.
        tables = self.diffusion.unet.film_tables(scheduler.timesteps, cond.to(self.dtype))
        for i, t in enumerate(scheduler.timesteps):
            model_output = self._inference.denoise(sample, t, cond, films=[table[i] for table in tables])
            sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
        start = self.config.n_obs_steps - 1
        actions = sample[:, start: start + self.config.n_action_steps]
        actions = self.normalize_action.inverse(actions).cpu()
        return actions if prefix.batched else actions[0]

    def reset(self) -> None:
        """Nothing is kept between chunks (the history travels with the observation)."""

    # --- training -----------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Mean denoising loss of a batch from ``processor.collate(observations, actions)`` (raw units).

        The target is the noise (``epsilon``) or the clean trajectory (``sample``); with ``action_is_pad``
        ``(B, horizon)`` padded steps are left out.
        """
        inputs = self._model_inputs(batch)
        cond = self.diffusion.global_conditioning(inputs, generator)
        trajectory = inputs["actions"]
        eps = torch.randn(trajectory.shape, generator=generator, device=trajectory.device, dtype=trajectory.dtype)
        t = torch.randint(0, self.config.num_train_timesteps, (trajectory.shape[0],), generator=generator,
                          device=trajectory.device)
        noisy = self.noise_scheduler.add_noise(trajectory, eps, t)
        pred = self.diffusion.unet(noisy, t, cond)
        target = eps if self.config.prediction_type == "epsilon" else trajectory
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
        if "action_is_pad" in batch:
            keep = (~batch["action_is_pad"].to(loss.device))[..., None].to(loss.dtype)
            return (loss * keep).sum() / (keep.sum() * loss.shape[-1]).clamp_min(1)
        return loss.mean()

    # --- statistics and checkpoints -----------------------------------------------------------------------
    def set_normalization_stats(self, image: dict | None = None, state: dict | None = None,
                                action: dict | None = None) -> None:
        """Stores normalisation statistics (``mean``/``std`` and/or ``min``/``max``).

        Image statistics are ``(num_cameras * 3,)``: each camera's per-channel values, in camera order.
        """
        for normalizer, stats in ((self.normalize_image, image), (self.normalize_state, state),
                                  (self.normalize_action, action)):
            if stats:
                normalizer.set_stats(stats)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``config.json``, ``model.safetensors`` (weights + statistics) and ``tokenizer/`` if any."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "type": "hlrp_diffusion"})
        if self.processor.tokenizer is not None:
            self.processor.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "float32", tokenizer_dir: str | Path | None = None
                        ) -> DiffusionPolicy:
        """Loads a checkpoint written by :meth:`save_pretrained` (safetensors only, strict)."""
        directory = Path(directory)
        config = DiffusionConfig.load(directory)
        tokenizer = None
        if config.language_conditioned:
            tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else directory / TOKENIZER_DIR
            if not tok_dir.is_dir():
                raise FileNotFoundError(f"no tokenizer directory at {tok_dir}")
            tokenizer = load_tokenizer(tok_dir)
        policy = cls(config, tokenizer=tokenizer)
        policy.load_weights(directory / WEIGHTS_NAME)
        return policy.to_device_dtype(device, dtype).eval()

    def load_weights(self, path: str | Path, tensors: dict[str, Tensor] | None = None) -> None:
        """Loads ``model.safetensors`` (or ``tensors``) strictly; errors name the offending tensor."""
        path = Path(path)
        if tensors is None:
            if not path.is_file():
                raise FileNotFoundError(f"weights file {path} not found")
            tensors = read_safetensors(path)
        problems = tensor_problems(self.state_dict(), tensors, check_finite=True)
        if problems:
            raise CheckpointError(f"{path}: " + "; ".join(problems))
        self.load_state_dict(tensors, strict=True)
        self.set_execution(compile=self._inference.compiled)  # frozen weights are the old ones
