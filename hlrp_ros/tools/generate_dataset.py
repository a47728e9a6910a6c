"""Generate the planar-arm reaching dataset with the perturbed scripted expert.

    python -m hlrp_ros.tools.generate_dataset --episodes 12000 --keep 5 --seed 0 --out artifacts/demo_arm/dataset.npz

Writes one ``.npz`` with ``images`` (N, H, W, 3) uint8, ``states`` (N, dof), ``actions``
(N, horizon, dof) (expert chunk from each state, absolute joint positions), ``instruction_ids``
(N,) into ``instructions``, ``colours`` (N,) and ``episode`` (N,) indices.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hlrp_ros.sim.render import Camera
from hlrp_ros.sim.rollout import ACTION_DT, collect_episode
from hlrp_ros.sim.world import World

logger = logging.getLogger(__name__)


def generate(episodes: int, steps: int, horizon: int, seed: int, image_size: int = 64,
             keep: int | None = None, few_targets: bool = False) -> dict[str, np.ndarray]:
    """The dataset as arrays (see the module docstring)."""
    rng = np.random.default_rng(seed)
    world = World(seed=seed)
    camera = Camera(world.spec, image_size, image_size)
    parts: dict[str, list] = {"images": [], "states": [], "actions": [], "instruction_ids": [], "colours": [],
                              "episode": []}
    instructions: list[str] = []
    for e in tqdm(range(episodes), desc="episodes", unit="ep"):
        ep = collect_episode(world, camera, rng, steps=steps, horizon=horizon, dt=ACTION_DT, keep=keep,
                             few_targets=few_targets)
        if ep.instruction not in instructions:
            instructions.append(ep.instruction)
        n = len(ep.states)
        parts["images"].append(ep.images)
        parts["states"].append(ep.states)
        parts["actions"].append(ep.actions)
        parts["instruction_ids"].append(np.full(n, instructions.index(ep.instruction), np.int32))
        parts["colours"].append(np.array([ep.colour] * n))
        parts["episode"].append(np.full(n, e, np.int32))
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data["instructions"] = np.array(instructions)
    data["meta"] = np.array([f"seed={seed} episodes={episodes} steps={steps} keep={keep} few_targets={few_targets} "
                             f"horizon={horizon} "
                             f"dt={ACTION_DT}"])
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=12000)
    parser.add_argument("--steps", type=int, default=32, help=f"steps per episode (action dt {ACTION_DT} s)")
    parser.add_argument("--keep", type=int, default=5, help="random steps recorded per episode (0: all)")
    parser.add_argument("--few-targets", action="store_true",
                        help="40%% of episodes with 1 or 2 targets only (a curriculum for finding targets)")
    parser.add_argument("--horizon", type=int, default=16, help="expert chunk length (the model's chunk_size)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo_arm/dataset.npz"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    data = generate(args.episodes, args.steps, args.horizon, args.seed, args.image_size, args.keep or None,
                    args.few_targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **data)
    logger.info("wrote %s: %d samples, %d instructions, %.1f s", args.out, len(data["states"]),
                len(data["instructions"]), time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
