"""Generate the planar-arm reaching dataset with the perturbed scripted expert, as a LeRobot v3.0 dataset.

    python -m hlrp_ros.tools.generate_dataset --episodes 24000 --keep 5 --seed 1 --out artifacts/demo_arm/dataset_v6

Each episode is one rollout of ``--steps`` steps in a fresh layout, driven by the perturbed expert
(``hlrp_ros.sim.rollout.collect_episode``: executed-action noise, detours, kicks), of which ``--keep``
random steps are recorded (0: every step). The episodes are therefore *keyframes*: consecutive frames
of an episode are ``observation.rollout_step`` steps apart, not ``1 / fps``, and nothing may be read
from them as a time series (training refuses them for observation histories). Each frame holds:

* ``observation.images.top``: the (``--image-size``)² RGB camera frame, stored as a PNG image feature
  (lossless: the pixels are the rendered ones);
* ``observation.state``: the joint positions (rad);
* ``action.expert_chunk`` (``--horizon``, dof): the label, the scripted expert's chunk from this state
  toward the instructed target, absolute joint positions at ``dt, 2 dt, ...`` (``dt`` = 1 / fps); axes
  ``chunk_step`` and ``joint`` (joints in ``observation.state``'s order);
* ``action``: the chunk's first row (LeRobot's one action per frame; not the behaviour policy's
  executed command, which carries the perturbations);
* ``observation.rollout_step``: the rollout step the frame was recorded at;
* the task: the instruction.

``hlrp_ros.datasets.training_arrays`` trains on ``action.expert_chunk``. Episodes are packed
``--episodes-per-file`` to a data file; the command is resumable: run it again after an interruption and it
continues after the last committed file (the earlier rollouts are replayed, not written, to keep the
random stream), and a larger ``--episodes`` extends a dataset. ``meta/demo_generator.json`` records the
parameters; a dataset made with other ones is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hlrp_ros.datasets.lerobot_v3 import DatasetSpec, DatasetWriter, FrameFeature
from hlrp_ros.datasets.training_arrays import EXPERT_CHUNK, ROLLOUT_STEP
from hlrp_ros.sim.render import Camera
from hlrp_ros.sim.rollout import ACTION_DT, Episode, collect_episode
from hlrp_ros.sim.world import World

logger = logging.getLogger(__name__)
CAMERA = "top"
GENERATOR_PATH = "meta/demo_generator.json"


def rollouts(episodes: int, steps: int, horizon: int, seed: int, image_size: int = 64, keep: int | None = None,
             few_targets: bool = False) -> Iterator[Episode]:
    """The recorded episodes, in order: a pure function of the arguments (one random stream from ``seed``)."""
    rng = np.random.default_rng(seed)
    world = World(seed=seed)
    camera = Camera(world.spec, image_size, image_size)
    for _ in range(episodes):
        yield collect_episode(world, camera, rng, steps=steps, horizon=horizon, dt=ACTION_DT, keep=keep,
                              few_targets=few_targets)


def generate(episodes: int, steps: int, horizon: int, seed: int, image_size: int = 64,
             keep: int | None = None, few_targets: bool = False) -> dict[str, np.ndarray]:
    """The same samples in memory, as the training arrays: ``images`` (N, H, W, 3) uint8, ``states`` (N, dof),
    ``actions`` (N, horizon, dof) expert chunks, ``instruction_ids`` (N,) into ``instructions`` (in order of
    first use), ``episode`` (N,) and ``rollout_step`` (N,)."""
    parts: dict[str, list] = {"images": [], "states": [], "actions": [], "instruction_ids": [], "episode": [],
                              "rollout_step": []}
    instructions: list[str] = []
    for e, ep in enumerate(rollouts(episodes, steps, horizon, seed, image_size, keep, few_targets)):
        if ep.instruction not in instructions:
            instructions.append(ep.instruction)
        n = len(ep.states)
        parts["images"].append(ep.images)
        parts["states"].append(ep.states)
        parts["actions"].append(ep.actions)
        parts["instruction_ids"].append(np.full(n, instructions.index(ep.instruction), np.int32))
        parts["episode"].append(np.full(n, e, np.int32))
        parts["rollout_step"].append(ep.steps)
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data["instructions"] = np.array(instructions)
    return data


def dataset_spec(horizon: int, image_size: int) -> DatasetSpec:
    """What the demo dataset records (see the module docstring)."""
    joints = World().spec.arm.joint_names
    return DatasetSpec(
        fps=round(1.0 / ACTION_DT), joint_names=tuple(joints), cameras={CAMERA: (image_size, image_size)},
        robot_type="hlrp_demo_arm", unit="rad", image_storage="image",
        extras={EXPERT_CHUNK: FrameFeature("float32", (horizon, len(joints)), ("chunk_step", "joint"), "rad"),
                ROLLOUT_STEP: FrameFeature("int64", (1,))})


def record(writer: DatasetWriter, ep: Episode) -> None:
    """One rollout as one dataset episode."""
    episode = writer.start_episode(ep.instruction)
    for image, state, chunk, step in zip(ep.images, ep.states, ep.actions, ep.steps, strict=True):
        episode.add_frame(state, chunk[0], {CAMERA: image}, {EXPERT_CHUNK: chunk, ROLLOUT_STEP: step})
    writer.save_episode()


def write_dataset(out: Path, episodes: int, steps: int, horizon: int, seed: int, image_size: int = 64,
                  keep: int | None = None, few_targets: bool = False, episodes_per_file: int = 1000) -> tuple[int, int]:
    """Writes (or continues) the dataset at ``out``; (episodes written now, episodes in the dataset)."""
    parameters = {"steps": steps, "horizon": horizon, "seed": seed, "image_size": image_size, "keep": keep,
                  "few_targets": few_targets, "dt": ACTION_DT}
    check_parameters(out, parameters)
    writer = DatasetWriter(out, dataset_spec(horizon, image_size), episodes_per_file=episodes_per_file)
    done = writer.committed_episodes
    if done > episodes:
        raise SystemExit(f"{out} holds {done} episodes, more than --episodes {episodes}")
    (out / GENERATOR_PATH).write_text(json.dumps(parameters, indent=2) + "\n")
    if done:
        logger.info("%s: %d episodes there; replaying their rollouts, then writing on", out, done)
    try:
        for e, ep in enumerate(tqdm(rollouts(episodes, steps, horizon, seed, image_size, keep, few_targets),
                                    total=episodes, desc="episodes", unit="ep")):
            if e >= done:
                record(writer, ep)
    finally:
        writer.close()  # commits the saved episodes of the last, partly filled file
    return writer.committed_episodes - done, writer.committed_episodes


def check_parameters(out: Path, parameters: dict) -> None:
    """Refuse to continue a dataset at ``out`` that other generator parameters (or another tool) made."""
    if not (out / "meta" / "info.json").exists():
        return
    path = out / GENERATOR_PATH
    if not path.exists():
        raise SystemExit(f"{out} is a dataset without {GENERATOR_PATH}: not this generator's; choose another --out")
    recorded = json.loads(path.read_text())
    if recorded != parameters:
        raise SystemExit(f"{out} was generated with {recorded}, not {parameters}; choose another --out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=24000)
    parser.add_argument("--steps", type=int, default=32, help=f"steps per episode (action dt {ACTION_DT} s)")
    parser.add_argument("--keep", type=int, default=5, help="random steps recorded per episode (0: all)")
    parser.add_argument("--few-targets", action="store_true",
                        help="40%% of episodes with 1 or 2 targets only (a curriculum for finding targets)")
    parser.add_argument("--horizon", type=int, default=16, help="expert chunk length (the model's chunk_size)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes-per-file", type=int, default=1000, help="episodes per data file")
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo_arm/dataset_v6"),
                        help="dataset directory (LeRobot v3.0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    written, total = write_dataset(args.out, args.episodes, args.steps, args.horizon, args.seed, args.image_size,
                                   args.keep or None, args.few_targets, args.episodes_per_file)
    info = json.loads((args.out / "meta" / "info.json").read_text())
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    logger.info("wrote %s: %d episodes (%d now), %d samples, %d instructions, %.1f MB, %.1f s", args.out, total,
                written, info["total_frames"], info["total_tasks"], size, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
