"""Node figures (a benchmark, not a test): image conversion, ActionChunk latency, controller jitter.

1. Image -> tensor: ``ImageConverter.to_rgb`` (zero-copy numpy fallback; cv_bridge where it works)
   then ``(1, 3, H, W)`` float32 in [0, 1], at 640x480 and 1280x720, per encoding.
2. ActionChunk publish-to-receive latency across processes (receiver in its own process;
   latency = receive time - header.stamp set just before publish; same host clock).
3. controller_node command jitter: interval between consecutive command stamps (the control
   tick's time) at 50 Hz and 100 Hz, while policy_node infers continuously in another process
   (tiny real checkpoint, sensors published by this script, chunks consumed by the controller).

Run: ``env/run.sh python benchmarks/bench_nodes.py [--quick] [--jitter-only]``. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

# The synthetic-input helpers of the node tests (test/ros_testing.py) are reused here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def percentiles(values, scale: float = 1e3) -> str:
    v = np.asarray(values) * scale
    return f"p50 {np.percentile(v, 50):.3f} / p99 {np.percentile(v, 99):.3f} / max {v.max():.3f}"


def bench_images(repeats: int) -> list[str]:
    import torch

    from hlrp_ros.ros_image import ImageConverter, rgb_to_compressed_msg, rgb_to_image_msg

    torch.set_num_threads(1)
    rows = []
    converter = ImageConverter("auto")
    for height, width in ((480, 640), (720, 1280)):
        rgb = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        cases = {enc: rgb_to_image_msg(rgb, enc) for enc in ("rgb8", "bgr8", "bgra8", "mono8")}
        cases["jpeg (compressed)"] = rgb_to_compressed_msg(rgb, "jpeg")
        for name, msg in cases.items():
            t_rgb, t_tensor = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                view = converter.to_rgb(msg)
                t1 = time.perf_counter()
                tensor = torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1)[None].float().div_(255.0)
                t2 = time.perf_counter()
                t_rgb.append(t1 - t0)
                t_tensor.append(t2 - t0)
            assert tensor.shape == (1, 3, height, width)
            rows.append(f"| {width}x{height} | {name} | {converter.backend} | {np.median(t_rgb) * 1e3:.3f} | "
                        f"{np.median(t_tensor) * 1e3:.3f} |")
    return ["| size | encoding | backend | to RGB array, ms (p50) | to float tensor, ms (p50) |",
            "| --- | --- | --- | --- | --- |", *rows]


RECEIVER = textwrap.dedent("""
    import json, sys, time
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from hlrp_ros.msg import ActionChunk
    rclpy.init()
    node = rclpy.create_node("latency_receiver")
    lat = []
    def on_chunk(msg):
        lat.append(time.time_ns() - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec))
    node.create_subscription(ActionChunk, "/bench/chunk", on_chunk, QoSProfile(depth=100,
                             reliability=ReliabilityPolicy.RELIABLE))
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end and len(lat) < int(sys.argv[2]):
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps(lat), flush=True)
""")


def bench_latency(env, count: int) -> list[str]:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from hlrp_ros.chunk_codec import encode_chunk
    from hlrp_ros.graph import python_process, stop_process_group
    from hlrp_ros.msg import ActionChunk

    rows = ["| chunk (horizon x dim) | messages | latency ms |", "| --- | --- | --- |"]
    rclpy.init()
    node = rclpy.create_node("latency_sender")
    pub = node.create_publisher(ActionChunk, "/bench/chunk", QoSProfile(depth=100,
                                                                        reliability=ReliabilityPolicy.RELIABLE))
    try:
        for horizon, dim in ((10, 2), (50, 7)):
            proc = python_process(["-c", RECEIVER, "60", str(count)], env=env)
            proc.stdout.readline()
            deadline = time.monotonic() + 30
            while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            actions = np.random.default_rng(0).standard_normal((horizon, dim)).astype(np.float32)
            names = [f"j{i}" for i in range(dim)]
            for i in range(count):
                now = time.time_ns()
                pub.publish(encode_chunk(actions, names, chunk_id=i + 1, stamp_ns=now, first_action_ns=now, dt=0.02))
                time.sleep(0.02)
            out, _ = proc.communicate(timeout=60)
            stop_process_group(proc)
            lat = json.loads(out.decode().strip().splitlines()[-1])
            rows.append(f"| {horizon}x{dim} | {len(lat)} | {percentiles(np.array(lat) * 1e-9)} |")
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return rows


def bench_jitter(env, seconds: float, rates=(50.0, 100.0)) -> list[str]:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from ros_testing import (
        SpinningNode,
        camera_image,
        joint_state,
        latched_qos,
        make_tiny_checkpoint,
        reliable_qos,
    )
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from hlrp_ros.graph import NodeProcess
    from hlrp_ros.msg import ActionChunk

    rows = ["| control rate | load | commands | interval ms (tick stamps) | mean chunk inference ms |",
            "| --- | --- | --- | --- | --- |"]
    tmp = Path(tempfile.mkdtemp(prefix="hlrp_bench_"))
    ckpt = make_tiny_checkpoint(tmp / "ckpt", chunk_size=50, n_action_steps=50, num_steps=10)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    with SpinningNode(context, "bench_sensors") as spinner:
        node = spinner.node
        img_pub = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        js_pub = node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        node.create_publisher(String, "/instruction", latched_qos()).publish(String(data="pick up the cube"))
        frame = camera_image(0, size=(480, 640))

        def sensors() -> None:
            frame.header.stamp = node.get_clock().now().to_msg()
            img_pub.publish(frame)
            js_pub.publish(joint_state(spinner.now_ns(), ["shoulder", "elbow"], [0.0, 0.0]))

        node.create_timer(0.033, sensors)
        chunks = spinner.collect(ActionChunk, "/action_chunk", reliable_qos(10))
        policy = None
        # (policy_node parameters or None for no policy, label, modes): the policy at 10 Hz on one thread,
        # then back to back on both cores (its period shorter than its inference: every core busy)
        loads = [(None, "idle (no policy_node)", (True, False)),
                 ({"inference_period": 0.1, "torch_threads": 1}, "policy_node inferring", (True, False)),
                 ({"inference_period": 0.01, "torch_threads": 2}, "policy_node inferring back to back on 2 threads",
                  (True,))]
        try:
            for policy_params, label, modes in loads:
                if policy_params is not None:
                    policy = NodeProcess("policy_node", params={"checkpoint": str(ckpt), "action_period": 0.02,
                                                                **policy_params}, env=env, log_dir=tmp).start()
                for rate in rates:
                    for thread in modes:  # side by side: the control thread, then an executor timer
                        rows.append(_jitter_row(spinner, env, tmp, rate, seconds, label,
                                                chunks if policy is not None else None, thread))
                if policy is not None:
                    policy.stop()
                    policy = None
        finally:
            if policy is not None:
                policy.stop()
    rclpy.shutdown(context=context)
    return rows


_RUN_NUMBERS = itertools.count()


def _jitter_row(spinner, env, tmp, rate: float, seconds: float, load: str, chunks,
                control_thread: bool = True) -> str:
    """One controller run at ``rate``; with ``chunks`` (the policy's output) it executes them."""
    from ros_testing import wait_for
    from sensor_msgs.msg import JointState

    from hlrp_ros.chunk_codec import time_to_ns
    from hlrp_ros.graph import NodeProcess

    topic = f"/bench/command_{next(_RUN_NUMBERS)}"  # a topic per run: no late command of an earlier one
    commands = spinner.collect(JointState, topic)
    ctl = NodeProcess("controller_node", name=f"controller_{int(rate)}", env=env, log_dir=tmp, params={
        "joint_names": ["shoulder", "elbow"], "control_rate": rate, "output_topic": topic,
        "control_thread": control_thread,
        "watchdog_timeout": 2.0 if chunks is not None else 600.0, "input_topic": "/action_chunk" if chunks is not None else "/bench/no_chunks",
        # idle: no joint state source, the long chunk is commanded as sent
        **({} if chunks is not None else {"joint_states_topic": "", "require_joint_state": False})}).start()
    label = load + (", control thread" if control_thread else ", executor timer")
    try:
        if chunks is None:
            # Idle: feed one long chunk so that the controller runs without a policy process.
            _send_long_chunk(spinner, rate)
        if not wait_for(lambda: len(commands) > 10, 120.0):
            return f"| {rate:g} Hz | {label} | no commands | - | - |"
        start = len(commands)
        time.sleep(seconds)
        stamps = np.array([time_to_ns(m.header.stamp) for _, m in list(commands)[start:]]) * 1e-9
        intervals = np.diff(np.sort(stamps))
        inference = "-"
        if chunks is not None:
            recent = [m.inference_latency for _, m in list(chunks)[-20:]]
            inference = f"{np.mean(recent) * 1e3:.1f}"
        return f"| {rate:g} Hz | {label} | {len(stamps)} | {percentiles(intervals)} | {inference} |"
    finally:
        ctl.stop()


def _send_long_chunk(spinner, rate: float) -> None:
    from ros_testing import reliable_qos, wait_for

    from hlrp_ros.chunk_codec import encode_chunk
    from hlrp_ros.msg import ActionChunk

    pub = spinner.node.create_publisher(ActionChunk, "/bench/no_chunks", reliable_qos(1))
    wait_for(lambda: pub.get_subscription_count() > 0, 60.0)
    time.sleep(1.0)
    now = spinner.now_ns()
    pub.publish(encode_chunk(np.zeros((3000, 2), dtype=np.float32), ["shoulder", "elbow"], chunk_id=1, stamp_ns=now,
                             first_action_ns=now, dt=0.01))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--jitter-only", action="store_true", help="only the controller command interval")
    args = parser.parse_args()
    from hlrp_ros.graph import isolated_ros_env

    env = isolated_ros_env()
    os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
    if not args.jitter_only:
        print("## Image conversion\n")
        print("\n".join(bench_images(20 if args.quick else 100)))
        print("\n## ActionChunk publish-to-receive latency across processes\n")
        print("\n".join(bench_latency(env, 100 if args.quick else 500)))
    print("\n## controller_node command interval while policy_node infers in another process\n")
    print("\n".join(bench_jitter(env, 5.0 if args.quick else 15.0)))
    print(f"\n(CPU: {os.cpu_count()} cores, shared; load average {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
