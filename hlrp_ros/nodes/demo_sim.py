"""demo_sim: the planar-arm demo world as a ROS 2 node.

Publishes
  * ``/camera/image_raw`` (sensor_msgs/Image, rgb8) at ``camera_rate``: the top-down camera.
  * ``/joint_states`` (sensor_msgs/JointState) at ``physics_rate``: joint positions and velocities.
  * ``~/episode`` (std_msgs/String, JSON) at ``status_rate``: the episode's status, see below.

Topic names are absolute, like the policy and controller nodes' defaults (remap them together);
the reset and status topics are private (``/demo_sim/reset``, ``/demo_sim/episode`` by default).

Subscribes
  * ``/joint_command`` (sensor_msgs/JointState, by joint name; or std_msgs/Float64MultiArray in
    joint order when ``command_type`` is ``float64_array``): position commands, followed at no
    more than the joint velocity limits.
  * ``/instruction`` (std_msgs/String): the colour it names becomes the episode's goal target
    (the same topic the policy node listens to, so a switch mid-episode moves the goal too);
    an instruction naming no colour leaves the goal as it is.
  * ``~/reset`` (std_msgs/String): starts a new episode. Data is empty or JSON with optional
    ``seed`` (int: target layout and start pose) and ``target`` (colour of the goal).

Episode status JSON (``~/episode``): ``episode`` (counter, +1 per reset), ``time`` (s since the
reset), ``goal`` (colour or null), ``distance`` (m, end effector to the goal), ``on_target``,
``reached`` (was within ``success_radius`` at some time since the goal was set),
``success`` (stayed within the radius for ``success_dwell`` s; latched until the goal
changes), ``success_time`` (s since the reset, or null), ``nearest`` (colour of the nearest
target), ``ee`` ([x, y] m), ``q`` (joint positions), ``targets`` ({colour: [x, y]}).
"""

from __future__ import annotations

import json
import time

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from hlrp_ros.nodes import run_node
from hlrp_ros.sim.language import parse_colour
from hlrp_ros.sim.render import Camera
from hlrp_ros.sim.success import GoalDwell
from hlrp_ros.sim.world import COLOURS, World, WorldSpec

COMMAND_TYPES = ("joint_state", "float64_array")


def _float(desc: str, lo: float, hi: float) -> ParameterDescriptor:
    return ParameterDescriptor(description=desc, read_only=True,
                               floating_point_range=[FloatingPointRange(from_value=lo, to_value=hi)])


def _int(desc: str, lo: int, hi: int) -> ParameterDescriptor:
    return ParameterDescriptor(description=desc, read_only=True,
                               integer_range=[IntegerRange(from_value=lo, to_value=hi, step=1)])


class DemoSim(Node):
    """Planar arm + table + camera; episodes reset over a topic, status as JSON."""

    def __init__(self, **kwargs) -> None:
        super().__init__("demo_sim", **kwargs)
        p = self.declare_parameter
        p("camera_rate", 15.0, _float("Camera publishing rate (Hz)", 0.5, 200.0))
        p("physics_rate", 50.0, _float("World update and /joint_states rate (Hz)", 1.0, 1000.0))
        p("status_rate", 10.0, _float("~/episode status rate (Hz)", 0.5, 200.0))
        p("image_width", 64, _int("Camera image width (px)", 16, 2048))
        p("image_height", 64, _int("Camera image height (px)", 16, 2048))
        p("frame_id", "camera_top", ParameterDescriptor(description="Camera frame id", read_only=True))
        p("seed", 0, _int("Seed of the first episode (later resets without a seed continue the stream)",
                          0, 2**31 - 1))
        p("num_targets", 4, _int("Coloured targets on the table", 1, len(COLOURS)))
        p("success_radius", 0.1, _float("Success: end effector within this distance of the goal (m)", 0.01, 1.0))
        p("success_dwell", 0.5, _float("Success: time the end effector must stay on the goal (s)", 0.0, 10.0))
        p("command_type", "joint_state", ParameterDescriptor(
            description=f"Message type of joint_command: one of {COMMAND_TYPES}", read_only=True))
        gp = lambda name: self.get_parameter(name).value  # noqa: E731

        if gp("command_type") not in COMMAND_TYPES:
            raise ValueError(f"command_type must be one of {COMMAND_TYPES}, got {gp('command_type')!r}")
        self.world = World(WorldSpec(num_targets=gp("num_targets"), success_radius=gp("success_radius")),
                           seed=gp("seed"))
        self.camera = Camera(self.world.spec, gp("image_width"), gp("image_height"))
        self.frame_id = gp("frame_id")
        self.dwell = gp("success_dwell")
        self.joint_names = list(self.world.spec.arm.joint_names)
        self.episode = 0
        self.goal: str | None = None
        self._new_goal()
        self._q_prev = self.world.q.copy()
        self._last_step = time.monotonic()

        self.image_pub = self.create_publisher(Image, "/camera/image_raw", 5)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", 10)
        self.status_pub = self.create_publisher(String, "~/episode", 10)
        if gp("command_type") == "joint_state":
            self.create_subscription(JointState, "/joint_command", self._on_joint_command, 10)
        else:
            self.create_subscription(Float64MultiArray, "/joint_command", self._on_array_command, 10)
        self.create_subscription(String, "/instruction", self._on_instruction, 10)
        self.create_subscription(String, "~/reset", self._on_reset, 10)
        self.create_timer(1.0 / gp("physics_rate"), self._step)
        self.create_timer(1.0 / gp("camera_rate"), self._publish_image)
        self.create_timer(1.0 / gp("status_rate"), self._publish_status)
        self.get_logger().info(f"demo_sim ready: joints {self.joint_names}, targets "
                               f"{[t.colour for t in self.world.targets]}")

    # --- episode bookkeeping -------------------------------------------------------------------
    def _new_goal(self, colour: str | None = None) -> None:
        self.goal = colour
        self.dwell_rule = GoalDwell(self.dwell)

    def _on_reset(self, msg: String) -> None:
        try:
            request = json.loads(msg.data) if msg.data.strip() else {}
        except json.JSONDecodeError:
            self.get_logger().warn(f"ignoring reset with invalid JSON: {msg.data!r}")
            return
        self.world.reset(seed=request.get("seed"))
        self.episode += 1
        goal = request.get("target", self.goal)
        self._new_goal(goal if goal in [t.colour for t in self.world.targets] else None)
        self._q_prev = self.world.q.copy()
        self.get_logger().info(f"episode {self.episode}: goal {self.goal}, targets "
                               + ", ".join(f"{t.colour}@{np.round(t.position, 2).tolist()}"
                                           for t in self.world.targets))
        self._publish_status()

    def _on_instruction(self, msg: String) -> None:
        colour = parse_colour(msg.data)
        if colour is not None and colour != self.goal:
            self._new_goal(colour)

    # --- commands --------------------------------------------------------------------------------
    def _on_joint_command(self, msg: JointState) -> None:
        if not msg.position:
            return
        cmd = self.world.command.copy() if self.world.command is not None else self.world.q.copy()
        names = msg.name or self.joint_names
        for name, value in zip(names, msg.position):
            if name in self.joint_names:
                cmd[self.joint_names.index(name)] = value
        self.world.set_command(cmd)

    def _on_array_command(self, msg: Float64MultiArray) -> None:
        if len(msg.data) == len(self.joint_names):
            self.world.set_command(np.asarray(msg.data, float))

    # --- timers ----------------------------------------------------------------------------------
    def _step(self) -> None:
        now = time.monotonic()
        dt = min(now - self._last_step, 0.1)  # a stalled loop must not teleport the arm
        self._last_step = now
        self._q_prev = self.world.q.copy()
        self.world.step(dt)
        if self.goal is not None and self.goal in [t.colour for t in self.world.targets]:
            self.dwell_rule.update(self.world.on_target(self.goal), self.world.time)
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = self.joint_names
        msg.position = self.world.q.tolist()
        msg.velocity = ((self.world.q - self._q_prev) / dt if dt > 0 else 0 * self.world.q).tolist()
        self.joint_pub.publish(msg)

    def _publish_image(self) -> None:
        rgb = self.camera.render(self.world)
        msg = Image()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        msg.height, msg.width = rgb.shape[:2]
        msg.encoding = "rgb8"
        msg.step = rgb.shape[1] * 3
        msg.data = rgb.tobytes()
        self.image_pub.publish(msg)

    def status(self) -> dict:
        """The episode status (see the module docstring)."""
        w = self.world
        has_goal = self.goal is not None and self.goal in [t.colour for t in w.targets]
        return {
            "episode": self.episode,
            "time": round(w.time, 3),
            "goal": self.goal,
            "distance": round(w.distance_to(self.goal), 4) if has_goal else None,
            "on_target": bool(has_goal and w.on_target(self.goal)),
            "reached": self.dwell_rule.reached,
            "success": self.dwell_rule.success,
            "success_time": self.dwell_rule.success_time,
            "nearest": w.nearest_target()[0],
            "ee": np.round(w.ee, 4).tolist(),
            "q": np.round(w.q, 4).tolist(),
            "targets": {t.colour: np.round(t.position, 4).tolist() for t in w.targets},
        }

    def _publish_status(self) -> None:
        self.status_pub.publish(String(data=json.dumps(self.status())))


def main(args: list[str] | None = None) -> int:
    return run_node(DemoSim, "demo_sim", args)


if __name__ == "__main__":
    raise SystemExit(main())
