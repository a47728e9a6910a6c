#!/usr/bin/env python3
"""Do a diffusion policy's image features know where the demo world's targets are? Linear probes.

    env/run.sh python benchmarks/probe_diffusion_encoder.py --checkpoint artifacts/families/diffusion/final

Renders held-out layouts of the demo world (seeds 10000+, arm in its random start pose), runs the checkpoint's
image encoder (centre crop, eval mode) and fits ridge regressions from three of its features to the four
targets' positions (sorted by colour) and the end effector: the keypoints the UNet is given (spatial softmax
output), and the flattened feature maps of the last two trunk stages. Prints the held-out R^2 (1: exact,
0: no better than the mean), for the checkpoint and for the same architecture at random initialisation. If
the keypoints score far below the maps they are computed from, the spatial softmax is where the policy loses
the targets' positions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def scenes(count: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    from hlrp_ros.sim.render import Camera
    from hlrp_ros.sim.world import World

    world = World()
    camera = Camera(world.spec, size, size)
    images, targets = [], []
    for seed in range(10_000, 10_000 + count):
        world.reset(seed=seed)
        positions = {t.colour: t.position for t in world.targets}
        images.append(camera.render(world))
        targets.append(np.concatenate([positions[c] for c in sorted(positions)] + [world.ee]))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0, np.stack(targets)


def features(encoder, images: torch.Tensor) -> dict[str, np.ndarray]:
    from hlrp_ros.policies.diffusion.modeling_diffusion import center_crop

    encoder.eval()
    trunk, crop = encoder.backbone, encoder.config.crop_shape
    out: dict[str, list] = {"keypoints": [], "second-to-last stage": [], "last stage": []}
    with torch.no_grad():
        for i in range(0, len(images), 100):
            x = images[i: i + 100]
            x = center_crop(x, *crop) if crop else x
            before_last = trunk[:-1](x)
            last = trunk[-1](before_last)
            out["second-to-last stage"].append(before_last.flatten(1))
            out["last stage"].append(last.flatten(1))
            out["keypoints"].append(encoder.pool(last).flatten(1))
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}


def held_out_r2(x: np.ndarray, y: np.ndarray, train_fraction: float = 0.75) -> np.ndarray:
    """Ridge regression on standardised features (penalty grows with the width); R^2 per output column."""
    split = int(train_fraction * len(y))
    x = (x - x[:split].mean(0)) / (x[:split].std(0) + 1e-6)
    penalty = 10.0 if x.shape[1] < 200 else 100.0
    mean = y[:split].mean(0)
    weights = np.linalg.solve(x[:split].T @ x[:split] + penalty * np.eye(x.shape[1]), x[:split].T @ (y[:split] - mean))
    residual = ((y[split:] - (x[split:] @ weights + mean)) ** 2).sum(0)
    return 1.0 - residual / ((y[split:] - y[split:].mean(0)) ** 2).sum(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a native or LeRobot diffusion checkpoint")
    parser.add_argument("--scenes", type=int, default=2400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from hlrp_ros.policies.diffusion import DiffusionPolicy
    from hlrp_ros.policies.factory import load_policy

    trained = load_policy(args.checkpoint)
    torch.manual_seed(0)
    fresh = DiffusionPolicy(trained.config, tokenizer=getattr(trained.processor, "tokenizer", None))
    images, y = scenes(args.scenes, trained.config.image_size[0])
    print(f"{args.checkpoint}: {len(y)} layouts, image {tuple(images.shape[2:])}, crop {trained.config.crop_shape}, "
          f"trunk stages {trained.config.backbone_stages}")
    for name, policy in (("trained", trained), ("random init", fresh)):
        for feature, x in features(policy.diffusion.rgb_encoder, images).items():
            r2 = held_out_r2(x, y)
            print(f"  {name:11s} {feature:21s} ({x.shape[1]:5d} values): R^2 targets {r2[:-2].mean():.2f}, "
                  f"end effector {r2[-2:].mean():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
