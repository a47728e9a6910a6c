"""Helpers for the node tests: a spinning in-test node, message collectors, a tiny checkpoint, synthetic inputs.

The fixtures in conftest.py start node processes and give a private rclpy context; these
helpers do the rest: spin a test-side node in a background thread, wait for conditions with
generous timeouts (the machine is shared and loaded), and build synthetic sensor messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Generous: 2 shared cores, torch and DDS discovery in several processes at once.
STARTUP_TIMEOUT = 90.0


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; that value, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class SpinningNode:
    """A node of the test process, spun by a SingleThreadedExecutor in a background thread.

    Use as a context manager; ``collect`` subscribes and returns the list messages are appended to
    (each as ``(receive_time_monotonic, msg)``).
    """

    def __init__(self, context, name: str = "hlrp_test_node") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self.lock = threading.Lock()

    def _spin(self) -> None:
        while self._running:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down while spinning
                if self._running:
                    raise

    def __enter__(self) -> SpinningNode:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()

    def collect(self, msg_type, topic: str, qos=10) -> list:
        received: list = []

        def keep(msg) -> None:
            with self.lock:
                received.append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, keep, qos)
        return received

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds


def latched_qos():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def reliable_qos(depth: int = 10):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def make_tiny_checkpoint(directory: Path, **overrides) -> Path:
    """Save a randomly initialised ``tiny`` HLRP policy (the real model) into ``directory``."""
    import torch

    from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy
    from hlrp_ros.policies.hlrp.presets import make_config

    torch.manual_seed(0)
    values = dict(joint_names=["shoulder", "elbow"], state_dim=2, action_dim=2, chunk_size=8, n_action_steps=6,
                  num_steps=2)
    values.update(overrides)
    HLRPPolicy(make_config("tiny", **values)).save_pretrained(directory)
    return directory


def camera_image(stamp_ns: int, size=(64, 64), encoding: str = "rgb8", seed: int = 0):
    """A synthetic sensor_msgs/Image (random pixels, stamped)."""
    from hlrp_ros.chunk_codec import ns_to_time
    from hlrp_ros.ros_image import rgb_to_image_msg

    rgb = np.random.default_rng(seed).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb, encoding)
    ns_to_time(stamp_ns, msg.header.stamp)
    return msg


def compressed_image(stamp_ns: int, size=(64, 64), seed: int = 1):
    from hlrp_ros.chunk_codec import ns_to_time
    from hlrp_ros.ros_image import rgb_to_compressed_msg

    rgb = np.random.default_rng(seed).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
    msg = rgb_to_compressed_msg(rgb, "png")
    ns_to_time(stamp_ns, msg.header.stamp)
    return msg


def joint_state(stamp_ns: int, names, positions):
    from sensor_msgs.msg import JointState

    from hlrp_ros.chunk_codec import ns_to_time

    msg = JointState(name=list(names), position=[float(p) for p in positions])
    ns_to_time(stamp_ns, msg.header.stamp)
    return msg


#: A separate process that publishes one latched instruction and stays up (argv: topic, text, seconds).
INSTRUCTION_PUBLISHER = """
# argv: topic, text, seconds to stay, QoS: latched (default) | plain (ros2 topic pub --once: reliable,
# volatile, published once a subscriber matched) | best_effort (published every 0.5 s)
import sys, time
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
mode = sys.argv[4] if len(sys.argv) > 4 else "latched"
rclpy.init()
node = rclpy.create_node("instruction_publisher")
qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
if mode == "plain":
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
elif mode == "best_effort":
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
pub = node.create_publisher(String, sys.argv[1], qos)
end = time.monotonic() + float(sys.argv[3])
while mode == "plain" and pub.get_subscription_count() < 1 and time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
pub.publish(String(data=sys.argv[2]))
print("published", flush=True)
last = time.monotonic()
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
    if mode == "best_effort" and time.monotonic() - last > 0.5:
        pub.publish(String(data=sys.argv[2]))
        last = time.monotonic()
node.destroy_node()
rclpy.shutdown()
"""
