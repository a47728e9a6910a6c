"""Chunk seams over ROS 2 in the demo world: switching vs blending vs guided vs conditioned real-time chunking.

    python benchmarks/bench_rtc.py --episodes 20 --delays 0 0.2 0.4 0.6 --json docs/rtc_bench.json \\
        --plot docs/rtc_seams.png
    python benchmarks/bench_rtc.py --modes switch conditioned --conditioned-checkpoint RUN/final
    python benchmarks/bench_rtc.py --cost-only          # chunk time with / without guidance (CPU)

For every extra inference delay (policy_node ``extra_inference_delay``, evaluation only) and mode, the
demo world, policy_node (shipped checkpoint) and controller_node are brought up as processes and the
``train`` episodes of ``hlrp_ros.tools.evaluate`` are driven. Modes: ``switch`` (today: the controller
switches at the due index), ``blend`` (controller ``blend_time``), ``guided`` (policy_node
``rtc_mode: guided``), ``conditioned`` (``rtc_mode: conditioned`` with ``--conditioned-checkpoint``, a model
trained with ``train --rtc-max-delay``). All modes publish the whole chunk (``n_action_steps`` = chunk size) so that the
previous chunk still covers the arrival of the next at the largest delay. Recorded: every ActionChunk with
its arrival time and the controller's commanded positions (``/joint_command``); reported: the target gap
and the commanded jump at each chunk switch, RMS jerk (``hlrp_ros.tools.seam_metrics``), seam-guard
activations (controller diagnostics), success rate and median time to target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

MODES = ("switch", "blend", "guided", "conditioned")


def mode_params(mode: str, delay: float, blend_time: float, chunk: int, beta: float) -> tuple[dict, dict]:
    """(policy_node, controller_node) parameters of one condition."""
    policy = {"extra_inference_delay": float(delay), "n_action_steps": chunk, "rtc_beta": float(beta),
              "rtc_mode": mode if mode in ("guided", "conditioned") else "off"}
    controller = {"blend_time": float(blend_time) if mode == "blend" else 0.0}
    return policy, controller


class Recorder:
    """Chunks (arrival, start, dt, actions), commands (t, positions) and the controller's diagnostics."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState

        from hlrp_ros.msg import ActionChunk

        self.node = node
        self.chunks: list[dict] = []
        self.commands: list[tuple[float, list[float]]] = []
        self.controller: dict[str, str] = {}
        node.create_subscription(ActionChunk, "/action_chunk", self._on_chunk, 50)
        node.create_subscription(JointState, "/joint_command", self._on_command, 200)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_chunk(self, msg) -> None:
        from hlrp_ros.chunk_codec import time_to_ns

        dof = len(msg.joint_names)
        actions = np.asarray(msg.actions, dtype=float).reshape(-1, dof)
        self.chunks.append({"arrival": self.now(), "start": time_to_ns(msg.first_action_time) * 1e-9,
                            "dt": float(msg.dt), "actions": actions.tolist(), "latency": float(msg.inference_latency)})

    def _on_command(self, msg) -> None:
        from hlrp_ros.chunk_codec import time_to_ns

        stamp = time_to_ns(msg.header.stamp) * 1e-9 or self.now()
        self.commands.append((stamp, list(msg.position)))

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if "chunk execution" in status.name:
                self.controller = {kv.key: kv.value for kv in status.values}

    def window(self, start: float, end: float) -> tuple[list, np.ndarray, np.ndarray]:
        from hlrp_ros.tools.seam_metrics import ChunkRecord

        # chunks computed from observations after ``start`` (their first action is due after it)
        chunks = [ChunkRecord(c["arrival"], c["start"], c["dt"], np.asarray(c["actions"]))
                  for c in self.chunks if start <= c["start"] and c["arrival"] <= end]
        cmds = [c for c in self.commands if start <= c[0] <= end]
        times = np.array([c[0] for c in cmds])
        positions = np.array([c[1] for c in cmds]) if cmds else np.zeros((0, 3))
        return chunks, times, positions


def run_condition(args, mode: str, delay: float, checkpoint: Path) -> dict:
    from hlrp_ros.graph import isolated_ros_env
    from hlrp_ros.sim.language import make_instruction
    from hlrp_ros.tools import seam_metrics as sm
    from hlrp_ros.tools.closed_loop import EpisodeDriver, bring_up, joined_graph, shut_down
    from hlrp_ros.tools.evaluate import plan_episode

    env = isolated_ros_env()
    log_dir = Path(tempfile.mkdtemp(prefix=f"hlrp_rtc_{mode}_{delay}_"))
    policy_params, controller_params = mode_params(mode, delay, args.blend_time, args.chunk, args.beta)
    procs = bring_up(checkpoint, env, log_dir, policy_params=policy_params, controller_params=controller_params)
    gaps, jumps, jerks, outcomes, traces = [], [], [], [], []
    uncovered = [0, 0]  # control ticks without a due action, control ticks
    try:
        with joined_graph(env):
            driver = EpisodeDriver()
            try:
                rec = Recorder(driver.node)
                if not driver.wait_ready(make_instruction("red", np.random.default_rng(0)), args.ready_timeout):
                    raise RuntimeError(f"nodes not ready; logs in {log_dir}")
                for i in range(args.episodes):
                    plan = plan_episode("train", args.seed, i, 1.0)
                    start = rec.now()
                    outcome = asdict(driver.run_episode(plan["seed"], plan["colour"], plan["instruction"],
                                                        args.timeout, hold=args.hold))
                    # Seams of this episode only: the reset teleports the arm.
                    chunks, times, positions = rec.window(start + args.skip, rec.now())
                    switches = [max(c.arrival, c.start) for c in chunks[1:]]
                    gaps += sm.target_gaps(chunks)
                    jumps += sm.commanded_jumps(times, positions, switches)
                    jerks.append(sm.jerk_rms(times, positions))
                    uncovered = [a + b for a, b in zip(uncovered, sm.uncovered_ticks(chunks, times), strict=True)]
                    outcomes.append(outcome)
                    if i < 5:  # a few episodes' commanded paths for the plot
                        traces.append({"times": times.tolist(), "positions": positions.tolist(), "switches": switches})
                    print(f"\r[{mode} +{delay:.1f} s] episode {i + 1}/{args.episodes}: "
                          f"successes {sum(o['success'] for o in outcomes)}", end="", flush=True)
                driver.spin_for(1.5)  # one more controller diagnostics message
                print()
            finally:
                driver.close()
    finally:
        shut_down(procs)
    times = [o["success_time"] for o in outcomes if o["success_time"] is not None]
    return {"mode": mode, "extra_delay": delay, "episodes": len(outcomes),
            "success": sum(o["success"] for o in outcomes) / max(len(outcomes), 1),
            "median_time_to_target_s": float(np.median(times)) if times else None,
            "target_gap": sm.stats(gaps), "commanded_jump": sm.stats(jumps),
            "jerk_rms": float(np.nanmedian(jerks)) if jerks else float("nan"),
            "ticks_without_due_action": uncovered[0], "ticks": uncovered[1],
            "seam_guard_activations": int(float(rec.controller.get("seam_guard_activations", "nan") or 0)),
            "chunks": len(rec.chunks), "latency_median_s": float(np.median([c["latency"] for c in rec.chunks])),
            "failures": [{k: o[k] for k in ("seed", "goal", "reached", "final_nearest", "final_distance", "duration")}
                         for o in outcomes if not o["success"]],
            "traces": traces}


def chunk_cost(presets: list[str], repeats: int) -> list[dict]:
    """Median chunk time (encode_prefix + sample_chunk), unguided vs guided vs conditioned, same process,
    interleaved (one model: ``rtc_max_delay`` changes training and the conditioned sampling only)."""
    import torch

    from hlrp_ros.policies.base import Observation
    from hlrp_ros.policies.common.realtime_chunking import ChunkGuide
    from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy
    from hlrp_ros.policies.hlrp.presets import make_config

    rows = []
    for preset in presets:
        torch.manual_seed(0)
        h_chunk = make_config(preset).chunk_size
        policy = HLRPPolicy(make_config(preset, rtc_max_delay=h_chunk // 2), init_weights=preset == "tiny").eval()
        if preset != "tiny":
            with torch.no_grad():
                for p in policy.parameters():
                    p.normal_(0, 0.02)
        cfg = policy.config
        rng = np.random.default_rng(0)
        h, w = cfg.image_size
        obs = Observation(images={c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in cfg.camera_names},
                          state=rng.normal(size=cfg.state_dim).astype(np.float32), instruction="pick up the cube")
        prev = policy.predict_action_chunk(obs)
        d = max(1, cfg.chunk_size // 10)
        guides = {"unguided": None,
                  "guided": ChunkGuide(prev[d:], delay=d, execution_horizon=max(1, cfg.chunk_size // 5)),
                  "conditioned": ChunkGuide(prev[d:], delay=d, execution_horizon=max(1, cfg.chunk_size // 5),
                                            method="conditioned")}
        times = {kind: [] for kind in guides}
        for r in range(repeats + 1):
            for kind, guide in guides.items():
                t0 = time.perf_counter()
                policy.sample_chunk(policy.encode_prefix(obs), guide=guide)
                if r > 0:  # the first round warms up
                    times[kind].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rows.append({"preset": preset, "unguided_ms": med["unguided"], "guided_ms": med["guided"],
                     "conditioned_ms": med["conditioned"], "ratio": med["guided"] / med["unguided"],
                     "conditioned_ratio": med["conditioned"] / med["unguided"], "repeats": repeats,
                     "num_steps": cfg.num_steps, "chunk_size": cfg.chunk_size})
        print(f"{preset}: chunk unguided {med['unguided']:.1f} ms, guided {med['guided']:.1f} ms "
              f"(x{med['guided'] / med['unguided']:.2f}), conditioned {med['conditioned']:.1f} ms "
              f"(x{med['conditioned'] / med['unguided']:.2f}), {repeats} repeats")
    return rows


def plot(results: list[dict], delay: float, path: Path, modes: tuple[str, str] = ("switch", "guided")) -> None:
    """Commanded joint positions of one episode per mode, the first mode above the second, chunk switches as
    grey lines (OpenCV)."""
    import cv2

    width, height, margin = 1100, 700, 60
    image = np.full((height, width, 3), 255, np.uint8)
    colours = [(200, 60, 30), (30, 140, 30), (30, 60, 200)]
    panel_h = (height - 3 * margin) // 2
    span = max(float(tr["times"][-1] - tr["times"][0]) for r in results for tr in r["traces"]
               if r["mode"] in modes and abs(r["extra_delay"] - delay) < 1e-9)
    for k, mode in enumerate(modes):
        res = next((r for r in results if r["mode"] == mode and abs(r["extra_delay"] - delay) < 1e-9), None)
        if res is None or not res["traces"]:
            continue
        tr = max(res["traces"], key=lambda trace: len(trace["switches"]))  # the episode with the most seams
        t, q = np.asarray(tr["times"]), np.asarray(tr["positions"])
        t = t - t[0]
        top = margin + k * (panel_h + margin)
        lo, hi = float(q.min()) - 0.05, float(q.max()) + 0.05
        def to_px(tt: float, qq: float, top: int = top, lo: float = lo, hi: float = hi) -> tuple[int, int]:
            return int(margin + tt / span * (width - 2 * margin)), int(top + panel_h * (1 - (qq - lo) / (hi - lo)))

        cv2.rectangle(image, (margin, top), (width - margin, top + panel_h), (0, 0, 0), 1)
        for ts in tr["switches"]:
            x = to_px(ts - tr["times"][0], lo)[0]
            if margin <= x <= width - margin:
                cv2.line(image, (x, top), (x, top + panel_h), (170, 170, 170), 1)
        for j in range(q.shape[1]):
            pts = np.array([to_px(tt, qq) for tt, qq in zip(t, q[:, j], strict=True)], np.int32)
            cv2.polylines(image, [pts], False, colours[j % 3], 2)
            cv2.putText(image, f"joint_{j + 1}", (margin + 10 + 100 * j, top + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        colours[j % 3], 1)
        g = res["target_gap"]
        cv2.putText(image, f"{mode}: commanded positions (rad, {lo:.2f}..{hi:.2f}), extra delay {delay:.1f} s, "
                    f"grey: chunk switches; seam gap p95 {g['p95']:.3f} rad", (margin, top - 10),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(image, f"time (s), 0..{span:.1f}", (width // 2 - 60, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
    parser.add_argument("--modes", nargs="+", default=["switch", "blend", "guided"], choices=MODES)
    parser.add_argument("--blend-time", type=float, default=0.2, help="controller blend_time of the blend mode (s)")
    parser.add_argument("--chunk", type=int, default=16, help="n_action_steps of every mode")
    parser.add_argument("--beta", type=float, default=5.0, help="policy_node rtc_beta of the guided mode")
    parser.add_argument("--timeout", type=float, default=8.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--skip", type=float, default=0.1, help="chunks due within this long after a reset are "
                        "not compared with the previous episode's")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--conditioned-checkpoint", type=Path, default=None,
                        help="checkpoint of the conditioned mode (trained with --rtc-max-delay)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="PNG: --plot-modes traces at --plot-delay")
    parser.add_argument("--plot-modes", nargs=2, default=["switch", "guided"], choices=MODES)
    parser.add_argument("--plot-delay", type=float, default=0.4)
    parser.add_argument("--plot-from", type=Path, default=None, help="only draw --plot from this --json output")
    parser.add_argument("--cost-only", action="store_true", help="only the chunk-time comparison")
    parser.add_argument("--cost-presets", nargs="+", default=["tiny", "smolvla-base"])
    parser.add_argument("--cost-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out: dict = {"host": platform.node(), "load": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
    if args.plot_from:
        plot(json.loads(args.plot_from.read_text())["results"], args.plot_delay, args.plot, tuple(args.plot_modes))
        return 0
    if args.cost_only:
        out["cost"] = chunk_cost(args.cost_presets, args.cost_repeats)
    else:
        from hlrp_ros.tools.closed_loop import default_checkpoint

        checkpoint = args.checkpoint or default_checkpoint()
        if "conditioned" in args.modes and args.conditioned_checkpoint is None:
            parser.error("--modes conditioned needs --conditioned-checkpoint")
        results = []
        for delay in args.delays:
            for mode in args.modes:
                res = run_condition(args, mode, delay, args.conditioned_checkpoint if mode == "conditioned"
                                    else checkpoint)
                results.append(res)
                g, j = res["target_gap"], res["commanded_jump"]
                print(f"  {mode:6s} +{delay:.1f} s: gap mean {g['mean']:.3f} p95 {g['p95']:.3f} max {g['max']:.3f} "
                      f"| cmd jump mean {j['mean']:.4f} p95 {j['p95']:.4f} max {j['max']:.4f} (n={j['n']}) "
                      f"| jerk {res['jerk_rms']:.0f} | guard {res['seam_guard_activations']} "
                      f"| ticks without a due action {res['ticks_without_due_action']}/{res['ticks']} "
                      f"| success {res['success']:.0%} t {res['median_time_to_target_s']} "
                      f"| latency {res['latency_median_s'] * 1e3:.0f} ms", flush=True)
                if args.json:
                    args.json.write_text(json.dumps({**out, "results": results}, indent=1))
        out["results"] = results
        if args.plot:
            plot(results, args.plot_delay, args.plot, tuple(args.plot_modes))
    out["load_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
