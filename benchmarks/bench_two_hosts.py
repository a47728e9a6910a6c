"""Policy and controller on two "hosts": separate network namespaces, DDS across an impaired link.

Run as root (it creates network namespaces):

    env/run.sh python benchmarks/bench_two_hosts.py

Layout: namespace ``hlrp_gpu`` runs the camera/joint-state source and ``policy_node`` (the GPU
host); ``hlrp_robot`` runs ``controller_node`` and an observer (the robot); they share one
subnet through a third namespace, ``hlrp_link``, where a user-space bridge forwards every
Ethernet frame between two veth pairs. The bridge adds the impairments: delay with jitter, random
loss, or a partition (everything dropped). It is user space because this machine's kernel has no
``netem`` queueing discipline (``tc qdisc ... netem`` answers "Specified qdisc kind is unknown");
where netem exists the same phases can be made with ``tc`` on the veth.

DDS runs over UDPv4 only (no shared memory: both "hosts" share this machine's /dev/shm, and Fast
DDS would otherwise bypass the link), discovery by multicast on the subnet plus static peers.

Phases: clear, then delay 20 +- 10 ms with 5 % loss, a 3 s partition, impaired again, clear. The
observer records every ActionChunk arriving on the robot (age of its observation, lateness of
its first action), every command and the controller's diagnostics; the summary says, per phase,
how chunks arrived, whether the controller held within its watchdog during the partition and
resumed after it, whether it ever executed a chunk older than ``max_chunk_age``, and whether
each command was the action due at its own stamp.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GPU, ROBOT, LINK = "hlrp_gpu", "hlrp_robot", "hlrp_link"
GPU_IP, ROBOT_IP = "10.77.0.1", "10.77.0.2"
JOINTS = ["shoulder", "elbow"]
WATCHDOG, MAX_AGE = 1.0, 1.0
PHASES = (("clear", 15.0, {}), ("delay 20+-10 ms, 5 % loss", 20.0, {"delay": 0.02, "jitter": 0.01, "loss": 0.05}),
          ("partition", 3.0, {"drop": True}), ("delay 20+-10 ms, 5 % loss (after)", 10.0,
                                                 {"delay": 0.02, "jitter": 0.01, "loss": 0.05}),
          ("clear (after)", 8.0, {}))

# The link: frames in on one veth go out of the other after the configured impairment.
BRIDGE = r"""
import heapq, json, os, random, select, socket, sys, time
a, b, control = sys.argv[1], sys.argv[2], sys.argv[3]
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4
socks = {}
for name in (a, b):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((name, 0))
    s.setblocking(False)
    socks[name] = s
other = {a: socks[b], b: socks[a]}
mode, mode_read, queue, seq = {}, 0.0, [], 0
rng = random.Random(0)

def without_udp_checksum(frame):
    # veth leaves the UDP checksum to "hardware" (CHECKSUM_PARTIAL): a frame read here carries an
    # unfinished one, which the receiving stack would drop. 0 means "no checksum" for UDP over IPv4.
    if len(frame) > 34 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
        offset = 14 + (frame[14] & 0x0F) * 4 + 6
        return frame[:offset] + b"\x00\x00" + frame[offset + 2:]
    return frame

while os.path.exists(control):
    now = time.monotonic()
    if now - mode_read > 0.05:
        try:
            mode = json.loads(open(control).read() or "{}")
        except (OSError, ValueError):
            pass
        mode_read = now
    timeout = max(0.0, queue[0][0] - now) if queue else 0.05
    ready, _, _ = select.select(list(socks.values()), [], [], min(timeout, 0.05))
    for s in ready:
        name = [n for n, v in socks.items() if v is s][0]
        while True:
            try:
                frame, addr = s.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:  # what this bridge itself sent out of that veth
                continue
            if mode.get("drop") or rng.random() < mode.get("loss", 0.0):
                continue
            due = time.monotonic() + max(0.0, mode.get("delay", 0.0) + rng.uniform(-1, 1) * mode.get("jitter", 0.0))
            seq += 1
            heapq.heappush(queue, (due, seq, name, without_udp_checksum(frame)))
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        _, _, name, frame = heapq.heappop(queue)
        try:
            other[name].send(frame)
        except OSError:
            pass
"""

SENSORS = f"""
import numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("camera_source")
latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
node.create_publisher(String, "/instruction", latched).publish(String(data="go to the red target"))
cam = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
js = node.create_publisher(JointState, "/policy/joint_states", qos_profile_sensor_data)
pixels = np.random.default_rng(0).integers(0, 256, size=64 * 64 * 3, dtype=np.uint8).tobytes()
def tick():
    stamp = node.get_clock().now().to_msg()
    image = Image(height=64, width=64, encoding="rgb8", step=192, data=pixels)
    image.header.stamp = stamp
    cam.publish(image)
    state = JointState(name={JOINTS!r}, position=[0.1, 0.2])
    state.header.stamp = stamp
    js.publish(state)
node.create_timer(0.1, tick)
try:
    rclpy.spin(node)
except KeyboardInterrupt:
    pass
"""

# On the robot: measured joint states for the controller; every chunk, command and controller status, logged.
OBSERVER = f"""
import json, sys, time
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from hlrp_ros.msg import ActionChunk
out = open(sys.argv[1], "w")
rclpy.init()
node = rclpy.create_node("robot_observer")
js = node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
def ns(t):
    return t.sec * 10**9 + t.nanosec
def write(kind, **values):
    out.write(json.dumps({{"kind": kind, "mono": time.monotonic(), "now": node.get_clock().now().nanoseconds,
                          **values}}) + "\\n")
def on_chunk(m):
    write("chunk", run=m.run_id, id=int(m.chunk_id), stamp=ns(m.header.stamp), first=ns(m.first_action_time),
          dt=m.dt, actions=[float(v) for v in m.actions], dim=int(m.action_dim))
def on_command(m):
    write("command", stamp=ns(m.header.stamp), position=list(m.position))
def on_diag(m):
    for s in m.status:
        if s.name.startswith("controller_node"):
            write("controller", **{{kv.key: kv.value for kv in s.values}})
node.create_subscription(ActionChunk, "/action_chunk", on_chunk, QoSProfile(depth=20,
                         reliability=ReliabilityPolicy.RELIABLE))
node.create_subscription(JointState, "/joint_command", on_command, 100)
node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 20)
def measured():
    m = JointState(name={JOINTS!r}, position=[0.0, 0.0])
    m.header.stamp = node.get_clock().now().to_msg()
    js.publish(m)
node.create_timer(0.02, measured)
try:
    rclpy.spin(node)
except KeyboardInterrupt:
    pass
out.flush()
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def make_link() -> list[str]:
    """Three namespaces, two veth pairs; returns the namespaces (for teardown)."""
    for ns in (GPU, ROBOT, LINK):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        sh("ip", "netns", "add", ns)
    for host, ip, inner, outer in ((GPU, GPU_IP, "hlrp_g0", "hlrp_g1"), (ROBOT, ROBOT_IP, "hlrp_r0", "hlrp_r1")):
        sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        sh("ip", "link", "set", inner, "netns", host)
        sh("ip", "link", "set", outer, "netns", LINK)
        sh("ip", "-n", host, "addr", "add", f"{ip}/24", "dev", inner)
        sh("ip", "-n", host, "link", "set", inner, "up")
        sh("ip", "-n", host, "link", "set", "lo", "up")
        sh("ip", "-n", host, "route", "add", "224.0.0.0/4", "dev", inner)  # DDS discovery multicast
        sh("ip", "-n", LINK, "link", "set", outer, "up")
    return [GPU, ROBOT, LINK]


def in_ns(ns: str, cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> int | None:
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGKILL, 3.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    return proc.returncode


def node_cmd(executable: str, params: dict, log_dir: Path) -> list[str]:
    from hlrp_ros.graph import NodeProcess

    return NodeProcess(executable, params=params, log_dir=log_dir).command()


def due_index(chunk: dict, t_ns: int) -> int:
    return int(np.floor((t_ns - chunk["first"]) / (chunk["dt"] * 1e9) + 1e-6))


def due_row(chunk: dict, t_ns: int) -> np.ndarray | None:
    index = due_index(chunk, t_ns)
    rows = np.asarray(chunk["actions"]).reshape(-1, chunk["dim"])
    return rows[index] if 0 <= index < len(rows) else None


def explain_miss(cmd: dict, current: list[dict], chunks: list[dict], phases,
                 unobserved: list[float]) -> str:
    """Why a command is no due row of the two newest chunks the observer had: which chunk it matches."""
    phase = next((name for name, start, end in phases if start <= cmd["mono"] < end), "outside the phases")

    def matches(chunk: dict) -> bool:
        row = due_row(chunk, cmd["stamp"])
        return row is not None and np.allclose(row, cmd["position"], atol=1e-5)

    for rank, c in enumerate(reversed(current[:-2]), start=3):
        if matches(c):
            return f"due in the {rank}th newest chunk ({phase})"
    later = [c for c in chunks if c["first"] <= cmd["stamp"] and c["now"] > cmd["now"]]
    if any(matches(c) for c in later):
        return f"due in a chunk the observer received after the command ({phase})"
    for c in current:
        rows = np.asarray(c["actions"]).reshape(-1, c["dim"])
        hit = [i for i, r in enumerate(rows) if np.allclose(r, cmd["position"], atol=1e-5)]
        if hit:
            return f"another row of a received chunk (row {hit[0]} where {due_index(c, cmd['stamp'])} was due; {phase})"
    # The policy's chunk writer is reliable with depth 1 (only the newest chunk is worth resending): a reader
    # that lost a chunk on the link gets the next one instead, so the controller and the observer can each
    # miss a chunk the other executed or saw.
    if any(abs(mono - cmd["mono"]) <= 0.25 for mono in unobserved):
        return f"executed while the controller ran a chunk the observer never received ({phase})"
    return f"no row of any chunk ({phase})"


def pct(values: np.ndarray, q: float) -> str:
    return f"{np.percentile(values, q):.1f}" if values.size else "-"


def analyse(events: list[dict], phases: list[tuple[str, float, float]]) -> str:
    chunks = [e for e in events if e["kind"] == "chunk"]
    commands = [e for e in events if e["kind"] == "command"]
    status = [e for e in events if e["kind"] == "controller"]
    by_key = {(c["run"], c["id"]): c for c in chunks}
    lines = ["| phase | s | chunks arrived (/s) | observation age on arrival p50 / p99 ms | first action "
             "late on arrival p50 / p99 ms | controller states |", "| --- | --- | --- | --- | --- | --- |"]
    for name, start, end in phases:
        inside = [c for c in chunks if start <= c["mono"] < end]
        age = np.array([(c["now"] - c["stamp"]) * 1e-6 for c in inside]) if inside else np.zeros(0)
        late = np.array([(c["now"] - c["first"]) * 1e-6 for c in inside]) if inside else np.zeros(0)
        states = sorted({s["state"] for s in status if start <= s["mono"] < end})
        lines.append(f"| {name} | {end - start:.0f} | {len(inside)} ({len(inside) / (end - start):.1f}) | "
                     f"{pct(age, 50)} / {pct(age, 99)} | {pct(late, 50)} / {pct(late, 99)} | {', '.join(states)} |")
    _, p_start, p_end = next(p for p in phases if p[0] == "partition")
    holding = next((s["mono"] for s in status if s["mono"] >= p_start and s["state"] == "holding"), None)
    resumed = next((s["mono"] for s in status if s["mono"] >= p_end and s["state"] == "running"), None)
    executed = {(s.get("run_id"), int(s["chunk_id"])) for s in status if s["state"] == "running"}
    executed_ages = [(by_key[k]["now"] - by_key[k]["stamp"]) * 1e-9 for k in executed if k in by_key]
    aligned = checked = 0
    misses: dict[str, int] = {}  # what each command that is not aligned was instead
    # when the controller reported executing a chunk that never reached the observer
    observed = {(c["run"], c["id"]) for c in chunks}
    unobserved = [st["mono"] for st in status
                  if st["state"] == "running" and (st.get("run_id"), int(st["chunk_id"])) not in observed]
    for cmd in commands:
        current = sorted((c for c in chunks if c["first"] <= cmd["stamp"] and c["now"] <= cmd["now"]),
                         key=lambda c: (c["stamp"], c["id"]))
        if not current:
            continue
        # the newest chunk, or the one before it: the observer may see a chunk a tick before the controller
        rows = [r for r in (due_row(c, cmd["stamp"]) for c in current[-2:]) if r is not None]
        if not rows:
            continue
        checked += 1
        if any(np.allclose(r, cmd["position"], atol=1e-5) for r in rows):
            aligned += 1
            continue
        why = explain_miss(cmd, current, chunks, phases, unobserved)
        misses[why] = misses.get(why, 0) + 1
    lines += [
        "",
        f"partition at +{p_start - phases[0][1]:.1f} s: controller holding after "
        + (f"{holding - p_start:.2f} s" if holding else "never")
        + f" (watchdog_timeout {WATCHDOG:g} s; diagnostics every 0.2 s); running again "
        + (f"{resumed - p_end:.2f} s after the link came back" if resumed else "never"),
        f"chunks executed: {len(executed)}; oldest observation among them on arrival: "
        + (f"{max(executed_ages):.3f} s" if executed_ages else "-") + f" (max_chunk_age {MAX_AGE:g} s)",
        f"commands equal to the action due at their own stamp (of one of the two newest chunks received by then): "
        f"{aligned}/{checked}" + (f" ({100.0 * aligned / checked:.1f} %)" if checked else ""),
        "the others: " + (", ".join(f"{n} {why}" for why, n in sorted(misses.items(), key=lambda kv: -kv[1]))
                          or "none"),
    ]
    return "\n".join(lines)


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
    from ros_testing import make_tiny_checkpoint

    from hlrp_ros.graph import isolated_ros_env

    tmp = Path(tempfile.mkdtemp(prefix="hlrp_two_hosts_"))
    ckpt = make_tiny_checkpoint(tmp / "ckpt")
    control = tmp / "link.json"
    control.write_text("{}")
    env = isolated_ros_env(large_messages=False)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    env.update({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_STATIC_PEERS": f"{GPU_IP};{ROBOT_IP}",
                "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"})
    namespaces = make_link()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(in_ns(LINK, [sys.executable, "-c", BRIDGE, "hlrp_g1", "hlrp_r1", str(control)], env,
                           tmp / "bridge.log"))
        procs.append(in_ns(GPU, [sys.executable, "-c", SENSORS], env, tmp / "sensors.log"))
        procs.append(in_ns(GPU, node_cmd("policy_node", {
            "checkpoint": str(ckpt), "camera_names": ["top"], "joint_states_topic": "/policy/joint_states",
            "inference_period": 0.2, "action_period": 0.1, "max_observation_age": 1.0, "torch_threads": 1,
            "seed": 0}, tmp), env, tmp / "policy.log"))
        procs.append(in_ns(ROBOT, node_cmd("controller_node", {
            "joint_names": JOINTS, "control_rate": 50.0, "watchdog_timeout": WATCHDOG, "max_chunk_age": MAX_AGE,
            "seam_threshold": 0.0, "diagnostics_period": 0.2}, tmp), env, tmp / "controller.log"))
        events_path = tmp / "events.jsonl"
        procs.append(in_ns(ROBOT, [sys.executable, "-c", OBSERVER, str(events_path)], env, tmp / "observer.log"))
        print(f"logs in {tmp}; waiting for chunks across the link", flush=True)
        deadline = time.monotonic() + 180.0
        while time.monotonic() < deadline:
            text = events_path.read_text() if events_path.exists() else ""
            if '"state": "running"' in text:
                break
            time.sleep(0.5)
        else:
            print("the controller never ran: no chunks crossed the link", flush=True)
            return 1
        phases = []
        for name, seconds, mode in PHASES:
            control.write_text(json.dumps(mode))
            start = time.monotonic()
            print(f"phase: {name} ({seconds:g} s)", flush=True)
            time.sleep(seconds)
            phases.append((name, start, time.monotonic()))
        time.sleep(0.5)
    finally:
        control.unlink(missing_ok=True)  # the bridge ends by itself
        time.sleep(0.3)
        for proc in reversed(procs):
            stop(proc)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    print(analyse(events, phases))
    print(f"\n(CPU: {os.cpu_count()} cores, shared; load {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
