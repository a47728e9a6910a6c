"""metaworld_sim over real DDS: its topics, lock-step time, commands, resets and success.

The test node plays policy and controller: it answers each step with the scripted expert's command
(stamped with the simulated time) and publishes an ActionChunk every 0.1 s of simulated time.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

# Imported first: it chooses the offscreen GL backend (EGL) before anything loads mujoco.
metaworld_env = pytest.importorskip("hlrp_ros.sim.metaworld_env")
pytest.importorskip("metaworld", reason="metaworld is in requirements.txt; run `make setup`")

from ros_testing import STARTUP_TIMEOUT, SpinningNode, joint_state, reliable_qos, wait_for  # noqa: E402

from hlrp_ros.chunk_codec import time_to_ns  # noqa: E402
from hlrp_ros.sim.metaworld_env import STATE_NAMES, ScriptedExpert, gl_problem  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.skipif(gl_problem() is not None, reason=str(gl_problem()))]


class PolicyAndController:
    """Answers the world like policy_node + controller_node would, with the scripted expert's commands."""

    def __init__(self, spinning: SpinningNode, task: str) -> None:
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray, String

        from hlrp_ros.msg import ActionChunk

        node = spinning.node
        self._String = String
        self.expert = ScriptedExpert(task)
        self.answering = True
        self.last_chunk_ns: int | None = None
        self.status: dict = {}
        self.images = spinning.collect(Image, "/camera/image_raw", reliable_qos(5))
        self.states = spinning.collect(JointState, "/joint_states")
        self.command_pub = node.create_publisher(JointState, "/joint_command", 10)
        self.chunk_pub = node.create_publisher(ActionChunk, "/action_chunk", reliable_qos(1))
        self.reset_pub = node.create_publisher(String, "/metaworld_sim/reset", 10)
        node.create_subscription(Float64MultiArray, "/metaworld_sim/observation", self._on_obs, 10)
        node.create_subscription(String, "/metaworld_sim/episode", self._on_status, 10)
        self._mocap: np.ndarray | None = None

    def _on_status(self, msg) -> None:
        self.status = json.loads(msg.data)

    def _on_obs(self, msg) -> None:
        """Each observation comes with the step's joint state; answer for the instant it is stamped."""
        if not self.answering or not self.states:
            return
        from hlrp_ros.chunk_codec import encode_chunk

        stamp = self.states[-1][1].header.stamp
        now_ns = stamp.sec * 10**9 + stamp.nanosec
        if self.last_chunk_ns is None or now_ns - self.last_chunk_ns >= 100_000_000:
            self.last_chunk_ns = now_ns
            self.chunk_pub.publish(encode_chunk(np.zeros((16, 4)), STATE_NAMES, chunk_id=now_ns, stamp_ns=now_ns,
                                                first_action_ns=now_ns, dt=0.0125))
        obs = np.asarray(msg.data)
        action = self.expert.action(obs)
        # The absolute target the delta integrates to; the hand's own position approximates the mocap target.
        self._mocap = obs[:3] if self._mocap is None else self._mocap
        self._mocap = np.clip(self._mocap + action[:3] * 0.01, [-0.5, 0.4, 0.05], [0.5, 1.0, 0.5])
        self.command_pub.publish(joint_state(now_ns, STATE_NAMES, [*self._mocap, action[3]]))

    def reset(self, task: str, seed: int) -> None:
        self._mocap = None
        self.expert = ScriptedExpert(task)
        self.reset_pub.publish(self._String(data=json.dumps({"task": task, "seed": seed})))


def test_lockstep_world_publishes_its_topics_waits_for_answers_and_reports_success(node_process, rclpy_context):
    sim = node_process("metaworld_sim", params={"task": "reach-v3", "seed": 3, "lockstep_timeout": 60.0,
                                                "image_size": 32})
    with SpinningNode(rclpy_context, "metaworld_test") as spinning:
        world = PolicyAndController(spinning, "reach-v3")
        assert wait_for(lambda: world.status.get("running"), STARTUP_TIMEOUT), sim.output()[-3000:]
        # The topics: an upright-corner camera image, the documented state names, the episode status.
        _, image = world.images[-1]
        assert (image.width, image.height, image.encoding) == (32, 32, "rgb8")
        assert list(world.states[-1][1].name) == list(STATE_NAMES)
        assert wait_for(lambda: world.status.get("success"), 120.0), world.status
        st = world.status
        assert st["task"] == "reach-v3" and st["seed"] == 3 and st["done"]
        assert 0 < st["success_step"] < 200 and st["lockstep"] == {"chunk_timeouts": 0, "command_timeouts": 0}

        # A reset by task and seed starts a new episode; without answers simulated time stands still.
        world.reset("drawer-close-v3", 4)
        assert wait_for(lambda: world.status.get("task") == "drawer-close-v3" and world.status["step"] > 5, 60.0)
        world.answering = False
        step = wait_for(lambda: world.status["step"], 5.0)
        assert not wait_for(lambda: world.status["step"] > step + 2, 3.0), "the world stepped without answers"
        assert world.status["episode"] == 2 and world.status["seed"] == 4
        # No instant carries two episodes' data: the reset moved the clock on before publishing the new
        # episode's first observation, so a policy cannot pair the old image with the new state.
        for stream, content_of in ((world.states, lambda m: tuple(m.position)), (world.images, lambda m: bytes(m.data))):
            published: dict[int, set] = {}
            for _, msg in list(stream):
                published.setdefault(time_to_ns(msg.header.stamp), set()).add(content_of(msg))
            assert all(len(contents) == 1 for contents in published.values()), \
                [stamp for stamp, contents in published.items() if len(contents) > 1]


def test_realtime_world_steps_without_a_policy_and_refuses_a_bad_reset(node_process, rclpy_context):
    from std_msgs.msg import String

    sim = node_process("metaworld_sim", params={"time_mode": "realtime", "image_size": 32})
    with SpinningNode(rclpy_context, "metaworld_test_rt") as spinning:
        statuses = spinning.collect(String, "/metaworld_sim/episode")
        reset = spinning.node.create_publisher(String, "/metaworld_sim/reset", 10)
        clock = lambda: json.loads(statuses[-1][1].data)["clock"] if statuses else 0.0  # noqa: E731
        assert wait_for(lambda: clock() > 0.25, STARTUP_TIMEOUT), sim.output()[-3000:]
        wait_for(lambda: reset.get_subscription_count() > 0, 10.0)
        reset.publish(String(data=json.dumps({"task": "reach-v2"})))
        assert sim.wait_for_output(r"ignoring reset .*unknown Meta-World task 'reach-v2'", 30.0), sim.output()[-2000:]
        last = json.loads(statuses[-1][1].data)
        assert last["episode"] == 1 and last["task"] == "reach-v3"
