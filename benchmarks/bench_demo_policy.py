#!/usr/bin/env python3
"""Inference time of the shipped demo checkpoint (issue 5's "< 20 ms per chunk"). Prints figures; never a test.

One ``predict_action_chunk`` = preprocessing, prefix encoding and the Euler steps, on a frame rendered by
the demo world, as the policy node runs it. Usage (repository root)::

    env/run.sh python benchmarks/bench_demo_policy.py [--checkpoint DIR] [--threads 1] [--repeats 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.sim.render import Camera
from hlrp_ros.sim.world import World
from hlrp_ros.tools.closed_loop import default_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped demo checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo's policy node uses 1)")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or default_checkpoint()
    policy = load_policy(checkpoint)
    world = World(seed=3)
    height, width = policy.config.image_size
    obs = Observation(images={"top": Camera(world.spec, width, height).render(world)},
                      state=world.q.astype(np.float32), instruction="go to the blue disc")
    times = []
    for _ in range(args.warmup + args.repeats):
        start = time.perf_counter()
        policy.predict_action_chunk(obs)
        times.append(time.perf_counter() - start)
    ms = np.array(times[args.warmup:]) * 1e3
    print(f"{checkpoint}: chunk {policy.config.chunk_size} x {policy.config.action_dim}, "
          f"{policy.config.num_steps} Euler steps, {args.threads} thread(s): median {np.median(ms):.1f} ms, "
          f"p90 {np.percentile(ms, 90):.1f} ms, min {ms.min():.1f} ms (n={len(ms)})")


if __name__ == "__main__":
    main()
