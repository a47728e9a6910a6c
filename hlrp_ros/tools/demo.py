"""`make demo`: the demo world, the policy and the controller over ROS 2, with a live status line.

    python -m hlrp_ros.tools.demo                     # ~60 s, then a summary and a PNG strip
    python -m hlrp_ros.tools.demo --keep-running      # until Ctrl-C
    python -m hlrp_ros.tools.demo --checkpoint DIR --duration 120 --out artifacts/demo
    python -m hlrp_ros.tools.demo --world metaworld   # Meta-World MT10 tasks in lock-step (docs/metaworld.md)

Brings up demo_sim, policy_node and controller_node as processes with the launch file's
executables and parameter files (config/hlrp.yaml, then config/demo.yaml) on a private DDS
domain, then cycles through instructions (training phrasings, held-out paraphrases, and one
instruction switched mid-episode). The status line shows chunks/s, inference time, the
instruction, the distance to the goal and the successes so far.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hlrp_ros.sim.world import COLOURS

#: (instruction, colour, optional (switch time s, new instruction, new colour)) cycled by the demo.
SCRIPT: tuple[tuple[str, str, tuple[float, str, str] | None], ...] = (
    ("reach the red target", "red", None),
    ("go to the blue disc", "blue", (1.0, "touch the green circle", "green")),
    ("please reach for the yellow spot", "yellow", None),
    ("move the arm to the green one", "green", None),
    ("head to the red goal", "red", (1.2, "point at the yellow target", "yellow")),
    ("blue", "blue", None),
)


class FrameRecorder:
    """Keeps camera frames (every ``period`` s) with a caption, for the PNG strip."""

    def __init__(self, period: float = 0.6, max_frames: int = 24) -> None:
        self.period, self.max_frames = period, max_frames
        self.frames: list[tuple[np.ndarray, str]] = []
        self._last = 0.0
        self.caption = ""

    def on_image(self, msg) -> None:
        now = time.monotonic()
        if not self.caption or len(self.frames) >= self.max_frames or now - self._last < self.period:
            return
        self._last = now
        rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        self.frames.append((rgb.copy(), self.caption))

    def save_strip(self, path: Path, per_row: int = 6, scale: int = 4) -> Path | None:
        if not self.frames:
            return None
        tiles = []
        for rgb, caption in self.frames:
            big = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            tile = np.full((big.shape[0] + 22, big.shape[1], 3), 255, np.uint8)
            tile[22:] = big
            cv2.putText(tile, caption[:40], (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(cv2.copyMakeBorder(tile, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(90, 90, 90)))
        while len(tiles) % per_row:
            tiles.append(np.full_like(tiles[0], 255))
        rows = [np.hstack(tiles[i:i + per_row]) for i in range(0, len(tiles), per_row)]
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
        return path


def status_line(driver, episode: int, successes: int, done: int, st: dict, goal_text: str) -> str:
    dist = st.get("distance")
    return (f"ep {episode:3d} | chunks/s {driver.chunk_rate():4.1f} | inference {driver.mean_latency_ms():5.1f} ms"
            f" | {goal_text[:38]!r:40s} | goal {st.get('goal') or '-':6s} dist "
            f"{'  -  ' if dist is None else f'{dist:5.3f}'} m | successes {successes}/{done}")


def run(args: argparse.Namespace) -> int:
    from sensor_msgs.msg import Image

    from hlrp_ros.graph import isolated_ros_env
    from hlrp_ros.tools.closed_loop import EpisodeDriver, bring_up, default_checkpoint, shut_down

    checkpoint = args.checkpoint or default_checkpoint()
    env = isolated_ros_env()
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    log_dir = Path(tempfile.mkdtemp(prefix="hlrp_demo_"))
    print(f"checkpoint {checkpoint}\nnode logs in {log_dir} (ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']})", flush=True)
    procs = bring_up(checkpoint, env, log_dir)
    driver = EpisodeDriver("hlrp_demo")
    recorder = FrameRecorder()
    driver.node.create_subscription(Image, "/camera/image_raw", recorder.on_image, 5)
    results: list[tuple[str, bool, float | None]] = []
    launched = start = time.monotonic()
    code = 0
    try:
        if not driver.wait_ready(SCRIPT[0][0], args.ready_timeout):
            print("nodes did not come up; last output:", file=sys.stderr)
            for p in procs:
                print(f"--- {p.node_name}\n{p.output()[-1500:]}", file=sys.stderr)
            return 1
        # --duration counts episode time only: a slow start-up (a loaded machine) must not eat it
        start = time.monotonic()
        print(f"nodes ready after {start - launched:.1f} s", flush=True)
        episode = 0
        while args.keep_running or episode == 0 or time.monotonic() - start < args.duration:
            instruction, colour, switch = SCRIPT[episode % len(SCRIPT)]
            episode += 1
            text = {"now": instruction}

            def tick(st: dict, ep=episode, text=text) -> None:
                text["now"] = driver.instruction
                recorder.caption = f"{ep}: {driver.instruction}"
                done = len(results)
                print("\r" + status_line(driver, ep, sum(r[1] for r in results), done, st, text["now"]),
                      end="", flush=True)

            out = driver.run_episode(args.seed + episode, colour, instruction, args.episode_timeout + (
                switch[0] if switch else 0.0), switch=switch, on_tick=tick)
            results.append((out.instruction if switch is None else f"{instruction} -> {out.instruction}",
                            out.success, out.success_time))
            print("\r" + status_line(driver, episode, sum(r[1] for r in results), len(results), driver.status,
                                     out.instruction) + ("  SUCCESS" if out.success else "  timeout"), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    finally:
        driver.close()
        codes = shut_down(procs)
    n_ok = sum(r[1] for r in results)
    print(f"\nsummary: {n_ok}/{len(results)} episodes succeeded in {time.monotonic() - start:.0f} s of episodes "
          f"(node exit codes {codes})")
    for text, ok, t in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {text}" + (f"  ({t:.1f} s)" if t is not None else ""))
    strip = recorder.save_strip(args.out / "demo_strip.png")
    if strip:
        print(f"camera frames: {strip}")
    if not results or (args.strict and n_ok < len(results)):
        code = 1
    return code


def run_metaworld(args: argparse.Namespace) -> int:
    """A few MT10 tasks (one episode each, held-out seeds) with a live status line and a PNG strip."""
    from hlrp_ros.sim.metaworld_env import MT10_TASKS, instruction_for
    from hlrp_ros.tools.closed_loop import default_checkpoint, shut_down
    from hlrp_ros.tools.metaworld_eval import FrameStrip, MetaWorldDriver, bring_up_metaworld, plan_episode

    checkpoint = args.checkpoint or default_checkpoint("metaworld")
    log_dir = Path(tempfile.mkdtemp(prefix="hlrp_demo_metaworld_"))
    print(f"checkpoint {checkpoint}\nnode logs in {log_dir}", flush=True)
    procs, restore = bring_up_metaworld(checkpoint, args.time_mode, log_dir)
    strip = FrameStrip()
    driver = MetaWorldDriver(strip)
    results, start = [], time.monotonic()
    try:
        if not driver.wait_ready(instruction_for(MT10_TASKS[0]), args.ready_timeout):
            for p in procs:
                print(f"--- {p.node_name}\n{p.output()[-1500:]}", file=sys.stderr)
            return 1
        start = time.monotonic()
        episode = 0
        while args.keep_running or episode == 0 or time.monotonic() - start < args.duration:
            task = MT10_TASKS[episode % len(MT10_TASKS)]
            plan = plan_episode("train", task, episode // len(MT10_TASKS), args.seed)
            episode += 1

            def tick(st: dict, ep=episode) -> None:
                print(f"\rep {ep:3d} | {st['task']:24s} | step {st['step']:3d} | "
                      f"{'SUCCESS' if st['success'] else 'running' if st['running'] else 'waiting'} | "
                      f"successes {sum(r['success'] for r in results)}/{len(results)}   ", end="", flush=True)

            results.append(driver.run_episode(task, plan["seed"], plan["instruction"], 600.0, record=True,
                                              on_tick=tick))
            print(f"  {'ok' if results[-1]['success'] else 'failed'} ({plan['instruction']!r})", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    finally:
        driver.close()
        restore()
        codes = shut_down(procs)
    print(f"\nsummary: {sum(r['success'] for r in results)}/{len(results)} episodes succeeded "
          f"in {time.monotonic() - start:.0f} s (node exit codes {codes})")
    if strip.frames:
        print(f"camera frames: {strip.save(args.out / 'metaworld_strip.png')}")
    return 1 if not results or (args.strict and not all(r["success"] for r in results)) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped demo checkpoint")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of episodes before stopping, counted from when the nodes are ready "
                        "(at least one episode runs; start-up is bounded by --ready-timeout)")
    parser.add_argument("--keep-running", action="store_true", help="run until Ctrl-C")
    parser.add_argument("--episode-timeout", type=float, default=8.0, help="episode length limit (sim s)")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo"), help="where the PNG strip goes")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an episode failed")
    parser.add_argument("--world", choices=("demo", "metaworld"), default="demo",
                        help="demo: the planar arm; metaworld: Meta-World MT10 tasks one after the other")
    parser.add_argument("--time-mode", choices=("lockstep", "realtime"), default="lockstep",
                        help="metaworld: the simulator's time mode")
    args = parser.parse_args(argv)
    if args.world == "metaworld":
        return run_metaworld(args)
    assert all(c in COLOURS for _, c, _ in SCRIPT)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
