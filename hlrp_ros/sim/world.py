"""ROS-free planar-arm world: a 3-joint arm over a table with coloured targets.

Coordinates are metres in the table plane; the arm's base is at the origin and the
camera looks straight down (x to the right, y away from the base). Joint angles are
radians; joint 1 is measured from the +x axis, joints 2 and 3 relative to the previous
link. Commands are joint positions, followed at no more than each joint's velocity
limit (the way a position-controlled arm behaves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Target colours, in a fixed order (names used by instructions and the success check).
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: RGB values of the target colours.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 205, 30),
}


@dataclass(frozen=True)
class ArmSpec:
    """Geometry and limits of the planar arm."""

    # Joint names, base to tip (published on /joint_states and used by the policy).
    joint_names: tuple[str, ...] = ("joint_1", "joint_2", "joint_3")
    # Link lengths in metres, base to tip.
    link_lengths: tuple[float, ...] = (0.45, 0.35, 0.25)
    # Joint position limits (rad): lower and upper per joint.
    lower: tuple[float, ...] = (-1.8, -2.7, -2.7)
    upper: tuple[float, ...] = (math.pi + 0.8, 2.7, 2.7)
    # Joint velocity limits (rad/s) applied when following position commands.
    velocity_limits: tuple[float, ...] = (2.5, 2.5, 2.5)

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if n < 3 or not all(len(v) == n for v in (self.link_lengths, self.lower, self.upper, self.velocity_limits)):
            raise ValueError("ArmSpec needs >= 3 joints and one length/limit per joint")
        if any(lo >= hi for lo, hi in zip(self.lower, self.upper)) or min(self.velocity_limits) <= 0:
            raise ValueError("ArmSpec needs lower < upper and positive velocity limits")

    @property
    def dof(self) -> int:
        return len(self.joint_names)

    @property
    def reach(self) -> float:
        return float(sum(self.link_lengths))

    def clip(self, q: np.ndarray) -> np.ndarray:
        """Joint positions clipped to the position limits."""
        return np.clip(q, self.lower, self.upper)


def forward_kinematics(spec: ArmSpec, q: np.ndarray) -> np.ndarray:
    """Positions of the base, every joint and the end effector: (dof + 1, 2) metres."""
    points = [np.zeros(2)]
    angle = 0.0
    for length, qi in zip(spec.link_lengths, q):
        angle += float(qi)
        points.append(points[-1] + length * np.array([math.cos(angle), math.sin(angle)]))
    return np.stack(points)


@dataclass(frozen=True)
class WorldSpec:
    """Table, targets and episode settings."""

    arm: ArmSpec = field(default_factory=ArmSpec)
    # Number of targets on the table (each a distinct colour from COLOURS).
    num_targets: int = 4
    # Target placement: distance from the base (m) and bearing (rad, from +x).
    target_radius_range: tuple[float, float] = (0.5, 0.95)
    target_bearing_range: tuple[float, float] = (-0.35, math.pi + 0.35)
    # Minimum distance between target centres (m).
    min_target_separation: float = 0.35
    # Radius of a drawn target disc (m).
    target_size: float = 0.09
    # Success: end effector within this distance (m) of the instructed target's centre.
    success_radius: float = 0.1
    # Camera window: centre (m) and half width (m) of the square the top-down camera sees.
    view_center: tuple[float, float] = (0.0, 0.3)
    view_half_size: float = 1.15

    def __post_init__(self) -> None:
        if not 1 <= self.num_targets <= len(COLOURS):
            raise ValueError(f"num_targets must be in [1, {len(COLOURS)}]")


@dataclass
class Target:
    colour: str
    position: np.ndarray  # (2,) metres


class World:
    """State of one episode: joint positions, the commanded positions and the targets."""

    def __init__(self, spec: WorldSpec | None = None, seed: int | None = None) -> None:
        self.spec = spec or WorldSpec()
        self.rng = np.random.default_rng(seed)
        self.q = np.zeros(self.spec.arm.dof)
        self.command: np.ndarray | None = None
        self.targets: list[Target] = []
        self.time = 0.0
        self.reset()

    # --- episodes ---------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, q0: np.ndarray | None = None, num_targets: int | None = None) -> None:
        """New episode: targets at random positions, the arm in a random tucked pose.

        ``num_targets`` overrides the spec's number of targets for this episode (data collection).
        """
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.targets = self.sample_targets(self.rng, num_targets)
        self.q = self.spec.arm.clip(np.asarray(q0, float)) if q0 is not None else self.sample_start(self.rng)
        self.command = None
        self.time = 0.0

    def sample_targets(self, rng: np.random.Generator, num_targets: int | None = None) -> list[Target]:
        """Distinct colours at random reachable positions, at least ``min_target_separation`` apart."""
        s = self.spec
        n = s.num_targets if num_targets is None else num_targets
        colours = list(rng.permutation(COLOURS)[:n])
        positions: list[np.ndarray] = []
        while len(positions) < n:
            r = rng.uniform(*s.target_radius_range)
            b = rng.uniform(*s.target_bearing_range)
            p = np.array([r * math.cos(b), r * math.sin(b)])
            if all(np.linalg.norm(p - o) >= s.min_target_separation for o in positions):
                positions.append(p)
        return [Target(str(c), p) for c, p in zip(colours, positions, strict=True)]

    def sample_start(self, rng: np.random.Generator) -> np.ndarray:
        """A random start pose around the tucked home pose (arm folded near the base)."""
        side = float(rng.choice([1.0, -1.0]))
        home = np.zeros(self.spec.arm.dof)
        home[:3] = (math.pi / 2, 2.0 * side, -2.0 * side)
        q = home + rng.uniform(-0.5, 0.5, self.spec.arm.dof)
        return self.spec.arm.clip(q)

    # --- dynamics ---------------------------------------------------------------------------------
    def set_command(self, q_cmd: np.ndarray) -> None:
        """Commanded joint positions (clipped to the limits)."""
        self.command = self.spec.arm.clip(np.asarray(q_cmd, float))

    def step(self, dt: float) -> None:
        """Advance ``dt`` seconds: move toward the command at no more than the velocity limits."""
        if self.command is not None:
            max_step = np.asarray(self.spec.arm.velocity_limits) * dt
            self.q = self.spec.arm.clip(self.q + np.clip(self.command - self.q, -max_step, max_step))
        self.time += dt

    # --- queries ----------------------------------------------------------------------------------
    @property
    def ee(self) -> np.ndarray:
        """End-effector position (2,) in metres."""
        return forward_kinematics(self.spec.arm, self.q)[-1]

    def target(self, colour: str) -> Target:
        for t in self.targets:
            if t.colour == colour:
                return t
        raise KeyError(f"no {colour!r} target on the table (have {[t.colour for t in self.targets]})")

    def distance_to(self, colour: str) -> float:
        """Distance (m) from the end effector to the centre of the ``colour`` target."""
        return float(np.linalg.norm(self.ee - self.target(colour).position))

    def on_target(self, colour: str) -> bool:
        """Whether the end effector is within ``success_radius`` of the ``colour`` target."""
        return self.distance_to(colour) <= self.spec.success_radius

    def nearest_target(self) -> tuple[str, float]:
        """Colour and distance of the target nearest the end effector."""
        d = [(t.colour, float(np.linalg.norm(self.ee - t.position))) for t in self.targets]
        return min(d, key=lambda cd: cd[1])
