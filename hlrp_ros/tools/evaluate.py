"""Closed-loop evaluation of a demo checkpoint over ROS 2 (world + policy_node + controller_node).

    python -m hlrp_ros.tools.evaluate --episodes 100                       # shipped checkpoint, all conditions
    python -m hlrp_ros.tools.evaluate --conditions blind --blind-checkpoint artifacts/demo_arm/blind/final
    python -m hlrp_ros.tools.evaluate --backend inprocess --episodes 20   # fast check without ROS
    python -m hlrp_ros.tools.evaluate --world metaworld --episodes 20 --strip artifacts/eval/mt10.png
                                      # Meta-World MT10 (hlrp_ros.tools.metaworld_eval, docs/metaworld.md)
    python -m hlrp_ros.tools.evaluate --world metaworld --backend inprocess --episodes 10  # the same without ROS

Conditions (each ``--episodes`` episodes, random layouts from ``--seed``):
  train    an instruction from the training templates for a random colour.
  heldout  an instruction from the held-out paraphrases (templates never trained on).
  wrong    the episode's task is colour A but the instruction names B != A (instruction shuffled):
           reports how often the arm ends on B (the instructed, wrong target) and on A.
  switch   the instruction changes from A to B at ``--switch-time`` s (mid-reach); success = B reached.
  blind    the language-blind model (trained with the colour withheld) given the colour-free
           instruction; success = the episode's task target reached.
Success: the end effector stays within the success radius of the goal for the dwell time before the
timeout (sim time). "ends on target": on the goal when the episode ends, ``--hold`` s of sim time after
the success (the policy keeps acting), so an arm that reaches the target and drifts off does not count.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hlrp_ros.sim.language import make_instruction
from hlrp_ros.sim.world import COLOURS

logger = logging.getLogger(__name__)
CONDITIONS = ("train", "heldout", "wrong", "switch", "blind")
BLIND_INSTRUCTION = "reach the target"  # hlrp_ros.tools.train.BLIND_INSTRUCTION (kept torch-free here)


def plan_episode(condition: str, seed: int, index: int, switch_time: float) -> dict:
    """Instruction(s) and goals of one episode, a pure function of (condition, seed, index)."""
    rng = np.random.default_rng([seed, CONDITIONS.index(condition), index])
    world_seed = int(rng.integers(2**31))
    a, b = (str(c) for c in rng.choice(COLOURS, size=2, replace=False))
    plan = {"seed": world_seed, "colour": a, "task": a, "switch": None}
    if condition in ("train", "switch"):
        plan["instruction"] = make_instruction(a, rng, "train")
    elif condition == "heldout":
        plan["instruction"] = make_instruction(a, rng, "heldout")
    elif condition == "wrong":
        plan.update(colour=b, instruction=make_instruction(b, rng, "train"))
    elif condition == "blind":
        plan["instruction"] = BLIND_INSTRUCTION
    if condition == "switch":
        plan["switch"] = (switch_time, make_instruction(b, rng, "train"), b)
    return plan


def summarise(condition: str, outcomes: list[dict]) -> dict:
    n = len(outcomes)
    rate = lambda key: sum(bool(o[key]) for o in outcomes) / max(n, 1)  # noqa: E731
    out = {"condition": condition, "episodes": n, "success": rate("success"), "ends_on_target": rate("final_on_target"),
           "reached": rate("reached")}
    times = [o["success_time"] for o in outcomes if o["success_time"] is not None]
    out["median_success_time_s"] = float(np.median(times)) if times else None
    if condition == "wrong":
        out["ends_on_task_target"] = sum(o["final_nearest"] == o["task"] and o["task_distance"] is not None
                                         and o["task_distance"] <= 0.1 for o in outcomes) / max(n, 1)
    return out


def run_ros(args: argparse.Namespace, checkpoint: Path, conditions: list[str]) -> dict[str, list[dict]]:
    from hlrp_ros.graph import isolated_ros_env
    from hlrp_ros.tools.closed_loop import EpisodeDriver, bring_up, joined_graph, shut_down

    env = isolated_ros_env()
    log_dir = Path(tempfile.mkdtemp(prefix="hlrp_eval_"))
    procs = bring_up(checkpoint, env, log_dir, policy_params={"dtype": args.dtype, **dict(args.policy_param)})
    try:
        with joined_graph(env):
            driver = EpisodeDriver()
            try:
                if not driver.wait_ready(make_instruction("red", np.random.default_rng(0)), args.ready_timeout):
                    logs = "\n".join(p.node_name + ":\n" + p.output()[-2000:] for p in procs)
                    raise RuntimeError(f"nodes not ready; logs in {log_dir}:\n{logs}")
                return {condition: run_ros_condition(args, driver, condition) for condition in conditions}
            finally:
                driver.close()
    finally:
        codes = shut_down(procs)
        logger.info("node exit codes: %s (logs in %s)", codes, log_dir)


def run_ros_condition(args: argparse.Namespace, driver, condition: str) -> list[dict]:
    """``args.episodes`` episodes of ``condition`` driven over ROS 2, with a progress line."""
    outcomes: list[dict] = []
    t0 = time.monotonic()
    for i in range(args.episodes):
        plan = plan_episode(condition, args.seed, i, args.switch_time)
        timeout = args.timeout + (plan["switch"][0] if plan["switch"] else 0.0)
        outcome = asdict(driver.run_episode(plan["seed"], plan["colour"], plan["instruction"], timeout,
                                            switch=plan["switch"], hold=args.hold))
        st = driver.status
        task_pos = st["targets"].get(plan["task"])
        outcome["task"] = plan["task"]
        outcome["task_distance"] = (float(np.linalg.norm(np.subtract(st["ee"], task_pos)))
                                    if task_pos is not None else None)
        outcome["inference_ms"] = driver.mean_latency_ms()
        outcomes.append(outcome)
        ok = sum(o["success"] for o in outcomes)
        print(f"\r[{condition}] episode {i + 1}/{args.episodes}: successes {ok}  "
              f"({time.monotonic() - t0:.0f} s, inference {outcome['inference_ms']:.1f} ms)   ",
              end="", flush=True)
    print()
    return outcomes


def run_inprocess(args: argparse.Namespace, checkpoint: Path, conditions: list[str]) -> dict[str, list[dict]]:
    import torch

    from hlrp_ros.policies.base import Observation
    from hlrp_ros.policies.factory import load_policy
    from hlrp_ros.sim.render import Camera
    from hlrp_ros.sim.rollout import run_policy_episode
    from hlrp_ros.sim.world import World

    torch.set_num_threads(1)
    policy = load_policy(checkpoint, dtype=args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    world = World()
    camera = Camera(world.spec, *policy.config.image_size[::-1])

    def chunk_fn(image, state, instruction):
        obs = Observation(images={"top": image}, state=state, instruction=instruction)
        return policy.predict_action_chunk(obs, generator=gen).numpy()

    results: dict[str, list[dict]] = {}
    for condition in conditions:
        results[condition] = []
        for i in range(args.episodes):
            plan = plan_episode(condition, args.seed, i, args.switch_time)
            world.reset(seed=plan["seed"])
            timeout = args.timeout + (plan["switch"][0] if plan["switch"] else 0.0)
            r = run_policy_episode(world, camera, chunk_fn, plan["instruction"], plan["colour"], seconds=timeout,
                                   n_action_steps=policy.config.n_action_steps, switch=plan["switch"], hold=args.hold)
            results[condition].append({"success": r.success, "reached": r.reached, "final_on_target": r.final_on_target,
                                       "final_nearest": r.final_nearest, "success_time": r.success_time, "task": plan["task"],
                                       "task_distance": world.distance_to(plan["task"]), "final_distance": r.final_distance,
                                       "goal": plan["colour"]})
    return results


def write_json(args: argparse.Namespace, summary: list[dict], results: dict) -> None:
    """``--json``: the arguments, the summary and every episode."""
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                     "episodes": results}, indent=1, default=str))


def evaluate_metaworld(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--world metaworld``: MT10 over ROS 2, or in this process with ``--backend inprocess``
    (hlrp_ros.tools.metaworld_eval)."""
    from hlrp_ros.sim.metaworld_env import MT10_TASKS
    from hlrp_ros.tools import metaworld_eval

    conditions = [c.strip() for c in (args.conditions or ",".join(metaworld_eval.CONDITIONS)).split(",") if c.strip()]
    tasks = [t.strip() for t in (args.tasks or ",".join(MT10_TASKS)).split(",") if t.strip()]
    if sorted(set(conditions) - set(metaworld_eval.CONDITIONS)) or sorted(set(tasks) - set(MT10_TASKS)):
        parser.error(f"metaworld conditions are {metaworld_eval.CONDITIONS} and tasks {MT10_TASKS}")
    if args.checkpoint is None:
        from hlrp_ros.tools.closed_loop import default_checkpoint

        args.checkpoint = default_checkpoint("metaworld")
    if args.backend == "inprocess":
        results = metaworld_eval.run_inprocess(args.checkpoint, conditions, tasks, args.episodes, args.seed - 1000,
                                               dtype=args.dtype)
        mode = "in process, no ROS"
    else:
        results = metaworld_eval.run(args.checkpoint, conditions, tasks, args.episodes, args.seed - 1000,
                                     args.time_mode, args.strip, args.ready_timeout)
        mode = args.time_mode
    summary = [metaworld_eval.summarise(c, results[c]) for c in conditions]
    print(f"checkpoint: {args.checkpoint}  world: metaworld ({mode})  episodes per task: {args.episodes}")
    metaworld_eval.print_table(summary)
    if args.json:
        write_json(args, summary, results)
    if args.min_success is not None and any(s["average_success"] < args.min_success for s in summary
                                            if s["condition"] != "wrong"):
        return 1
    return 0


def node_parameter(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` (VALUE in YAML: 0.0, true, [a, b], text) as (name, value)."""
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped demo checkpoint")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="model dtype (policy_node's dtype parameter): what reduced precision costs in success")
    parser.add_argument("--policy-param", type=node_parameter, action="append", default=[], metavar="NAME=VALUE",
                        help="--backend ros: a policy_node parameter over config/demo.yaml's (repeatable; the "
                             "value is YAML), e.g. first_action_delay=0.0 for a model trained on a recorded dataset")
    parser.add_argument("--blind-checkpoint", type=Path, default=None, help="language-blind model (for 'blind')")
    parser.add_argument("--world", choices=("demo", "metaworld"), default="demo",
                        help="demo: the planar arm; metaworld: Meta-World MT10 (docs/metaworld.md)")
    parser.add_argument("--conditions", default=None,
                        help=f"comma-separated subset of {','.join(CONDITIONS)} (default: train,heldout,wrong,switch); "
                             "metaworld: of train,heldout,wrong (default: all three)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per condition (metaworld: per task)")
    parser.add_argument("--tasks", default=None, help="metaworld: comma-separated MT10 tasks (default: all ten)")
    parser.add_argument("--time-mode", choices=("lockstep", "realtime"), default="lockstep",
                        help="metaworld: the simulator's time mode")
    parser.add_argument("--strip", type=Path, default=None,
                        help="metaworld: write a PNG strip of camera frames (first episode of each task) here")
    parser.add_argument("--timeout", type=float, default=8.0, help="episode length limit (sim s)")
    parser.add_argument("--hold", type=float, default=2.0,
                        help="sim s to keep running after a success before judging 'ends on target'")
    parser.add_argument("--switch-time", type=float, default=1.0, help="sim s into the episode of the switch")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--backend", choices=("ros", "inprocess"), default="ros")
    parser.add_argument("--json", type=Path, default=None, help="write summary + episodes here")
    parser.add_argument("--min-success", type=float, default=None,
                        help="exit 1 when a non-blind condition's success rate is below this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.world == "metaworld":
        return evaluate_metaworld(args, parser)
    conditions = [c.strip() for c in (args.conditions or "train,heldout,wrong,switch").split(",") if c.strip()]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        parser.error(f"unknown conditions {unknown}")
    if args.checkpoint is None:
        from hlrp_ros.tools.closed_loop import default_checkpoint

        args.checkpoint = default_checkpoint()
    runner = run_ros if args.backend == "ros" else run_inprocess
    results: dict[str, list[dict]] = {}
    main_conditions = [c for c in conditions if c != "blind"]
    if main_conditions:
        results.update(runner(args, args.checkpoint, main_conditions))
    if "blind" in conditions:
        if args.blind_checkpoint is None:
            parser.error("the 'blind' condition needs --blind-checkpoint")
        results.update(runner(args, args.blind_checkpoint, ["blind"]))
    summary = [summarise(c, results[c]) for c in conditions]
    print(f"checkpoint: {args.checkpoint} ({args.dtype})  backend: {args.backend}  episodes/condition: {args.episodes}")
    for s in summary:
        extra = f"  ends on task target {s['ends_on_task_target']:.0%}" if "ends_on_task_target" in s else ""
        print(f"  {s['condition']:8s} success {s['success']:6.1%}  ends on target {s['ends_on_target']:6.1%}  "
              f"reached {s['reached']:6.1%}{extra}")
    if args.json:
        write_json(args, summary, results)
    if args.min_success is not None and any(s["success"] < args.min_success for s in summary
                                            if s["condition"] != "blind"):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
