"""metaworld_sim: the Meta-World MT10 world (``hlrp_ros.sim.metaworld_env``) as a ROS 2 node.

Publishes (stamped with the simulated time, which it also publishes on ``/clock``)
  * ``/camera/image_raw`` (sensor_msgs/Image, rgb8): the ``camera`` (corner2, upright), every
    ``camera_every`` steps.
  * ``/joint_states`` (sensor_msgs/JointState): ``ee_x``, ``ee_y``, ``ee_z`` (end effector, m, world
    frame) and ``gripper`` (finger opening, 0 closed .. 1 open), every step.
  * ``~/observation`` (std_msgs/Float64MultiArray): Meta-World's full 39-D observation (hand xyz,
    gripper, two objects' position and quaternion, the previous step's 18 values, the goal xyz).
  * ``~/full_state`` (sensor_msgs/JointState): the same 39 values as named positions (``OBS_NAMES``:
    ``ee_x`` .. ``gripper``, ``obj1_x`` .. ``obj1_q3``, ``obj2_*``, ``prev_*``, ``goal_x`` .. ``goal_z``),
    every step with the ``/joint_states`` stamp: the state of a policy trained on the full observation
    (policy_node ``joint_states_topic: /metaworld_sim/full_state``, ``state_joint_names``: ``OBS_NAMES``;
    its action is still the 4-D command named by ``STATE_NAMES``, which the message also carries).
  * ``~/episode`` (std_msgs/String, JSON): ``episode`` (counter), ``task``, ``seed``, ``step``,
    ``time`` (simulated s since the episode's first step), ``running`` (false while the world waits for
    the episode's first chunk and after it ended), ``success``, ``success_step``, ``done``
    (success or ``max_steps``), ``ee``, ``lockstep`` (wait counters, see below).
  * ``/clock`` (rosgraph_msgs/Clock): run the other nodes with ``use_sim_time``.

Subscribes
  * ``/joint_command`` (sensor_msgs/JointState by name, the controller's output): an absolute
    command with the same four names: target end-effector position (m) and gripper effort (-1 open
    .. +1 close). A command held is a robot standing still.
  * ``/action_chunk`` (hlrp_ros/ActionChunk): tells when the policy has answered (lock-step) and when
    its first chunk of a new episode has arrived (both modes).
  * ``~/reset`` (std_msgs/String): JSON ``{"task": "push-v3", "seed": 7}`` (both optional: the
    current task, the next seed). The clock moves one step, so no stamp carries two episodes' data, and
    the new episode's world stays frozen until the policy's first chunk computed from it (every input
    stamped at or after the reset) has arrived.

Time modes (``time_mode``)
  * ``lockstep``: simulated time advances only as far as the policy and controller have answered. The
    policy node (``inference_period`` = ``chunk_period``) infers when the clock reaches its timer;
    the world then waits for that chunk before stepping more than one step past it, and before each
    step for the controller's command of that instant. Evaluations do not depend on CPU speed or
    load, except when the policy skips a tick (its inference took longer than ``inference_period`` of
    wall time): after ``lockstep_timeout`` the world goes on to the next tick, and counts it.
  * ``realtime``: the world steps at ``realtime_factor`` x real time on the wall clock, whatever the
    policy does; inference latency delays the actions as on a robot.
"""

from __future__ import annotations

import json
import time

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from hlrp_ros.chunk_codec import time_to_ns
from hlrp_ros.nodes import (
    ParamSpec,
    declare_parameters,
    run_node,
    steady_timer,
)
from hlrp_ros.sim.metaworld_env import (
    CAMERAS,
    MAX_STEPS,
    MT10_TASKS,
    OBS_NAMES,
    STATE_NAMES,
    STEP_DT,
    MetaWorldConfig,
    MetaWorldEnv,
    check_task,
)

TIME_MODES = ("lockstep", "realtime")
STEP_NS = round(STEP_DT * 1e9)

PARAMS = (
    ParamSpec("time_mode", "lockstep", "lockstep: simulated time waits for the policy and controller; realtime: "
              "it runs at realtime_factor x the wall clock.", choices=TIME_MODES),
    ParamSpec("task", "reach-v3", "Task of the first episode (MT10).", choices=MT10_TASKS),
    ParamSpec("seed", 0, "Seed of the first episode's layout (later resets without a seed count up from it).",
              minimum=0, maximum=2**31 - 1),
    ParamSpec("camera", "corner2", "Camera published.", choices=CAMERAS),
    ParamSpec("image_size", 64, "Camera image width and height (px).", minimum=16, maximum=1024),
    ParamSpec("camera_every", 1, "Publish an image every this many steps (a step is 12.5 ms).", minimum=1,
              maximum=1000),
    ParamSpec("max_steps", MAX_STEPS, "Steps before an episode ends unsuccessfully.", minimum=1, maximum=MAX_STEPS),
    ParamSpec("chunk_period", 0.1, "lockstep: simulated seconds between the policy's chunks (its inference_period).",
              minimum=STEP_DT, maximum=10.0),
    ParamSpec("lockstep_timeout", 2.0, "lockstep: wall seconds to wait for a chunk or a command before stepping "
              "on (counted in the status; the policy skips a tick when an inference ran longer than its period).",
              minimum=0.01, maximum=3600.0),
    ParamSpec("realtime_factor", 0.5, "realtime: simulated seconds per wall second.", minimum=0.01, maximum=4.0),
    ParamSpec("command_topic", "/joint_command", "sensor_msgs/JointState command input (the controller's output)."),
    ParamSpec("chunk_topic", "/action_chunk", "hlrp_ros/ActionChunk input: when the policy has answered."),
)


class MetaWorldSim(Node):
    """Meta-World MT10 with a simulated clock, stepped in lock-step with the policy or in real time."""

    def __init__(self, **kwargs) -> None:
        super().__init__("metaworld_sim", **kwargs)
        self.params = p = declare_parameters(self, PARAMS)
        self.env = MetaWorldEnv(MetaWorldConfig(camera=p["camera"], image_size=p["image_size"],
                                                max_steps=p["max_steps"]))
        self.lockstep = p["time_mode"] == "lockstep"
        self.chunk_period_ns = round(p["chunk_period"] * 1e9)
        self.timeout = p["lockstep_timeout"]
        self.now_ns = 0
        self.episode = 0
        self.next_seed = p["seed"]
        self.command: np.ndarray | None = None
        self.command_stamp_ns = -1
        self.chunk_stamp_ns: int | None = None  # observation stamp of the newest chunk
        self.skipped = 0  # policy ticks given up on since the newest chunk
        self.waits = {"chunk_timeouts": 0, "command_timeouts": 0}
        self._waiting_since: float | None = None
        self._image: Image | None = None

        sensor = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.image_pub = self.create_publisher(Image, "/camera/image_raw", sensor)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", 10)
        self.obs_pub = self.create_publisher(Float64MultiArray, "~/observation", 10)
        self.full_state_pub = self.create_publisher(JointState, "~/full_state", 10)
        self.status_pub = self.create_publisher(String, "~/episode", 10)
        self.create_subscription(JointState, p["command_topic"], self._on_command, 10)
        from hlrp_ros.msg import ActionChunk

        self.create_subscription(ActionChunk, p["chunk_topic"], self._on_chunk, 10)
        self.create_subscription(String, "~/reset", self._on_reset, 10)
        self._reset(p["task"], self.next_seed)
        period = 0.001 if self.lockstep else STEP_DT / p["realtime_factor"]
        self._last_tick = time.monotonic()
        steady_timer(self, period, self._tick)
        self.get_logger().info(f"metaworld_sim ready: {p['time_mode']}, task {p['task']}, camera {p['camera']} "
                               f"{p['image_size']} px, state {list(STATE_NAMES)}")

    # --- inputs --------------------------------------------------------------------------------------
    def _on_command(self, msg: JointState) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        if not all(n in index for n in STATE_NAMES) or len(msg.position) != len(msg.name):
            return
        command = np.array([msg.position[index[n]] for n in STATE_NAMES])
        if np.all(np.isfinite(command)):
            self.command = command
            self.command_stamp_ns = time_to_ns(msg.header.stamp)

    def _on_chunk(self, msg) -> None:
        stamp = time_to_ns(msg.header.stamp)
        if self.chunk_stamp_ns is None or stamp > self.chunk_stamp_ns:
            self.chunk_stamp_ns, self.skipped = stamp, 0

    def _on_reset(self, msg: String) -> None:
        try:
            request = json.loads(msg.data) if msg.data.strip() else {}
            task = check_task(request.get("task", self.env.task))
            seed = int(request.get("seed", self.next_seed))
        except (json.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            self.get_logger().warning(f"ignoring reset {msg.data!r}: {exc}")
            return
        self._reset(task, seed)

    def _reset(self, task: str, seed: int) -> None:
        self.env.reset(task, seed)
        self.episode += 1
        self.next_seed = seed + 1
        # The new episode starts one step later, so that its observations never share a stamp with the previous
        # episode's last ones: a policy gathering at that instant could pair one episode's image with the other's
        # state, and the chunk (stamped with its oldest input) would pass for this episode's first.
        self._advance_clock()
        self.reset_ns = self.now_ns
        self.running = False  # frozen until the first chunk computed from this episode has arrived
        self.get_logger().info(f"episode {self.episode}: {task} seed {seed}")
        self._publish_observation(render=True)

    # --- stepping --------------------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.lockstep:
            self._advance()
            return
        for _ in range(20):  # a few steps per timer call: the timer period bounds the step rate otherwise
            if not self._may_advance():
                return
            self._advance()

    def _may_advance(self) -> bool:
        """Lock-step: whether the policy and controller have answered for the current instant."""
        if self.chunk_stamp_ns is None:  # no policy yet: let the clock run so that its timer can fire
            return self._paced()
        # One step of slack past the policy's next tick: its observation may be from the step before.
        if self.now_ns >= self.chunk_stamp_ns + (1 + self.skipped) * self.chunk_period_ns + STEP_NS:
            if not self._waited("chunk_timeouts"):
                return False
            self.skipped += 1  # the policy skipped that tick (it does when inference ran long): wait for the next
            return True
        if self.running and not self.env.done and self.command_stamp_ns < self.now_ns - STEP_NS // 2:
            return self._waited("command_timeouts")
        self._waiting_since = None
        return True

    def _paced(self) -> bool:
        now = time.monotonic()
        if now - self._last_tick < STEP_DT:
            return False
        self._last_tick = now
        return True

    def _waited(self, counter: str) -> bool:
        """False while the wait is shorter than lockstep_timeout; then counts it and lets one step through."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if now - self._waiting_since < self.timeout:
            return False
        self.waits[counter] += 1
        self._waiting_since = None
        return True

    def _advance(self) -> None:
        """One step of simulated time: world physics when the episode runs, else only the clock."""
        if not self.running and self.chunk_stamp_ns is not None and self.chunk_stamp_ns >= self.reset_ns \
                and self.now_ns >= self.chunk_stamp_ns + 2 * STEP_NS:
            # The controller has had a tick with the episode's first chunk: its commands are this episode's.
            self.running = True
        stepped = self.running and not self.env.done and not self.env.success
        if stepped:
            command = self.command if self.command is not None else np.append(self.env.target(), -1.0)
            self.env.step_target(command)
        self._advance_clock()
        self._publish_observation(render=stepped and self.env.steps % self.params["camera_every"] == 0)

    def _advance_clock(self) -> None:
        """Simulated time moves one step, published on /clock."""
        self.now_ns += STEP_NS
        self.clock_pub.publish(Clock(clock=self._stamp()))

    # --- outputs ---------------------------------------------------------------------------------------
    def _stamp(self):
        from builtin_interfaces.msg import Time

        return Time(sec=self.now_ns // 10**9, nanosec=self.now_ns % 10**9)

    def _publish_observation(self, render: bool) -> None:
        stamp = self._stamp()
        if render or self._image is None:
            rgb = self.env.render()
            self._image = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3,
                                data=rgb.tobytes())
            self._image.header.frame_id = self.params["camera"]
        self._image.header.stamp = stamp
        self.image_pub.publish(self._image)
        joints = JointState(name=list(STATE_NAMES), position=self.env.state().tolist())
        joints.header.stamp = stamp
        self.joint_pub.publish(joints)
        observation = self.env.observation().tolist()
        self.obs_pub.publish(Float64MultiArray(data=observation))
        full = JointState(name=list(OBS_NAMES), position=observation)
        full.header.stamp = stamp
        self.full_state_pub.publish(full)
        self.status_pub.publish(String(data=json.dumps(self.status())))

    def status(self) -> dict:
        """The episode status (see the module docstring)."""
        env = self.env
        return {"episode": self.episode, "task": env.task, "seed": env.seed, "step": env.steps,
                "time": round(env.time, 4), "running": self.running and not env.done and not env.success,
                "success": env.success, "success_step": env.success_step, "done": env.done or env.success,
                "ee": np.round(env.state()[:3], 4).tolist(), "clock": self.now_ns * 1e-9,
                "chunk_stamp": None if self.chunk_stamp_ns is None else self.chunk_stamp_ns * 1e-9,
                "lockstep": dict(self.waits)}

    def destroy_node(self) -> None:
        self.env.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(MetaWorldSim, "metaworld_sim", args)


if __name__ == "__main__":
    raise SystemExit(main())
