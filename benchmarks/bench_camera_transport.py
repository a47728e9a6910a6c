"""Camera frames across processes over DDS: delivery ratio and latency, with and without the Fast DDS
shared-memory profile (config/fastdds_shm.xml).

A publisher process sends ``sensor_msgs/Image`` rgb8 frames at 30 Hz with sensor-data QoS (best
effort, the QoS camera drivers use) for each size; a subscriber process counts what arrives and
the stamp-to-receive latency. Both processes use the profile, or both use Fast DDS's defaults.

    env/run.sh python benchmarks/bench_camera_transport.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SIZES = ((320, 240), (640, 480), (1280, 720), (1920, 1080))
RATE = 30.0

PUBLISHER = """
import sys, time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
width, height, count, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rclpy.init()
node = rclpy.create_node("bench_camera")
pub = node.create_publisher(Image, "/bench/camera", qos_profile_sensor_data)
deadline = time.monotonic() + 60.0
while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1.0)  # discovery settles on the subscriber's side too
msg = Image(width=width, height=height, encoding="rgb8", step=width * 3,
            data=np.random.default_rng(0).integers(0, 256, width * height * 3, dtype=np.uint8).tobytes())
start = time.monotonic()
for k in range(count):
    time.sleep(max(0.0, start + k / rate - time.monotonic()))
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.header.frame_id = str(k)
    pub.publish(msg)
time.sleep(1.0)
node.destroy_node()
rclpy.shutdown()
"""

SUBSCRIBER = """
import json, sys, time
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
seconds = float(sys.argv[1])
rclpy.init()
node = rclpy.create_node("bench_camera_sink")
latencies, ids = [], set()
def on_image(msg):
    now = node.get_clock().now().nanoseconds
    latencies.append((now - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)) * 1e-6)
    ids.add(msg.header.frame_id)
node.create_subscription(Image, "/bench/camera", on_image, qos_profile_sensor_data)
end = time.monotonic() + seconds
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
print(json.dumps({"received": len(ids), "latencies": latencies}), flush=True)
node.destroy_node()
rclpy.shutdown()
"""


def run_size(width: int, height: int, count: int, profile: Path | None) -> dict:
    from hlrp_ros.graph import isolated_ros_env

    env = isolated_ros_env()
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    sink = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(count / RATE + 20.0)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    source = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(width), str(height), str(count), str(RATE)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        source.wait(timeout=count / RATE + 90.0)
        out, _ = sink.communicate(timeout=60.0)
    finally:
        for proc in (source, sink):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    return json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    import numpy as np

    from hlrp_ros.graph import fastdds_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of frames per size and setting")
    args = parser.parse_args()
    count = int(args.seconds * RATE)
    print(f"{count} frames at {RATE:g} Hz per row, rgb8, best effort (sensor data QoS), 2 processes\n")
    print("| size | transport | delivered | latency p50 ms | latency p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    for width, height in SIZES:
        for label, profile in (("Fast DDS defaults", None), ("config/fastdds_shm.xml", fastdds_profile())):
            result = run_size(width, height, count, profile)
            lat = np.asarray(result["latencies"]) if result["latencies"] else np.array([np.nan])
            print(f"| {width}x{height} | {label} | {result['received']}/{count} "
                  f"({100.0 * result['received'] / count:.1f} %) | {np.nanpercentile(lat, 50):.2f} | "
                  f"{np.nanpercentile(lat, 99):.2f} |", flush=True)
    print(f"\n(CPU: {os.cpu_count()} cores, shared; load {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
