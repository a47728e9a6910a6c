"""The demo's closed loop over ROS 2: bring up world + policy + controller, drive episodes.

``bring_up`` starts ``demo_sim``, ``policy_node`` and ``controller_node`` as processes with the
parameter files the launch file uses (``config/hlrp.yaml`` then ``config/demo.yaml``) and the
checkpoint. ``EpisodeDriver`` is an rclpy node that resets episodes (``/demo_sim/reset``),
publishes instructions (``/instruction``, reliable + transient local like the policy node
expects), and follows ``/demo_sim/episode`` and ``/action_chunk`` for statistics.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hlrp_ros.graph import NodeProcess, package_share

#: Where the shipped demo checkpoint lives, relative to the share directory / the source tree.
CHECKPOINT_SUBDIR = Path("models") / "demo_arm"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def config_file(name: str) -> Path:
    """``config/<name>`` from the installed share directory, else from the source tree."""
    for root in (package_share(), SOURCE_ROOT):
        path = Path(root) / "config" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"config/{name} not found under {package_share()} or {SOURCE_ROOT}")


#: The shipped checkpoint of each world, relative to the share directory / the source tree.
WORLD_CHECKPOINTS = {"demo": CHECKPOINT_SUBDIR, "metaworld": Path("models") / "metaworld_mt10"}


def default_checkpoint(world: str = "demo") -> Path:
    """The world's shipped checkpoint (demo: ``share/hlrp_ros/models/demo_arm``, else ``<source>/models/demo_arm``)."""
    subdir = WORLD_CHECKPOINTS[world]
    for root in (package_share(), SOURCE_ROOT):
        path = Path(root) / subdir
        if (path / "config.json").is_file():
            return path
    raise FileNotFoundError(f"no {world} checkpoint at {package_share() / subdir} or {SOURCE_ROOT / subdir}")


#: World name -> (simulator executable, parameter file layered over config/hlrp.yaml).
WORLDS = {"demo": ("demo_sim", "demo.yaml"), "metaworld": ("metaworld_sim", "metaworld.yaml")}


def bring_up(checkpoint: Path, env: dict[str, str], log_dir: Path, policy_params: dict | None = None,
             sim_params: dict | None = None, world: str = "demo", controller_params: dict | None = None) -> list[NodeProcess]:
    """Start the world's simulator, policy_node and controller_node (same executables/parameter files as the
    launch file)."""
    simulator, world_file = WORLDS[world]
    files = [config_file("hlrp.yaml"), config_file(world_file)]
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = [
        NodeProcess(simulator, params_files=files, params=dict(sim_params or {}), env=env, log_dir=log_dir),
        NodeProcess("policy_node", params_files=files,
                    params={"checkpoint": str(Path(checkpoint).resolve()), **(policy_params or {})},
                    env=env, log_dir=log_dir),
        NodeProcess("controller_node", params_files=files, params=dict(controller_params or {}), env=env,
                    log_dir=log_dir),
    ]
    for proc in procs:
        proc.start()
    return procs


@contextlib.contextmanager
def joined_graph(env: dict[str, str]) -> Iterator[None]:
    """This process's rclpy nodes join the DDS graph of ``env`` (its domain and discovery range) meanwhile."""
    keys = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys if k in env})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shut_down(procs: list[NodeProcess]) -> dict[str, int | None]:
    """Stop every process (by process group); their exit codes by node name."""
    return {p.node_name: p.stop() for p in reversed(procs)}


@dataclass
class EpisodeOutcome:
    """Result of one closed-loop episode (times in seconds of sim time since the reset)."""

    seed: int
    goal: str                    # colour the episode ended asking for
    instruction: str             # last instruction sent
    success: bool                # stayed on the goal for the dwell time
    reached: bool                # was on the goal at some time (since the goal was last set)
    final_on_target: bool        # on the goal when the episode ended
    final_nearest: str           # nearest target at the end
    final_distance: float | None
    first_goal: str              # colour asked for at the start (differs from goal after a switch)
    duration: float
    success_time: float | None
    extra: dict = field(default_factory=dict)


class GraphDriver:
    """This process's own rclpy node (private context, single-threaded executor) on the nodes' graph,
    with the latched instruction publisher every world's driver needs."""

    def __init__(self, node_name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self._rclpy, self._String = rclpy, String
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = Node(node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction_pub = self.node.create_publisher(String, "/instruction", latched)

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)
            if predicate():
                return True
        return False

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)


class EpisodeDriver(GraphDriver):
    """Drives episodes of the demo world over ROS 2 from this process."""

    def __init__(self, node_name: str = "hlrp_episode_driver") -> None:
        from std_msgs.msg import String

        from hlrp_ros.msg import ActionChunk

        super().__init__(node_name)
        self.reset_pub = self.node.create_publisher(String, "/demo_sim/reset", 10)
        self.status: dict | None = None
        self.chunks: deque = deque(maxlen=200)  # (wall time, inference latency s, instruction)
        self.node.create_subscription(String, "/demo_sim/episode", self._on_status, 10)
        self.node.create_subscription(ActionChunk, "/action_chunk", self._on_chunk, 10)
        self.instruction = ""

    def _on_status(self, msg) -> None:
        self.status = json.loads(msg.data)

    def _on_chunk(self, msg) -> None:
        self.chunks.append((time.monotonic(), float(msg.inference_latency), msg.instruction))

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.02, max(0.0, end - time.monotonic())))

    def say(self, text: str) -> None:
        self.instruction = text
        self.instruction_pub.publish(self._String(data=text))

    def chunk_rate(self, window: float = 3.0) -> float:
        now = time.monotonic()
        recent = [c for c in self.chunks if now - c[0] <= window]
        return len(recent) / window

    def mean_latency_ms(self, n: int = 20) -> float:
        recent = list(self.chunks)[-n:]
        return 1000.0 * sum(c[1] for c in recent) / len(recent) if recent else float("nan")

    def wait_ready(self, instruction: str, timeout: float) -> bool:
        """Wait until the world reports status and the policy publishes chunks."""
        if not self.spin_until(lambda: self.status is not None and self.reset_pub.get_subscription_count() > 0,
                               timeout):
            return False
        self.say(instruction)
        return self.spin_until(lambda: len(self.chunks) >= 2, timeout)

    def run_episode(self, seed: int, colour: str, instruction: str, timeout: float,
                    switch: tuple[float, str, str] | None = None,
                    on_tick: Callable[[dict], None] | None = None, stop_on_success: bool = True,
                    hold: float = 0.0) -> EpisodeOutcome:
        """One episode: reset with ``seed`` and goal ``colour``, say ``instruction``, run until success or timeout.

        ``switch=(t, instruction, colour)`` says a new instruction once the episode's sim time reaches ``t``;
        then success is judged on the new colour. ``hold``: after success, keep running this many seconds of
        sim time (the policy keeps acting) so that ``final_on_target`` says whether the arm *stays* there.
        """
        episode = (self.status or {}).get("episode", 0) + 1
        self.reset_pub.publish(self._String(data=json.dumps({"seed": seed, "target": colour})))
        self.say(instruction)
        if not self.spin_until(lambda: self.status and self.status["episode"] >= episode
                               and self.status["goal"] == colour, 10.0):
            raise TimeoutError("the world did not acknowledge the reset")
        goal, switched, start, done_at = colour, False, time.monotonic(), None
        while True:
            self.spin_for(0.05)
            st = self.status
            if switch is not None and not switched and st["time"] >= switch[0]:
                self.say(switch[1])
                goal, switched = switch[2], True
                self.spin_until(lambda new=goal: self.status["goal"] == new, 5.0)
                st = self.status
            if on_tick is not None:
                on_tick(st)
            if done_at is None and st["success"] and st["goal"] == goal and (switch is None or switched) \
                    and st["time"] <= timeout:
                done_at = st["time"]
            done = done_at is not None
            if (done and stop_on_success and st["time"] >= done_at + hold) or (not done and st["time"] >= timeout) \
                    or st["time"] >= timeout + hold or time.monotonic() - start > 3 * (timeout + hold) + 10:
                break
        return EpisodeOutcome(seed=seed, goal=goal, instruction=self.instruction, success=bool(done),
                              reached=bool(st["reached"] and st["goal"] == goal),
                              final_on_target=bool(st["on_target"] and st["goal"] == goal),
                              final_nearest=st["nearest"], final_distance=st["distance"], first_goal=colour,
                              duration=float(st["time"]), success_time=st["success_time"])

