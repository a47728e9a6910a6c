"""Real-time chunking without ROS: the demo world in process, each chunk landing ``--delay-steps`` late.

    python benchmarks/rtc_delayed_loop.py --checkpoint models/demo_arm_rtc --mode conditioned --delay-steps 7
    python benchmarks/rtc_delayed_loop.py --checkpoint models/demo_arm --mode switch --delay-steps 7

A fast, deterministic stand-in for ``bench_rtc.py`` (which runs the nodes over ROS 2): inference is
sequential, as in ``policy_node`` with a long delay. The observation of step ``n`` gives a chunk whose row
``i`` is due at step ``n + 1 + i`` (the demo's ``first_action_delay`` of one action period); it lands at
step ``n + m`` (``m = --delay-steps``), so rows ``0 .. m - 2`` are never executed and row ``m - 1`` is the
first; the next observation is taken at once. Until a chunk lands the previous one keeps running.
``switch``: each chunk from fresh noise; ``conditioned``: handed the previous chunk's rows up to the first
executed one (as policy_node's ``rtc_mode: conditioned``). Success as ``hlrp_ros.tools.evaluate``
(``train`` episodes, on the goal for the dwell time before the timeout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def run(checkpoint: Path, mode: str, delay_steps: int, episodes: int, seed: int, timeout: float = 8.0,
        dwell: float = 0.5) -> dict:
    import torch

    from hlrp_ros.policies.base import Observation
    from hlrp_ros.policies.common.realtime_chunking import ChunkGuide
    from hlrp_ros.policies.factory import load_policy
    from hlrp_ros.sim.render import Camera
    from hlrp_ros.sim.rollout import ACTION_DT
    from hlrp_ros.sim.success import GoalDwell
    from hlrp_ros.sim.world import World
    from hlrp_ros.tools.evaluate import plan_episode

    torch.set_num_threads(1)
    policy = load_policy(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    world = World()
    camera = Camera(world.spec, *policy.config.image_size[::-1])
    m = delay_steps

    def infer(instruction: str, step: int, previous: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, int]:
        """The chunk gathered at ``step``: its actions and the step its row 0 is due."""
        obs = Observation(images={"top": camera.render(world)}, state=world.q.astype(np.float32),
                          instruction=instruction)
        start, guide = step + 1, None
        if mode == "conditioned" and previous is not None:
            due = previous[0][start - previous[1]:]
            if len(due):
                guide = ChunkGuide(torch.from_numpy(due.astype(np.float32)), delay=min(m, len(due)),
                                   execution_horizon=1, method="conditioned")
        return policy.sample_chunk(policy.encode_prefix(obs), generator=generator, guide=guide).numpy(), start

    outcomes = []
    for e in range(episodes):
        plan = plan_episode("train", seed, e, 1.0)
        world.reset(seed=plan["seed"])
        current, goal = None, GoalDwell(dwell)
        landing, pending = m, infer(plan["instruction"], 0, None)
        for n in range(int(round(timeout / ACTION_DT))):
            if n >= landing:
                current, pending, landing = pending, infer(plan["instruction"], n, pending), n + m
            if current is not None and n >= current[1]:
                world.set_command(current[0][min(n - current[1], len(current[0]) - 1)])
            for _ in range(5):
                world.step(ACTION_DT / 5)
            goal.update(world.on_target(plan["colour"]), (n + 1) * ACTION_DT)
            if goal.success:
                break
        outcomes.append({"success": goal.success,
                         "success_time": goal.success_time,
                         "final_distance": round(float(world.distance_to(plan["colour"])), 4),
                         "final_nearest": world.nearest_target()[0], "goal": plan["colour"]})
    times = [o["success_time"] for o in outcomes if o["success"]]
    return {"checkpoint": str(checkpoint), "mode": mode, "delay_steps": m, "episodes": episodes,
            "success": sum(o["success"] for o in outcomes) / episodes,
            "median_time_to_target_s": float(np.median(times)) if times else None,
            "failures": [o for o in outcomes if not o["success"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--mode", choices=("switch", "conditioned"), default="switch")
    parser.add_argument("--delay-steps", type=int, default=7, help="steps from an observation to its chunk landing")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.delay_steps < 1:
        parser.error("--delay-steps must be >= 1")
    result = run(args.checkpoint, args.mode, args.delay_steps, args.episodes, args.seed)
    print(f"{args.checkpoint} {args.mode} delay {args.delay_steps} steps: success {result['success']:.0%} "
          f"({args.episodes} episodes), median time to target {result['median_time_to_target_s']} s, "
          f"failures (distance to goal): {[f['final_distance'] for f in result['failures']]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
