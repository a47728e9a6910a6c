"""Soak: the demo world, policy_node and controller_node running for a long time under real sensor load.

The world publishes a 640x480 camera at 30 Hz and joint states at 500 Hz; episodes run back to
back (as in `make demo`). Every ``--sample`` seconds the benchmark records each node's resident
memory (/proc), the nodes' diagnostics (chunks, skipped ticks, inference latency, rejected
inputs by reason, the controller's tick lateness) and the command interval over the window.
Samples go to ``samples.jsonl`` as they are taken (a run cut short keeps what it measured); the
end prints a summary against the targets and draws ``soak.png`` (memory and latency over time).

    env/run.sh python benchmarks/bench_soak.py --duration 600 --out artifacts/soak
    env/run.sh python benchmarks/bench_soak.py --plot-only artifacts/soak/samples.jsonl

Targets: resident memory growth <= 5 MB per node after the warm-up, 0 chunks lost between the
policy and its subscribers, 0 internal errors (ERROR lines or tracebacks in the node logs).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SIM = {"camera_rate": 30.0, "image_width": 640, "image_height": 480, "physics_rate": 500.0}
INSTRUCTIONS = (("go to the red target", "red"), ("move to the blue one", "blue"),
                ("reach the green target", "green"), ("touch the yellow target", "yellow"))


def rss_mb(pid: int | None) -> float:
    """Resident set size of a process (MB), NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return float("nan")


class Recorder:
    """The benchmark's ROS side: command stamps, latest diagnostics per node, chunk ids seen."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState

        from hlrp_ros.msg import ActionChunk

        self.command_stamps: list[float] = []
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.chunk_ids: dict[str, set[int]] = {}
        node.create_subscription(JointState, "/joint_command", self._on_command, 100)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        node.create_subscription(ActionChunk, "/action_chunk", self._on_chunk,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))

    def _on_command(self, msg) -> None:
        self.command_stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            self.diagnostics[status.name.split(":")[0]] = {kv.key: kv.value for kv in status.values}

    def _on_chunk(self, msg) -> None:
        self.chunk_ids.setdefault(msg.run_id, set()).add(int(msg.chunk_id))

    def take_intervals(self) -> np.ndarray:
        stamps, self.command_stamps = np.sort(np.asarray(self.command_stamps)), []
        return np.diff(stamps)

    def chunks_lost(self) -> int:
        """Gaps in each run's consecutive ids among the chunks received (what the policy sent but never arrived)."""
        return sum(max(ids) - min(ids) + 1 - len(ids) for ids in self.chunk_ids.values() if ids)


def sample(t: float, procs, recorder: Recorder) -> dict:
    policy = recorder.diagnostics.get("policy_node", {})
    controller = recorder.diagnostics.get("controller_node", {})
    intervals = recorder.take_intervals() * 1e3

    def number(values: dict, key: str) -> float:
        try:
            return float(values[key])
        except (KeyError, ValueError):
            return float("nan")

    return {
        "t": t,
        "rss_mb": {p.node_name: rss_mb(p.pid) for p in procs},
        "chunks_published": number(policy, "chunks_published"),
        "chunks_received": sum(len(ids) for ids in recorder.chunk_ids.values()),
        "skipped_ticks": number(policy, "skipped_ticks"),
        "inference_ms_mean": number(policy, "inference_latency_mean") * 1e3,
        "inference_ms_max": number(policy, "inference_latency_max") * 1e3,
        "rejected": {k[len("rejected."):]: int(v) for k, v in policy.items() if k.startswith("rejected.")},
        "chunks_accepted": number(controller, "chunks_accepted"),
        "chunks_rejected": number(controller, "chunks_rejected"),
        "tick_late_p99_ms": number(controller, "tick_late_p99_ms"),
        "ticks_missed": number(controller, "ticks_missed"),
        "command_interval_ms": {"p50": float(np.percentile(intervals, 50)) if intervals.size else float("nan"),
                                "p99": float(np.percentile(intervals, 99)) if intervals.size else float("nan"),
                                "n": int(intervals.size)},
    }


def internal_errors(procs) -> list[str]:
    lines = []
    for proc in procs:
        for line in proc.output().splitlines():
            if "[ERROR]" in line or "Traceback" in line:
                lines.append(f"{proc.node_name}: {line}")
    return lines


def summarise(samples: list[dict], warmup: float, errors: list[str], lost: int, inference_period: float) -> str:
    t = np.array([s["t"] for s in samples])
    after = [s for s in samples if s["t"] >= warmup] or samples
    lines = [f"soak: {t[-1]:.0f} s, {len(samples)} samples, warm-up {warmup:.0f} s"]
    for name in samples[0]["rss_mb"]:
        series = np.array([s["rss_mb"][name] for s in after])
        lines.append(f"  {name:16s} RSS {series[0]:7.1f} -> {series[-1]:7.1f} MB after warm-up "
                     f"(growth {series[-1] - series[0]:+.1f} MB, max {np.nanmax(series):.1f}; target <= +5 MB)")
    last = samples[-1]
    expected = t[-1] / inference_period
    lines.append(f"  chunks: {last['chunks_published']:.0f} published (~{expected:.0f} ticks of "
                 f"{inference_period:g} s; {last['skipped_ticks']:.0f} skipped while inferring), "
                 f"{last['chunks_received']} received by the benchmark, {lost} lost (target 0)")
    lines.append(f"  controller: {last['chunks_accepted']:.0f} accepted, {last['chunks_rejected']:.0f} rejected, "
                 f"tick lateness p99 {last['tick_late_p99_ms']:.2f} ms, {last['ticks_missed']:.0f} ticks missed")
    inf = np.array([s["inference_ms_mean"] for s in after])
    p99 = np.array([s["command_interval_ms"]["p99"] for s in after])
    p50 = np.array([s["command_interval_ms"]["p50"] for s in after])
    lines.append(f"  inference mean per window: median {np.nanmedian(inf):.1f} ms, worst {np.nanmax(inf):.1f} ms")
    lines.append(f"  command interval per window: p50 median {np.nanmedian(p50):.2f} ms, p99 median "
                 f"{np.nanmedian(p99):.2f} ms, worst p99 {np.nanmax(p99):.2f} ms")
    lines.append(f"  rejected inputs by reason: {last['rejected'] or 'none'}")
    lines.append(f"  internal errors: {len(errors)} (target 0)" + "".join(f"\n    {e}" for e in errors[:10]))
    return "\n".join(lines)


def plot(samples: list[dict], path: Path) -> Path:
    """Memory per node and latencies over time, drawn with OpenCV (no plotting library needed)."""
    import cv2

    width, height, margin = 1000, 700, 70
    image = np.full((height, width, 3), 255, np.uint8)
    t = np.array([s["t"] for s in samples])
    panels = [
        ("resident memory (MB)", {n: [s["rss_mb"][n] for s in samples] for n in samples[0]["rss_mb"]}),
        ("latency (ms)", {"inference mean": [s["inference_ms_mean"] for s in samples],
                          "command interval p99": [s["command_interval_ms"]["p99"] for s in samples]}),
    ]
    colours = [(200, 60, 30), (30, 140, 30), (30, 60, 200), (150, 30, 150)]
    panel_h = (height - 2 * margin) // 2
    for k, (title, series) in enumerate(panels):
        top = margin // 2 + k * (panel_h + margin)
        values = np.array([v for vs in series.values() for v in vs], dtype=float)
        lo, hi = np.nanmin(values), np.nanmax(values)
        lo, hi = (lo - 1.0, hi + 1.0) if hi - lo < 1e-6 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        cv2.rectangle(image, (margin, top), (width - margin // 2, top + panel_h), (0, 0, 0), 1)
        cv2.putText(image, title, (margin, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        for frac in (0.0, 0.5, 1.0):
            y = int(top + panel_h * (1 - frac))
            cv2.putText(image, f"{lo + frac * (hi - lo):.1f}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        for i, (name, vs) in enumerate(series.items()):
            xs = margin + (t - t[0]) / max(t[-1] - t[0], 1e-9) * (width - 1.5 * margin)
            ys = top + panel_h * (1 - (np.asarray(vs, dtype=float) - lo) / (hi - lo))
            pts = np.stack([xs, ys], 1)[np.isfinite(ys)].astype(np.int32)
            if len(pts) > 1:
                cv2.polylines(image, [pts], False, colours[i % len(colours)], 2)
            cv2.putText(image, name, (margin + 10 + 220 * i, top + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        colours[i % len(colours)], 1)
        cv2.putText(image, f"time (s): 0 .. {t[-1] - t[0]:.0f}", (width // 2 - 60, top + panel_h + 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), image)
    return path


def run(args: argparse.Namespace) -> int:
    from hlrp_ros.graph import FASTDDS_PROFILE_ENV, isolated_ros_env
    from hlrp_ros.tools.closed_loop import EpisodeDriver, bring_up, default_checkpoint, shut_down

    env = isolated_ros_env()
    # this process's own participant (the episode driver) joins the same graph, with the same transports
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", FASTDDS_PROFILE_ENV)
                       if k in env})
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="hlrp_soak_"))
    procs = bring_up(default_checkpoint(), env, log_dir, sim_params=SIM)
    driver = EpisodeDriver("hlrp_soak")
    recorder = Recorder(driver.node)
    samples: list[dict] = []
    out = (args.out / "samples.jsonl").open("w")
    print(f"node logs in {log_dir}; samples in {args.out / 'samples.jsonl'}", flush=True)
    try:
        if not driver.wait_ready(INSTRUCTIONS[0][0], 180.0):
            print("nodes did not come up", flush=True)
            return 1
        start = next_sample = time.monotonic()
        episode = 0

        def tick(_status: dict) -> None:
            nonlocal next_sample
            now = time.monotonic()
            if now >= next_sample:
                next_sample += args.sample
                record = sample(now - start, procs, recorder)
                samples.append(record)
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(f"t {record['t']:6.0f} s | RSS " + " ".join(f"{k} {v:.0f}" for k, v in record["rss_mb"].items())
                      + f" MB | chunks {record['chunks_published']:.0f} | inference {record['inference_ms_mean']:.0f} ms"
                      f" | interval p99 {record['command_interval_ms']['p99']:.2f} ms", flush=True)

        while time.monotonic() - start < args.duration:
            text, colour = INSTRUCTIONS[episode % len(INSTRUCTIONS)]
            episode += 1
            driver.run_episode(1000 + episode, colour, text, 8.0, on_tick=tick)
        tick({})
    finally:
        out.close()
        driver.close()
        codes = shut_down(procs)
    errors = internal_errors(procs) + [f"{name} exited {code}" for name, code in codes.items() if code != 0]
    print(summarise(samples, args.warmup, errors, recorder.chunks_lost(), 0.3))
    print(f"plot: {plot(samples, args.out / 'soak.png')}")
    print(f"(CPU: {os.cpu_count()} cores, shared; load {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of episodes")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before memory growth is judged")
    parser.add_argument("--out", type=Path, default=Path("artifacts/soak"))
    parser.add_argument("--plot-only", type=Path, default=None, help="redraw the plot from a samples.jsonl")
    args = parser.parse_args()
    if args.plot_only is not None:
        samples = [json.loads(line) for line in args.plot_only.read_text().splitlines() if line.strip()]
        print(summarise(samples, args.warmup, [], 0, 0.3))
        print(f"plot: {plot(samples, args.plot_only.with_name('soak.png'))}")
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
