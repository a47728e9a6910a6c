"""Episodes of the planar-arm task without ROS: the data-collection behaviour and a fast closed loop.

``collect_episode`` runs a *behaviour* policy (the scripted expert, perturbed: executed-action
noise, detours toward another target first, random kicks) and labels every visited state with
the *expert's* chunk toward the instructed target, so the dataset covers states off the expert's
path, including states heading for the wrong target (what a mid-episode instruction switch
produces). ``run_policy_episode`` is the in-process closed loop used to check training quickly;
reported figures come from the ROS closed loop (``hlrp_ros.tools.evaluate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hlrp_ros.sim.expert import expert_chunk, expert_step, inverse_kinematics
from hlrp_ros.sim.language import make_instruction
from hlrp_ros.sim.render import Camera
from hlrp_ros.sim.success import GoalDwell
from hlrp_ros.sim.world import World

#: Time between consecutive actions of a chunk (s); the policy node's chunk dt must match.
ACTION_DT = 0.1


@dataclass
class Episode:
    images: np.ndarray       # (T, H, W, 3) uint8
    states: np.ndarray       # (T, dof) float32
    actions: np.ndarray      # (T, horizon, dof) float32: expert chunk from each state
    instruction: str
    colour: str
    steps: np.ndarray        # (T,) int64: the rollout step each record was taken at (increasing)


def collect_episode(world: World, camera: Camera, rng: np.random.Generator, *, steps: int, horizon: int,
                    dt: float = ACTION_DT, split: str = "train", keep: int | None = None,
                    few_targets: bool = False) -> Episode:
    """One perturbed-expert episode in a freshly reset ``world`` (see the module docstring).

    ``keep``: record only this many random steps of the episode (many short records from many
    layouts generalise better than long records from few: the model must not memorise layouts).
    """
    arm = world.spec.arm
    # Some episodes with fewer targets: finding "the" target is learnt before telling colours apart.
    n_targets = int(rng.choice([1, 2, world.spec.num_targets], p=[0.2, 0.2, 0.6])) if few_targets else None
    world.reset(seed=int(rng.integers(2**31)), num_targets=n_targets)
    if rng.random() < 0.5:  # start anywhere: the state alone must not give the goal away
        world.q = arm.clip(rng.uniform(arm.lower, arm.upper))
    colour = world.targets[int(rng.integers(len(world.targets)))].colour
    goal = inverse_kinematics(arm, world.target(colour).position)
    others = [t for t in world.targets if t.colour != colour]
    detour_steps = 0
    detour_goal = goal
    mode = rng.random()
    if mode < 0.5:  # head for another target (or a random pose) first
        detour_steps = int(rng.integers(2, 22))
        if others and rng.random() < 0.8:
            detour_goal = inverse_kinematics(arm, others[int(rng.integers(len(others)))].position)
        else:
            detour_goal = arm.clip(rng.uniform(arm.lower, arm.upper))
    noise = float(rng.choice([0.0, 0.02, 0.05, 0.1]))
    kick_prob = 0.08 if mode > 0.85 else 0.0
    speed_scale = float(rng.uniform(0.6, 1.0))
    images, states, actions, at = [], [], [], []
    recorded = set(range(steps)) if keep is None else set(rng.choice(steps, size=min(keep, steps), replace=False))
    for k in range(steps):
        if k in recorded:
            images.append(camera.render(world))
            states.append(world.q.copy())
            actions.append(expert_chunk(world.q, goal, horizon, dt))
            at.append(k)
        target = detour_goal if k < detour_steps else goal
        cmd = expert_step(world.q, target, dt, speed=1.8 * speed_scale)
        cmd = cmd + rng.normal(0.0, noise, arm.dof)
        if rng.random() < kick_prob:
            cmd = cmd + rng.uniform(-0.6, 0.6, arm.dof)
        world.set_command(cmd)
        for _ in range(5):
            world.step(dt / 5)
    return Episode(np.stack(images), np.asarray(states, np.float32), np.asarray(actions, np.float32),
                   make_instruction(colour, rng, split), colour, np.asarray(at, np.int64))


@dataclass
class EpisodeResult:
    success: bool          # stayed on the goal for the dwell time
    reached: bool          # was on the goal at some time
    final_on_target: bool  # on the goal at the end
    final_nearest: str     # colour of the nearest target at the end
    final_distance: float  # m
    success_time: float | None = None  # s into the episode when the dwell was complete


def run_policy_episode(world: World, camera: Camera, chunk_fn: Callable[[np.ndarray, np.ndarray, str], np.ndarray],
                       instruction: str, colour: str, *, seconds: float = 5.0, n_action_steps: int = 8,
                       dt: float = ACTION_DT, dwell: float = 0.5,
                       switch: tuple[float, str, str] | None = None, hold: float = 0.0) -> EpisodeResult:
    """Closed loop in process: ``chunk_fn(image, state, instruction) -> (C, dof)`` every ``n_action_steps``.

    ``switch=(time, instruction, colour)`` changes the instruction (and the goal) mid-episode.
    The episode ends after ``seconds``, or ``hold`` seconds after the goal was held for ``dwell`` seconds
    (success; ``final_on_target`` then says whether the arm stayed).
    """
    t, goal = 0.0, GoalDwell(dwell)
    queue: list[np.ndarray] = []
    def running() -> bool:
        return t < seconds if goal.success_time is None else t < goal.success_time + hold - 1e-9

    while running():
        if switch is not None and t >= switch[0] and colour != switch[2]:
            # a new goal: success is judged on it alone (a success on the old one does not count)
            instruction, colour, queue, goal = switch[1], switch[2], [], GoalDwell(dwell)
        if not queue:
            queue = list(chunk_fn(camera.render(world), world.q.astype(np.float32), instruction)[:n_action_steps])
        world.set_command(queue.pop(0))
        for _ in range(5):
            world.step(dt / 5)
        t += dt
        goal.update(world.on_target(colour), t)
    nearest, _ = world.nearest_target()
    return EpisodeResult(goal.success, goal.reached, world.on_target(colour), nearest, world.distance_to(colour),
                         goal.success_time)
