#!/usr/bin/env python3
"""Generate the LeRobot Diffusion Policy parity fixtures.

Runs ONLY in a separate venv where LeRobot 0.6.1 is installed, e.g.::

    python3.12 -m venv /work/lerobot061
    /work/lerobot061/bin/pip install "lerobot[diffusion]==0.6.1"
    /work/lerobot061/bin/python scripts/make_lerobot_diffusion_fixtures.py            # (re)write the fixtures
    /work/lerobot061/bin/python scripts/make_lerobot_diffusion_fixtures.py --check    # regenerate, compare

Everything is offline (``pretrained_backbone_weights=None``). Two tiny checkpoints cover the acceptance
matrix, both with ``n_obs_steps=2``:

* ``ddim``: two cameras with separate encoders, resize + crop, BatchNorm trunk (non-trivial running
  statistics), epsilon prediction, clip_sample, FiLM scale and bias, MEAN_STD images, MIN_MAX state/action;
* ``ddpm``: one camera, crop only, GroupNorm trunk, shared encoder, sample prediction, FiLM bias only,
  linear betas, MEAN_STD state/action. DDPM adds noise at every step: LeRobot draws it from torch's global
  generator (``torch.manual_seed(seed)`` right before ``predict_action_chunk``); hlrp_ros draws it from a
  ``torch.Generator`` seeded the same way, which yields the same numbers.

Even the tiny policies carry a full ResNet-18 trunk (11 M parameters, 45 MB as float32). Its weights are
therefore a seeded random tile of a prime length (1009 values) repeated over each tensor, scaled per
tensor: no tile boundary lines up with a tensor dimension, so a wrongly mapped or transposed tensor still
changes the output, and ``model.safetensors`` (exactly the file LeRobot writes) is stored gzip-compressed
(``model.safetensors.gz``, well under 1 MB); the tests decompress it into a temporary directory.

Layout under ``test/fixtures/lerobot_diffusion/``::

    <name>/checkpoint/   config.json, model.safetensors.gz, policy_{pre,post}processor.json + statistics
    <name>/cases.safetensors   uint8 images (B, S, H, W, 3) per camera, states (B, S, D), noise, LeRobot
                               action chunks (B, n_action_steps, A) per step count
    cases.json           per checkpoint: seeds, batch size, cameras, step counts, versions

LeRobot is never a runtime dependency of hlrp_ros; this script only produces reference data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import lerobot
    import torch
    from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
except ImportError as exc:  # pragma: no cover - depends on the venv
    sys.exit(f"make_lerobot_diffusion_fixtures.py needs LeRobot 0.6.1 with the diffusion extra ({exc}); run it "
             "with the separate LeRobot venv (see the module docstring).")

import numpy as np
from safetensors.torch import load_file, save_file

LOG = logging.getLogger("make_lerobot_diffusion_fixtures")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "test" / "fixtures" / "lerobot_diffusion"
TILE = 1009

SPECS: dict[str, dict] = {
    "ddim": {
        "seed": 10,
        "cameras": ["top", "wrist"],
        "image_hw": (40, 48),
        "state_dim": 5,
        "action_dim": 4,
        "norm_map": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
        "policy": dict(n_obs_steps=2, horizon=8, n_action_steps=4, resize_shape=(36, 44), crop_ratio=0.9,
                       use_group_norm=False, use_separate_rgb_encoder_per_camera=True,
                       spatial_softmax_num_keypoints=8, down_dims=(16, 32), kernel_size=3, n_groups=4,
                       diffusion_step_embed_dim=16, use_film_scale_modulation=True, noise_scheduler_type="DDIM",
                       num_train_timesteps=100, num_inference_steps=10, prediction_type="epsilon",
                       clip_sample=True, clip_sample_range=1.0),
        "batch_size": 2,
        "step_counts": [10, 3],
    },
    "ddpm": {
        "seed": 20,
        "cameras": ["top"],
        "image_hw": (32, 32),
        "state_dim": 3,
        "action_dim": 2,
        "norm_map": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        "policy": dict(n_obs_steps=2, horizon=16, n_action_steps=8, crop_shape=(28, 28), crop_is_random=True,
                       use_group_norm=True, use_separate_rgb_encoder_per_camera=False,
                       spatial_softmax_num_keypoints=4, down_dims=(16, 32, 64), kernel_size=5, n_groups=8,
                       diffusion_step_embed_dim=32, use_film_scale_modulation=False, noise_scheduler_type="DDPM",
                       num_train_timesteps=50, beta_schedule="linear", num_inference_steps=None,
                       prediction_type="sample", clip_sample=True, clip_sample_range=1.5),
        "batch_size": 2,
        "step_counts": [50, 10],
    },
}


def tile_like(shape: torch.Size, gen: torch.Generator, scale: float, offset: float = 0.0) -> torch.Tensor:
    """A seeded random tile of TILE values repeated over ``shape``, times ``scale``, plus ``offset``."""
    tile = torch.randn(TILE, generator=gen)
    n = int(np.prod(shape)) if len(shape) else 1
    values = tile.repeat(n // TILE + 1)[:n].reshape(shape)
    return values * scale + offset


def fill_weights_(policy: torch.nn.Module, seed: int) -> None:
    """Every parameter and BatchNorm statistic: a scaled tile (norm weights and variances around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(policy.state_dict(keep_vars=True).items()):
            if not t.is_floating_point():
                continue
            if t.ndim >= 2:
                fan_in = int(np.prod(t.shape[1:])) if t.ndim > 2 or "conv" in name else t.shape[1]
                value = tile_like(t.shape, gen, (1.0 / max(1, fan_in)) ** 0.5)
            elif name.endswith("running_var"):
                value = tile_like(t.shape, gen, 0.1).abs() + 0.5
            elif name.endswith("pos_grid"):
                continue
            elif name.endswith("weight"):  # norm scales
                value = tile_like(t.shape, gen, 0.1, 1.0)
            else:  # biases and running means
                value = tile_like(t.shape, gen, 0.05)
            t.copy_(value)


def make_stats(dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Dataset-like statistics of one vector feature."""
    mean = torch.randn(dim, generator=gen) * 0.5
    std = torch.rand(dim, generator=gen) * 0.8 + 0.2
    lo = mean - 2.0 * std - torch.rand(dim, generator=gen) * 0.1
    hi = mean + 2.0 * std + torch.rand(dim, generator=gen) * 0.1
    return {"mean": mean, "std": std, "min": lo, "max": hi, "count": torch.tensor([1000])}


def build_checkpoint(ckpt: Path, spec: dict) -> None:
    """A LeRobot DiffusionPolicy with tiled weights, saved with its processors the LeRobot way."""
    torch.manual_seed(spec["seed"])
    h, w = spec["image_hw"]
    inputs = {f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, h, w))
              for c in spec["cameras"]}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(spec["state_dim"],))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(spec["action_dim"],))}
    cfg = DiffusionConfig(input_features=inputs, output_features=outputs, pretrained_backbone_weights=None,
                          device="cpu", push_to_hub=False,
                          normalization_mapping={k: NormalizationMode(v) for k, v in spec["norm_map"].items()},
                          **spec["policy"])
    policy = DiffusionPolicy(cfg)
    fill_weights_(policy, spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    stats = {"observation.state": make_stats(spec["state_dim"], gen), "action": make_stats(spec["action_dim"], gen)}
    for c in spec["cameras"]:
        stats[f"observation.images.{c}"] = {"mean": torch.rand(3, 1, 1, generator=gen) * 0.2 + 0.4,
                                            "std": torch.rand(3, 1, 1, generator=gen) * 0.1 + 0.2,
                                            "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    ckpt.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(ckpt)
    pre.save_pretrained(ckpt)
    post.save_pretrained(ckpt)


def load_lerobot(ckpt: Path):
    """Policy + processors from disk, as a LeRobot user loads them."""
    policy = DiffusionPolicy.from_pretrained(str(ckpt)).eval()
    pre = PolicyProcessorPipeline.from_pretrained(str(ckpt), config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(str(ckpt), config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    return policy, pre, post


def lerobot_chunk(policy, pre, post, images: dict[str, np.ndarray], state: np.ndarray, noise: torch.Tensor,
                  num_steps: int, seed: int) -> torch.Tensor:
    """LeRobot's preprocessor -> predict_action_chunk(noise) -> postprocessor on a history batch.

    Args:
        images: camera -> uint8 ``(B, S, H, W, 3)`` (float / 255, CHW as LeRobot's inference helpers do).
        state: ``(B, S, state_dim)``.
        noise: ``(B, horizon, action_dim)`` initial noise.
        seed: Seeds torch's global generator right before sampling (DDPM's per-step noise).
    """
    batch = {f"observation.images.{c}": torch.from_numpy(v).float().div(255.0).permute(0, 1, 4, 2, 3).contiguous()
             for c, v in images.items()}
    batch["observation.state"] = torch.from_numpy(state).float()
    policy.diffusion.num_inference_steps = int(num_steps)
    policy.reset()
    processed = pre(batch)
    torch.manual_seed(seed)
    with torch.no_grad():
        actions = policy.predict_action_chunk(processed, noise=noise.clone())
    return post(actions)


def generate(out: Path) -> None:
    """Writes every checkpoint and its cases under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"lerobot_version": lerobot.__version__, "torch_version": torch.__version__, "fixtures": {}}
    for name, spec in SPECS.items():
        ckpt = out / name / "checkpoint"
        build_checkpoint(ckpt, spec)
        policy, pre, post = load_lerobot(ckpt)
        rng = np.random.default_rng(spec["seed"])
        b, s = spec["batch_size"], spec["policy"]["n_obs_steps"]
        h, w = spec["image_hw"]
        tensors: dict[str, torch.Tensor] = {}
        images = {}
        for c in spec["cameras"]:
            yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
            base = np.stack([yy, xx, 0.5 * (yy + xx)], axis=-1)[None, None] * 200.0
            images[c] = np.clip(base + rng.normal(0, 40, size=(b, s, h, w, 3)), 0, 255).astype(np.uint8)
            tensors[f"images.{c}"] = torch.from_numpy(images[c])
        state = rng.normal(0, 1, size=(b, s, spec["state_dim"])).astype(np.float32)
        tensors["state"] = torch.from_numpy(state)
        noise = torch.randn(b, spec["policy"]["horizon"], spec["action_dim"],
                            generator=torch.Generator().manual_seed(spec["seed"] + 2))
        tensors["noise"] = noise
        for n in spec["step_counts"]:
            tensors[f"actions.steps{n}"] = lerobot_chunk(policy, pre, post, images, state, noise, n,
                                                         seed=spec["seed"] + 3).contiguous()
        save_file(tensors, str(out / name / "cases.safetensors"))
        weights = ckpt / "model.safetensors"
        with weights.open("rb") as src, gzip.GzipFile(ckpt / "model.safetensors.gz", "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
        weights.unlink()
        meta["fixtures"][name] = {"seed": spec["seed"], "batch_size": b, "n_obs_steps": s,
                                  "cameras": spec["cameras"], "image_hw": list(spec["image_hw"]),
                                  "step_counts": spec["step_counts"], "sampling_seed": spec["seed"] + 3,
                                  "scheduler": spec["policy"]["noise_scheduler_type"]}
    (out / "cases.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    LOG.info("wrote %s (%.2f MB)", out, total / 1e6)


def compare_trees(ref: Path, new: Path, atol: float = 1e-6) -> list[str]:
    """Differences between two fixture trees: JSON exactly, tensors within ``atol``."""
    problems = []
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    new_files = sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    if files != new_files:
        return [f"file lists differ: {sorted(set(files) ^ set(new_files))}"]
    for rel in files:
        a, b = ref / rel, new / rel
        if rel.suffix == ".json":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            if rel.name == "cases.json":
                for j in (ja, jb):
                    j.pop("torch_version", None)
            if ja != jb:
                problems.append(f"{rel}: JSON differs")
        elif rel.name.endswith(".safetensors") or rel.name.endswith(".safetensors.gz"):
            if rel.name.endswith(".gz"):
                ta = _load_gz(a)
                tb = _load_gz(b)
            else:
                ta, tb = load_file(str(a)), load_file(str(b))
            if set(ta) != set(tb):
                problems.append(f"{rel}: tensor names differ")
                continue
            for key in ta:
                if ta[key].shape != tb[key].shape or not torch.allclose(ta[key].double(), tb[key].double(), atol=atol):
                    problems.append(f"{rel}:{key} differs")
    return problems


def _load_gz(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(gzip.decompress(path.read_bytes()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="regenerate in a temporary directory and compare")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.check:
        if args.out.exists():
            shutil.rmtree(args.out)
        generate(args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "fixtures")
        problems = compare_trees(args.out, Path(tmp) / "fixtures")
    for p in problems:
        LOG.error(p)
    LOG.info("check: %s", "OK" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
