"""recorder_node as a process over DDS: start/save/discard through its services, drops counted, killed mid-episode."""

from __future__ import annotations

import os
import re
import signal
import threading

import numpy as np
import pytest
from ros_testing import STARTUP_TIMEOUT, SpinningNode, joint_state, latched_qos, wait_for

from hlrp_ros.chunk_codec import ns_to_time
from hlrp_ros.datasets.reader import DatasetReader
from hlrp_ros.ros_image import rgb_to_image_msg

pytestmark = pytest.mark.ros  # the recorder runs as a node over DDS

JOINTS = ["shoulder", "elbow"]
TASK = "pick up the red cube"
STEP = 0.01  # rad per published sample: positions encode the sample's number


class Robot:
    """Publishes camera (grey level = sample number), joint states and commands at 20 Hz, one stamp per sample."""

    def __init__(self, spinning: SpinningNode) -> None:
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        node = spinning.node
        self.k = 0
        self.camera_paused = threading.Event()
        self.camera = node.create_publisher(Image, "/camera/image_raw", 10)
        self.states = node.create_publisher(JointState, "/joint_states", 10)
        self.commands = node.create_publisher(JointState, "/joint_command", 10)
        node.create_publisher(String, "/instruction", latched_qos()).publish(String(data=TASK))
        node.create_timer(0.05, self.publish)
        self.node = node

    def publish(self) -> None:
        self.k += 1
        stamp = self.node.get_clock().now().nanoseconds
        q = np.array([self.k * STEP, -self.k * STEP])
        self.states.publish(joint_state(stamp, JOINTS, q))
        self.commands.publish(joint_state(stamp, JOINTS, q + 0.5))
        if not self.camera_paused.is_set():
            msg = rgb_to_image_msg(np.full((32, 48, 3), 20 + self.k % 200, dtype=np.uint8))
            ns_to_time(stamp, msg.header.stamp)
            self.camera.publish(msg)


def call(spinning: SpinningNode, client, timeout: float = 30.0):
    from std_srvs.srv import Trigger

    assert client.wait_for_service(timeout_sec=timeout), "recorder service not up"
    future = client.call_async(Trigger.Request())
    assert wait_for(future.done, timeout), "no answer from the recorder"
    return future.result()


def frames_in_episode(proc, since: int, at_least: int, timeout: float = 30.0) -> int:
    """Wait until a status line written after output offset ``since`` counts ``at_least`` frames; the count."""
    def enough():
        counts = [int(n) for n in re.findall(r"recording episode \d+ .*?: (\d+) frames", proc.output()[since:])]
        return counts and counts[-1] >= at_least and counts[-1]
    got = wait_for(enough, timeout)
    assert got, f"episode did not reach {at_least} frames:\n{proc.output()[-2000:]}"
    return got


def test_record_save_discard_drop_and_survive_a_kill(node_process, rclpy_context, tmp_path):
    from std_srvs.srv import Trigger

    root = tmp_path / "dataset"
    params = {"output_dir": str(root), "fps": 10, "max_age": 0.25, "status_period": 0.3, "robot_type": "test_arm"}
    recorder = node_process("recorder_node", params=params)
    with SpinningNode(rclpy_context, "fake_robot") as spinning:
        robot = Robot(spinning)
        clients = {name: spinning.node.create_client(Trigger, f"/recorder_node/{name}")
                   for name in ("start", "save", "discard")}
        assert recorder.wait_for_output(r"ready: 10 fps", STARTUP_TIMEOUT), recorder.output()
        assert not call(spinning, clients["save"]).success  # nothing recorded yet
        started = wait_for(lambda: call(spinning, clients["start"]).success, 60.0, interval=0.5)
        assert started, recorder.output()[-2000:]
        mark = len(recorder.output())
        assert not call(spinning, clients["start"]).success  # already recording
        frames_in_episode(recorder, mark, 8)
        saved = call(spinning, clients["save"])
        assert saved.success and re.match(r"episode 0 saved: \d+ frames, \d+ dropped", saved.message), saved.message

        assert call(spinning, clients["start"]).success
        mark = len(recorder.output())
        frames_in_episode(recorder, mark, 4)
        discarded = call(spinning, clients["discard"])
        assert discarded.success and discarded.message.startswith("episode 1 discarded"), discarded.message

        assert call(spinning, clients["start"]).success
        mark = len(recorder.output())
        frames_in_episode(recorder, mark, 3)
        robot.camera_paused.set()  # the camera stops: frames must be dropped, not filled with its last image
        assert recorder.wait_for_output(r"camera:front too old ([5-9]|\d\d)", 30.0), recorder.output()[-2000:]
        robot.camera_paused.clear()
        before = frames_in_episode(recorder, mark, 0)
        frames_in_episode(recorder, mark, before + 2)
        saved = call(spinning, clients["save"])
        dropped = int(re.search(r"(\d+) dropped", saved.message).group(1))
        assert saved.success and saved.message.startswith("episode 1 saved") and dropped >= 5, saved.message

        assert call(spinning, clients["start"]).success
        mark = len(recorder.output())
        frames_in_episode(recorder, mark, 5)
        os.killpg(recorder.pid, signal.SIGKILL)  # mid-episode
        assert recorder.wait(10.0) == -signal.SIGKILL
    print("FILES", sorted(str(p) for p in root.rglob("*")))

    reader = DatasetReader(root)
    reader.validate()
    assert len(reader) == 2 and reader.tasks == [TASK]
    assert reader.info["robot_type"] == "test_arm" and reader.joint_names == JOINTS
    for e in range(2):
        ep = reader.episode(e)
        k = np.round(ep.states[:, 0] / STEP)
        np.testing.assert_allclose(ep.states[:, 1], -k * STEP, atol=1e-6)  # one published sample per frame
        assert np.all(np.diff(k) >= 1)  # time moves forward, never a repeated sample
        assert np.all(np.abs(ep.actions - ep.states - 0.5) < 2 * STEP + 1e-6)  # the command of (about) that time
        grey = reader.frames(e, "observation.images.front").reshape(len(k), -1).mean(1)
        assert np.all(np.abs(grey - (20 + k % 200)) <= 2 * 1 + 3), (grey, k)  # the camera image of that time
    gaps = np.diff(np.round(reader.episode(1).states[:, 0] / STEP))
    assert gaps.max() >= 10  # the camera pause left a hole (>= 0.5 s at 20 Hz) instead of stale frames

    again = node_process("recorder_node", params=params)
    assert again.wait_for_output(r"dataset .*: 2 episodes", STARTUP_TIMEOUT), again.output()
    assert re.search(r"removed [1-9]\d* files an interrupted episode left", again.output()), again.output()
    with SpinningNode(rclpy_context, "fake_robot_2") as spinning:
        Robot(spinning)
        start = spinning.node.create_client(Trigger, "/recorder_node/start")
        save = spinning.node.create_client(Trigger, "/recorder_node/save")
        assert wait_for(lambda: call(spinning, start).success, 60.0, interval=0.5), again.output()[-2000:]
        mark = len(again.output())
        frames_in_episode(again, mark, 3)
        assert call(spinning, save).message.startswith("episode 2 saved")
    assert again.stop() == 0
    reader = DatasetReader(root)
    reader.validate()
    assert len(reader) == 3


def test_the_keyboard_tool_starts_and_saves_an_episode(node_process, rclpy_context, tmp_path, ros_env):
    import subprocess
    import sys
    import time

    root = tmp_path / "dataset"
    recorder = node_process("recorder_node", params={"output_dir": str(root), "status_period": 0.3})
    with SpinningNode(rclpy_context, "fake_robot") as spinning:
        Robot(spinning)
        assert recorder.wait_for_output(r"ready: 10 fps", STARTUP_TIMEOUT), recorder.output()
        assert recorder.wait_for_output(r"instruction: ", 30.0), recorder.output()
        tool = subprocess.Popen([sys.executable, "-m", "hlrp_ros.tools.record_keys"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ros_env,
                                start_new_session=True)
        try:
            def send(key: str) -> str:
                tool.stdin.write(key + "\n")
                tool.stdin.flush()
                return tool.stdout.readline()
            assert tool.stdout.readline().startswith("keys:")
            answer = send("s")
            deadline = time.monotonic() + 30
            while "refused" in answer and time.monotonic() < deadline:  # inputs not all arrived yet
                time.sleep(0.5)
                answer = send("s")
            assert answer.startswith("start: ok: episode 0 started"), answer
            frames_in_episode(recorder, len(recorder.output()), 3)
            assert send("x").startswith("unknown key")
            answer = send("w")
            assert answer.startswith("save: ok: episode 0 saved"), answer
            assert send("w").startswith("save: refused: no episode")
            tool.stdin.write("q\n")
            tool.stdin.flush()
            assert tool.wait(timeout=30) == 0
        finally:
            if tool.poll() is None:
                os.killpg(tool.pid, signal.SIGKILL)
    reader = DatasetReader(root)
    reader.validate()
    assert len(reader) == 1 and reader.episodes[0]["length"] >= 3
