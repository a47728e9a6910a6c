"""Meta-World MT10 as a ROS-free world: task set, seeds, the tuned CPU renderer, success, instructions.

Meta-World (``metaworld`` 3.x, MuJoCo) runs a Sawyer arm driven by a 4-D action: an end-effector
xyz displacement in [-1, 1] (x 0.01 m per step) and a gripper effort in [-1, 1] (+1 closes). The
world here is commanded with *absolute* end-effector targets instead (the mocap target position the
deltas integrate to, plus the effort): a target held is a robot standing still, which is what the
controller's "hold" and chunk interpolation assume; a held delta would keep the arm moving.
``action_for_target`` turns a target back into Meta-World's delta, exactly, for targets within one
step's reach.

State (``STATE_NAMES``): end-effector x, y, z (m, world frame) and the gripper opening (Meta-World's
normalised finger distance, 0 closed .. 1 open); or the full 39-D observation, named by ``OBS_NAMES``
(its first four are ``STATE_NAMES``; objects, previous frame, goal). Command (same names, so a policy's state and action
share them): target x, y, z (m) and the gripper effort (-1 open .. +1 close).

Seeds: an episode is (task, seed); the seed draws the object and goal positions from the task's own
random range (Meta-World's ``seeded_rand_vec``), so held-out seeds are unseen layouts.

Rendering: stock scenes ask for 4x multisampling and large shadow maps (~200 ms per frame on a CPU);
``MetaWorldEnv`` turns multisampling, shadows and reflections off and renders with ``mujoco.Renderer``
(~15 ms at 128 px). The corner cameras are mounted upside down in the scene files; their images
are rotated by 180 degrees (as LeRobot's Meta-World integration does) so the table is at the bottom.
Offscreen rendering needs an OpenGL backend: ``MUJOCO_GL=egl`` (Mesa's libEGL) is set when unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

#: The MT10 tasks, in Meta-World's order.
MT10_TASKS = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)

#: One instruction per task: the Meta-World paper's task descriptions, as LeRobot's integration uses.
INSTRUCTIONS = {
    "reach-v3": "reach a goal position",
    "push-v3": "push the puck to a goal",
    "pick-place-v3": "pick and place a puck to a goal",
    "door-open-v3": "open a door with a revolving joint",
    "drawer-open-v3": "open a drawer",
    "drawer-close-v3": "push and close a drawer",
    "button-press-topdown-v3": "press a button from the top",
    "peg-insert-side-v3": "insert a peg sideways",
    "window-open-v3": "push and open a window",
    "window-close-v3": "push and close a window",
}

#: Held-out paraphrases (never trained on): the task's object noun kept, the rest reworded.
HELDOUT_INSTRUCTIONS = {
    "reach-v3": ("move the gripper to the goal position", "go to the goal"),
    "push-v3": ("slide the puck over to the goal", "shove the puck to its goal"),
    "pick-place-v3": ("grasp the puck and put it on the goal", "lift the puck and place it at the goal"),
    "door-open-v3": ("swing the door open", "pull the door open on its hinge"),
    "drawer-open-v3": ("pull the drawer open", "slide the drawer out"),
    "drawer-close-v3": ("shut the drawer", "slide the drawer closed"),
    "button-press-topdown-v3": ("push the button down from above", "press down on the button"),
    "peg-insert-side-v3": ("put the peg into the hole from the side", "slide the peg into the hole"),
    "window-open-v3": ("slide the window open", "open the window"),
    "window-close-v3": ("slide the window shut", "close the window"),
}

#: Scripted expert class in ``metaworld.policies`` per task.
EXPERTS = {
    "reach-v3": "SawyerReachV3Policy", "push-v3": "SawyerPushV3Policy", "pick-place-v3": "SawyerPickPlaceV3Policy",
    "door-open-v3": "SawyerDoorOpenV3Policy", "drawer-open-v3": "SawyerDrawerOpenV3Policy",
    "drawer-close-v3": "SawyerDrawerCloseV3Policy", "button-press-topdown-v3": "SawyerButtonPressTopdownV3Policy",
    "peg-insert-side-v3": "SawyerPegInsertionSideV3Policy", "window-open-v3": "SawyerWindowOpenV3Policy",
    "window-close-v3": "SawyerWindowCloseV3Policy",
}

#: Names of the state and command dimensions (see the module docstring).
STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper")


def _frame_names(prefix: str = "") -> tuple[str, ...]:
    objects = tuple(f"{o}_{a}" for o in ("obj1", "obj2") for a in ("x", "y", "z", "q0", "q1", "q2", "q3"))
    return tuple(prefix + n for n in (*STATE_NAMES, *objects))


#: Names of Meta-World's 39-D observation, in its order: hand xyz (m) and gripper opening (``STATE_NAMES``),
#: object 1 position (m) and quaternion (``obj1_q0..q3`` in the order Meta-World writes it), object 2 the same
#: (zeros where a task has one object), the previous step's 18 values (``prev_`` + those names), the goal xyz
#: (m). The first four are ``STATE_NAMES``, so a policy whose state is the full observation and whose action
#: is the 4-D command reads both from one ``/joint_states`` message.
OBS_NAMES = (*_frame_names(), *_frame_names("prev_"), "goal_x", "goal_y", "goal_z")
#: What a dataset or policy may take as its state: the 4-D end effector or the full observation.
STATE_KINDS = {"ee": STATE_NAMES, "full": OBS_NAMES}
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
#: Cameras whose scene mounting is upside down.
FLIPPED_CAMERAS = ("corner", "corner2", "corner3", "corner4")
#: Simulated seconds per step (Meta-World: 5 physics frames of 2.5 ms).
STEP_DT = 0.0125
#: Meta-World's episode length.
MAX_STEPS = 500


@dataclass(frozen=True)
class MetaWorldConfig:
    """Settings of the Meta-World world."""

    # Camera rendered (one of CAMERAS).
    camera: str = "corner2"
    # Image size (px, square).
    image_size: int = 64
    # Steps before an episode ends (Meta-World's cap is 500).
    max_steps: int = MAX_STEPS
    # Seed of the MT10 benchmark object (fixes which task variant sets the observability flags).
    benchmark_seed: int = 0

    def __post_init__(self) -> None:
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {self.camera!r}")
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [16, 1024], got {self.image_size}")
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be in [1, {MAX_STEPS}], got {self.max_steps}")


def check_task(task: str) -> str:
    """``task`` if it is an MT10 task, else ValueError naming the tasks."""
    if task not in MT10_TASKS:
        raise ValueError(f"unknown Meta-World task {task!r}; MT10 tasks: {', '.join(MT10_TASKS)}")
    return task


def instruction_for(task: str, kind: str = "train", index: int = 0) -> str:
    """The training sentence of ``task`` (``kind='train'``) or its ``index``-th held-out paraphrase."""
    check_task(task)
    if kind == "train":
        return INSTRUCTIONS[task]
    if kind == "heldout":
        options = HELDOUT_INSTRUCTIONS[task]
        return options[index % len(options)]
    raise ValueError(f"kind must be 'train' or 'heldout', got {kind!r}")


def _gl_backend() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def gl_problem() -> str | None:
    """Why offscreen rendering cannot work here (the GL library of ``MUJOCO_GL`` is missing), or None."""
    import ctypes.util

    backend = os.environ.get("MUJOCO_GL", "egl")
    library = {"egl": "EGL", "osmesa": "OSMesa"}.get(backend)
    if library is not None and ctypes.util.find_library(library) is None:
        package = "libegl1 libegl-mesa0 libgl1-mesa-dri" if backend == "egl" else "libosmesa6"
        return (f"MUJOCO_GL={backend} needs lib{library}, which is not installed "
                f"(Debian/Ubuntu: apt-get install {package})")
    return None


# MuJoCo picks its GL backend when first imported (metaworld imports it): choose before anyone does.
_gl_backend()


class MetaWorldEnv:
    """One MT10 world: switch task and seed with ``reset``, step with absolute targets, render the camera.

    The ten task scenes are built on first use and kept (switching back costs nothing).
    """

    def __init__(self, config: MetaWorldConfig | None = None) -> None:
        import metaworld

        self.config = config or MetaWorldConfig()
        self._benchmark = metaworld.MT10(seed=self.config.benchmark_seed)
        self._envs: dict[str, object] = {}
        self._renderers: dict[str, object] = {}
        self.task: str | None = None
        self.seed: int | None = None
        self.steps = 0
        self.success = False
        self.success_step: int | None = None
        self.obs: np.ndarray | None = None

    # --- scenes ------------------------------------------------------------------------------------
    def _scene(self, task: str):
        if task not in self._envs:
            env = self._benchmark.train_classes[task]()
            env.set_task(next(t for t in self._benchmark.train_tasks if t.env_name == task))
            # Draw layouts from the seeded generator rather than the benchmark's 50 fixed ones.
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True
            env.max_path_length = self.config.max_steps
            self._envs[task] = env
        return self._envs[task]

    @property
    def env(self):
        """The current task's Meta-World environment (after ``reset``)."""
        if self.task is None:
            raise RuntimeError("no episode yet: call reset(task, seed) first")
        return self._envs[self.task]

    def _renderer(self):
        if self.task not in self._renderers:
            import mujoco

            problem = gl_problem()
            if problem:
                raise RuntimeError(problem)

            model = self.env.model
            model.vis.quality.offsamples = 0  # no multisampling
            size = self.config.image_size
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, size)
            self._renderers[self.task] = mujoco.Renderer(model, size, size)
        return self._renderers[self.task]

    # --- episodes ----------------------------------------------------------------------------------
    def reset(self, task: str, seed: int) -> np.ndarray:
        """Starts an episode of ``task`` with the layout drawn from ``seed``; returns the 39-D observation."""
        env = self._scene(check_task(task))
        self.task, self.seed = task, int(seed)
        env.seed(self.seed)
        self.obs, _ = env.reset()
        self.steps, self.success, self.success_step = 0, False, None
        return self.obs

    @property
    def done(self) -> bool:
        """The episode reached ``max_steps``."""
        return self.steps >= self.config.max_steps

    @property
    def time(self) -> float:
        """Simulated seconds since the reset."""
        return self.steps * STEP_DT

    def state(self) -> np.ndarray:
        """(4,) end-effector xyz (m) and gripper opening (0..1), as ``STATE_NAMES``."""
        return np.asarray(self.obs[:4], dtype=np.float64).copy()

    def observation(self) -> np.ndarray:
        """(39,) Meta-World's observation, as ``OBS_NAMES``."""
        return np.asarray(self.obs, dtype=np.float64).copy()

    def state_of(self, kind: str) -> np.ndarray:
        """The state named by ``STATE_KINDS[kind]``: ``state()`` ("ee") or ``observation()`` ("full")."""
        if kind not in STATE_KINDS:
            raise ValueError(f"state kind is one of {sorted(STATE_KINDS)}, got {kind!r}")
        return self.state() if kind == "ee" else self.observation()

    def target(self) -> np.ndarray:
        """(3,) the current mocap target position (m): where the end effector is being pulled."""
        return np.asarray(self.env.data.mocap_pos[0], dtype=np.float64).copy()

    def action_for_target(self, command: np.ndarray) -> np.ndarray:
        """Meta-World's 4-D action that moves the mocap target to ``command[:3]`` (clipped to one step) with
        gripper effort ``command[3]``."""
        command = np.asarray(command, dtype=np.float64)
        if command.shape != (4,) or not np.all(np.isfinite(command)):
            raise ValueError(f"a command is 4 finite numbers (x, y, z, gripper), got {command!r}")
        delta = (command[:3] - self.target()) / self.env.action_scale
        return np.clip(np.append(delta, command[3]), -1.0, 1.0)

    def step_action(self, action: np.ndarray) -> bool:
        """One Meta-World step with a raw 4-D action; returns whether the task has succeeded (latched)."""
        if self.done:
            raise RuntimeError(f"the episode ended after {self.config.max_steps} steps; reset first")
        self.obs, _, _, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.steps += 1
        if info["success"] and not self.success:
            self.success, self.success_step = True, self.steps
        return self.success

    def step_target(self, command: np.ndarray) -> bool:
        """One step towards the absolute command (x, y, z, gripper effort); returns the latched success."""
        return self.step_action(self.action_for_target(command))

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the configured camera, upright."""
        import mujoco

        renderer = self._renderer()
        renderer.update_scene(self.env.data, camera=self.config.camera)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        rgb = renderer.render()
        if self.config.camera in FLIPPED_CAMERAS:
            rgb = rgb[::-1, ::-1]
        return np.ascontiguousarray(rgb)

    def close(self) -> None:
        """Frees the renderers' GL contexts (before interpreter exit, where EGL teardown would complain)."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


class ScriptedExpert:
    """Meta-World's scripted policy for a task, as absolute commands (target xyz, gripper effort)."""

    def __init__(self, task: str) -> None:
        import metaworld.policies as policies

        self.policy = getattr(policies, EXPERTS[check_task(task)])()

    def action(self, obs: np.ndarray) -> np.ndarray:
        """Meta-World's raw 4-D action for ``obs``, clipped to [-1, 1]."""
        return np.clip(self.policy.get_action(obs), -1.0, 1.0)

    def command(self, env: MetaWorldEnv) -> np.ndarray:
        """The absolute command equivalent to the expert's action in ``env``'s current state."""
        action = self.action(env.obs)
        target = np.clip(env.target() + action[:3] * env.env.action_scale, env.env.mocap_low, env.env.mocap_high)
        return np.append(target, action[3])
