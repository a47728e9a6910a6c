"""Meta-World demonstrations by the scripted experts, written as a LeRobot v3.0 dataset.

    python -m hlrp_ros.tools.metaworld_dataset --out artifacts/metaworld/mt10_demos --episodes 50
    # the full 39-D observation as the state (OBS_NAMES), the 4-D command as the action:
    python -m hlrp_ros.tools.metaworld_dataset --out artifacts/metaworld/mt10_full --episodes 50 --state full
    # interrupted? the same command continues after the last saved episode

Every MT10 task gets ``--episodes`` successful demonstrations; episode ``i`` of task ``k`` is tried with
seed ``seed_for(k, i, attempt)`` (a failed expert run moves on to the next attempt's seed, and is
counted). Each frame is the camera image, the state (``--state ee``: ``STATE_NAMES``, end effector xyz
and gripper opening; ``--state full``: Meta-World's 39-D observation, ``OBS_NAMES``) and the absolute command the expert gave at that step (target xyz, gripper effort), at
Meta-World's 80 steps per second; an episode ends ``--after-success`` steps after the success (or at
the step limit). The state's and the action's names are the dataset's ``observation.state`` and
``action`` feature names (``meta/info.json``), which training copies into the checkpoint and evaluation
reads back. The task string is the task's instruction sentence. Seeds, steps and outcomes of
every attempt are in ``meta/hlrp_metaworld.jsonl`` beside LeRobot's files.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from hlrp_ros.sim.metaworld_env import (
    INSTRUCTIONS,
    MT10_TASKS,
    STATE_KINDS,
    STATE_NAMES,
    STEP_DT,
    MetaWorldConfig,
    MetaWorldEnv,
    ScriptedExpert,
)

logger = logging.getLogger(__name__)
SIDECAR = Path("meta") / "hlrp_metaworld.jsonl"
#: Seeds of training demonstrations stay below this; evaluations draw theirs above it (held out).
TRAIN_SEED_LIMIT = 100_000


def seed_for(task_index: int, episode: int, attempt: int) -> int:
    """Seed of demonstration ``episode`` of task ``task_index`` at its ``attempt``-th try (0-based)."""
    return task_index * 10_000 + episode * 10 + attempt


def record_episode(env: MetaWorldEnv, writer, task: str, seed: int, after_success: int, state: str = "ee") -> dict:
    """Runs the expert on (task, seed), recording every step; saves the episode if it succeeded."""
    env.reset(task, seed)
    expert = ScriptedExpert(task)
    episode = writer.start_episode(INSTRUCTIONS[task])
    extra = 0
    while not env.done and extra <= after_success:
        command = expert.command(env)
        episode.add_frame(env.state_of(state), command, {"corner2": env.render()} if writer.spec.cameras else None)
        env.step_target(command)
        extra += env.success
    outcome = {"task": task, "seed": seed, "success": env.success, "success_step": env.success_step,
               "frames": len(episode)}
    if env.success:
        outcome["episode_index"] = int(writer.save_episode()["episode_index"])
    else:
        writer.discard_episode()
    return outcome


def generate(out: Path, episodes: int, tasks: list[str], image_size: int, after_success: int,
             max_attempts: int = 10, state: str = "ee") -> list[dict]:
    """Records the demonstrations into ``out``; ``state``: "ee" (4-D) or "full" (39-D observation) as the state."""
    from hlrp_ros.datasets.lerobot_v3 import DatasetSpec, DatasetWriter

    if state not in STATE_KINDS:
        raise ValueError(f"state is one of {sorted(STATE_KINDS)}, got {state!r}")
    spec = DatasetSpec(fps=round(1 / STEP_DT), joint_names=STATE_KINDS[state], action_names=STATE_NAMES,
                       cameras={"corner2": (image_size, image_size)}, robot_type="metaworld_sawyer", unit="m")
    writer = DatasetWriter(out, spec)
    sidecar = out / SIDECAR
    done = [json.loads(line) for line in sidecar.read_text().splitlines()] if sidecar.exists() else []
    saved = {o["episode_index"] for o in done if o.get("episode_index") is not None}
    # Keep only attempts whose episode the dataset committed (a crash between the two writes loses one).
    done = [o for o in done if not o["success"] or o["episode_index"] < writer.total_episodes]
    if len(saved) != writer.total_episodes:
        logger.warning("sidecar lists %d saved episodes, the dataset %d", len(saved), writer.total_episodes)
    env = MetaWorldEnv(MetaWorldConfig(camera="corner2", image_size=image_size))
    t0 = time.monotonic()
    try:
        for task in tasks:
            k = MT10_TASKS.index(task)
            for i in range(episodes):
                tried = [o for o in done if o["task"] == task and o.get("index") == i]
                if any(o["success"] for o in tried):
                    continue
                for attempt in range(len(tried), max_attempts):
                    outcome = record_episode(env, writer, task, seed_for(k, i, attempt), after_success, state)
                    outcome.update(index=i, attempt=attempt)
                    done.append(outcome)
                    with sidecar.open("a") as f:
                        f.write(json.dumps(outcome) + "\n")
                    if outcome["success"]:
                        break
                else:
                    raise RuntimeError(f"{task}: the expert failed {max_attempts} seeds in a row for episode {i}")
            ok = [o for o in done if o["task"] == task]
            logger.info("%s: %d demonstrations, %d failed expert runs (%.0f s so far)", task,
                        sum(o["success"] for o in ok), sum(not o["success"] for o in ok), time.monotonic() - t0)
    finally:
        writer.close()
        env.close()
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (continued if it exists)")
    parser.add_argument("--episodes", type=int, default=50, help="successful demonstrations per task")
    parser.add_argument("--tasks", default=",".join(MT10_TASKS), help="comma-separated MT10 tasks")
    parser.add_argument("--image-size", type=int, default=64, help="square camera image size (px)")
    parser.add_argument("--after-success", type=int, default=5, help="steps recorded after the success")
    parser.add_argument("--state", choices=sorted(STATE_KINDS), default="ee",
                        help="the recorded state: ee (end effector xyz + gripper, STATE_NAMES) or full "
                             "(Meta-World's 39-D observation, OBS_NAMES); the action is the 4-D command either way")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(MT10_TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; MT10: {','.join(MT10_TASKS)}")
    outcomes = generate(args.out, args.episodes, tasks, args.image_size, args.after_success,
                        state=args.state)
    ok = sum(o["success"] for o in outcomes)
    print(f"{args.out}: {ok} demonstrations, {len(outcomes) - ok} failed expert runs, "
          f"{sum(o['frames'] for o in outcomes if o['success'])} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
