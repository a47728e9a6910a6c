"""Record demonstrations in the demo world over ROS 2 into a LeRobot v3.0 dataset.

``demo_sim`` runs the world, ``recorder_node`` records its camera, joint states, the commanded
positions and the instruction (exactly as on a real robot), and this process plays the
teleoperator: a scripted expert reads ``/joint_states`` and the episode's goal and commands the
arm on ``/joint_command``. Each episode: reset the world, say a training-template instruction,
start recording, drive to the goal until success plus ``--hold`` seconds on it, save (or discard an
episode that timed out)::

    python -m hlrp_ros.tools.record_demo --episodes 300 --out artifacts/e2e/dataset

The expert commands, every frame period (``1 / --fps``), the pose one period further on the
straight joint-space line to the goal (the speed of the generator's expert). The arm reaches each
command within the period, so a recorded ``action[t]`` is, as in any LeRobot dataset of a
position-controlled arm, the command in force at frame ``t``, close to the state there: a policy
trained on it runs with ``first_action_delay`` 0 (row 0 due at the observation), not the 0.1 s of
``config/demo.yaml``, which belongs to the generator's labels (row i = the pose (i + 1) periods
ahead). The dataset continues when ``--out`` already holds one: ``--episodes`` more are recorded,
their plans numbered on from the episodes saved (the same seed gives the same dataset either way).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("record_demo")


class ExpertDriver:
    """The teleoperator: commands the demo arm toward the episode's goal, and runs the recorder's services.

    Composed with an ``EpisodeDriver`` (its node, executor, episode status and instruction publisher).
    """

    def __init__(self, driver, period: float, recorder: str = "/recorder_node") -> None:
        from sensor_msgs.msg import JointState
        from std_srvs.srv import Trigger

        from hlrp_ros.sim.world import World

        self.driver, self.period = driver, period
        self.arm = World().spec.arm
        self.driving = False
        self.commands = 0  # published so far
        self.q: np.ndarray | None = None
        self._goal_q: tuple[tuple, np.ndarray] | None = None  # ((episode, goal), joint goal)
        self._JointState, self._Trigger = JointState, Trigger
        node = driver.node
        self.command_pub = node.create_publisher(JointState, "/joint_command", 10)
        node.create_subscription(JointState, "/joint_states", self._on_joint_state, 10)
        self.services = {name: node.create_client(Trigger, f"{recorder}/{name}") for name in ("start", "save", "discard")}
        node.create_timer(period, self._command)

    def _on_joint_state(self, msg) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        if all(n in index for n in self.arm.joint_names):
            self.q = np.array([msg.position[index[n]] for n in self.arm.joint_names])

    def _joint_goal(self, status: dict) -> np.ndarray:
        from hlrp_ros.sim.expert import inverse_kinematics

        key = (status["episode"], status["goal"])
        if self._goal_q is None or self._goal_q[0] != key:
            self._goal_q = (key, inverse_kinematics(self.arm, np.asarray(status["targets"][status["goal"]])))
        return self._goal_q[1]

    def _command(self) -> None:
        from hlrp_ros.sim.expert import expert_step

        status = self.driver.status
        if not self.driving or self.q is None or not status or status.get("goal") not in status.get("targets", {}):
            return
        target = expert_step(self.q, self._joint_goal(status), self.period)
        msg = self._JointState(name=list(self.arm.joint_names), position=[float(v) for v in target])
        msg.header.stamp = self.driver.node.get_clock().now().to_msg()
        self.command_pub.publish(msg)
        self.commands += 1

    def call(self, service: str, timeout: float = 30.0) -> tuple[bool, str]:
        """Call the recorder's ``service`` (start / save / discard): (success, message)."""
        client = self.services[service]
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"no service {client.srv_name}: is recorder_node running?")
        future = client.call_async(self._Trigger.Request())
        if not self.driver.spin_until(future.done, timeout):
            raise TimeoutError(f"{client.srv_name} did not answer within {timeout:g} s")
        result = future.result()
        return bool(result.success), str(result.message)

    def start_recording(self, instruction: str, timeout: float = 10.0) -> str:
        """Start driving, then an episode whose task is ``instruction``.

        Driving comes first: the recorder's first frame ever needs a commanded action, and no frame of this
        episode may take the previous episode's last command. The recorder's answer names the task it took;
        an episode started with the previous episode's instruction (not yet delivered) is discarded and retried.
        """
        deadline = time.monotonic() + timeout
        self.driving, first = True, self.commands + 1
        if not self.driver.spin_until(lambda: self.commands >= first, timeout):
            raise TimeoutError("the expert published no command")
        self.driver.spin_for(min(self.period, 0.05))  # delivered to the recorder
        while True:
            ok, message = self.call("start")
            if ok and message.endswith(repr(instruction)):
                return message
            if ok:
                self.call("discard")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the recorder did not start an episode of {instruction!r}: {message}")
            self.driver.spin_for(0.1)


def dataset_totals(dataset: Path) -> tuple[int, int]:
    """(episodes, frames) saved in ``dataset`` by its ``meta/info.json`` ((0, 0) when it does not exist yet)."""
    info = Path(dataset) / "meta" / "info.json"
    if not info.exists():
        return 0, 0
    totals = json.loads(info.read_text())
    return int(totals["total_episodes"]), int(totals["total_frames"])


def recorded_episodes(dataset: Path) -> int:
    """Episodes already saved in ``dataset`` (0 when it does not exist yet)."""
    return dataset_totals(dataset)[0]


def record(args: argparse.Namespace) -> dict:
    from hlrp_ros.graph import NodeProcess, isolated_ros_env
    from hlrp_ros.tools.closed_loop import EpisodeDriver, config_file, joined_graph, shut_down
    from hlrp_ros.tools.evaluate import plan_episode

    env = isolated_ros_env()
    log_dir = Path(tempfile.mkdtemp(prefix="hlrp_record_"))
    files = [config_file("hlrp.yaml"), config_file("demo.yaml")]
    procs = [NodeProcess("demo_sim", params_files=files, env=env, log_dir=log_dir),
             NodeProcess("recorder_node", params={
                 "output_dir": str(Path(args.out).resolve()), "fps": args.fps, "camera_names": ["top"],
                 "camera_topics": ["/camera/image_raw"], "robot_type": "hlrp_demo_arm", "status_period": 10.0},
                 env=env, log_dir=log_dir)]
    for proc in procs:
        proc.start()
    saved, discarded, t0 = 0, 0, time.monotonic()
    first, frames_before = dataset_totals(args.out)  # a continued dataset continues the episode plans
    try:
        with joined_graph(env):
            driver = EpisodeDriver("hlrp_demo_expert")
            expert = ExpertDriver(driver, 1.0 / args.fps)
            try:
                if not driver.spin_until(lambda: driver.status is not None and expert.q is not None
                                         and all(c.service_is_ready() for c in expert.services.values()),
                                         args.ready_timeout):
                    logs = "\n".join(p.node_name + ":\n" + p.output()[-2000:] for p in procs)
                    raise RuntimeError(f"nodes not ready; logs in {log_dir}:\n{logs}")
                for i in range(args.episodes):
                    plan = plan_episode("train", args.seed, first + i, 0.0)
                    state = {"started": False}

                    def begin(_status, plan=plan, state=state) -> None:
                        if not state["started"]:  # the world acknowledged the reset: move and record
                            expert.start_recording(plan["instruction"])
                            state["started"] = True

                    outcome = driver.run_episode(plan["seed"], plan["colour"], plan["instruction"], args.timeout,
                                                 on_tick=begin, hold=args.hold)
                    expert.driving = False
                    if outcome.success:
                        saved += expert.call("save")[0]
                    else:
                        expert.call("discard")
                        discarded += 1
                    print(f"\repisode {i + 1}/{args.episodes}: {saved} saved, {discarded} discarded "
                          f"({time.monotonic() - t0:.0f} s)   ", end="", flush=True)
                print()
            finally:
                driver.close()
    finally:
        codes = shut_down(procs)
        logger.info("node exit codes: %s (logs in %s)", codes, log_dir)
    return {"episodes_saved": saved, "episodes_discarded": discarded,
            "frames": dataset_totals(args.out)[1] - frames_before,
            "seconds": round(time.monotonic() - t0, 1), "fps": args.fps, "seed": args.seed, "out": str(args.out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("artifacts/e2e/dataset"))
    parser.add_argument("--seed", type=int, default=100,
                        help="episode plans (layouts, goals, instructions); evaluation uses other seeds")
    parser.add_argument("--fps", type=int, default=10, help="recording clock = expert command rate")
    parser.add_argument("--timeout", type=float, default=8.0, help="sim seconds an episode may take")
    parser.add_argument("--hold", type=float, default=0.5, help="seconds recorded on the goal after success")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = record(args)
    print(json.dumps(summary, indent=2))
    return 0 if summary["episodes_saved"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
