"""Meta-World MT10 closed-loop evaluation over ROS 2 (metaworld_sim + policy_node + controller_node).

Used by ``python -m hlrp_ros.tools.evaluate --world metaworld`` (see there for the options). Each
condition runs ``episodes`` episodes of every task on held-out seeds (at or above the training
seeds' limit), one after the other in one running graph:

  train    the task's training instruction.
  heldout  a held-out paraphrase of it (never trained on).
  wrong    the scene of task A with task B's instruction (B = the next MT10 task): success is still
           task A's, so a policy that follows the words scores low here.

An episode ends at Meta-World's success or after ``max_steps`` steps (500 by default).

The policy's state: a checkpoint trained on the 4-D end effector (its state is its action's joints)
reads ``/joint_states``; one trained on Meta-World's full observation (``metaworld_dataset --state
full``: the state names in its ``training.json`` differ from its joint names) reads
``/metaworld_sim/full_state`` with ``state_joint_names`` set to those names (``policy_state_params``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hlrp_ros.sim.metaworld_env import MT10_TASKS, OBS_NAMES, instruction_for
from hlrp_ros.tools.closed_loop import GraphDriver
from hlrp_ros.tools.metaworld_dataset import TRAIN_SEED_LIMIT

CONDITIONS = ("train", "heldout", "wrong")
#: metaworld_sim's topic of the full observation as named positions (``OBS_NAMES``).
FULL_STATE_TOPIC = "/metaworld_sim/full_state"


def policy_state_params(checkpoint: Path) -> dict:
    """policy_node parameters that wire the checkpoint's state: none for a state that is the action's joints
    (``/joint_states``), else ``joint_states_topic`` (the full observation's topic) and ``state_joint_names``
    (from ``training.json``'s ``state_names``, which must be Meta-World observation names)."""
    training = Path(checkpoint) / "training.json"
    info = json.loads(training.read_text()) if training.is_file() else {}
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    state_names = info.get("state_names")
    if not state_names or list(state_names) == list(config.get("joint_names") or []):
        return {}
    unknown = [n for n in state_names if n not in OBS_NAMES]
    if unknown:
        raise ValueError(f"{checkpoint}: state names {unknown} are not Meta-World observation names (OBS_NAMES)")
    return {"joint_states_topic": FULL_STATE_TOPIC, "state_joint_names": list(state_names)}


def plan_episode(condition: str, task: str, index: int, seed: int) -> dict:
    """Seed and instruction of one episode, a pure function of its arguments (seeds are held out)."""
    k = MT10_TASKS.index(task)
    plan = {"task": task, "seed": TRAIN_SEED_LIMIT + seed + k * 1000 + index, "instructed_task": task}
    if condition == "train":
        plan["instruction"] = instruction_for(task)
    elif condition == "heldout":
        plan["instruction"] = instruction_for(task, "heldout", index)
    elif condition == "wrong":
        other = MT10_TASKS[(k + 1) % len(MT10_TASKS)]
        plan.update(instruction=instruction_for(other), instructed_task=other)
    else:
        raise ValueError(f"unknown condition {condition!r}; one of {CONDITIONS}")
    return plan


@dataclass
class FrameStrip:
    """Camera frames of the first episode of each task, for a PNG strip (rows: tasks, columns: time)."""

    columns: int = 6
    frames: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, task: str, rgb: np.ndarray, step: int) -> None:
        kept = self.frames.setdefault(task, [])
        if step % 25 == 0 and len(kept) < 20:  # every 25 steps (0.31 s), up to 20 frames
            kept.append(rgb)

    def save(self, path: Path, scale: int = 2) -> Path:
        import cv2

        rows = []
        for frames in self.frames.values():
            if not frames:
                continue
            pick = np.linspace(0, len(frames) - 1, self.columns).round().astype(int)
            row = np.concatenate([frames[i] for i in pick], axis=1)
            rows.append(row)
        image = np.concatenate(rows, axis=0)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return path


class MetaWorldDriver(GraphDriver):
    """Resets episodes, says instructions and follows the status, from this process (own rclpy context)."""

    def __init__(self, strip: FrameStrip | None = None) -> None:
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from hlrp_ros.msg import ActionChunk

        super().__init__("hlrp_metaworld_driver")
        self.reset_pub = self.node.create_publisher(String, "/metaworld_sim/reset", 10)
        self.status: dict | None = None
        self.chunks: deque = deque(maxlen=500)  # (inference latency s, instruction)
        self.strip, self._recording = strip, None
        self.node.create_subscription(String, "/metaworld_sim/episode", self._on_status, 10)
        self.node.create_subscription(ActionChunk, "/action_chunk", self._on_chunk, 10)
        if strip is not None:
            self.node.create_subscription(Image, "/camera/image_raw", self._on_image, 5)

    def _on_status(self, msg) -> None:
        self.status = json.loads(msg.data)

    def _on_chunk(self, msg) -> None:
        self.chunks.append((float(msg.inference_latency), msg.instruction))

    def _on_image(self, msg) -> None:
        if self._recording is not None and self.status and self.status.get("running"):
            rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
            self.strip.add(self._recording, rgb.copy(), int(self.status["step"]))

    def wait_ready(self, instruction: str, timeout: float) -> bool:
        """The world reports status and the policy publishes chunks (for ``instruction``)."""
        self.instruction_pub.publish(self._String(data=instruction))
        return self.spin_until(lambda: self.status is not None and len(self.chunks) >= 2
                               and self.reset_pub.get_subscription_count() > 0, timeout)

    def run_episode(self, task: str, seed: int, instruction: str, timeout: float, record: bool = False,
                    on_tick=None) -> dict:
        """Say ``instruction``; once the policy's chunks carry it, reset (task, seed) and run until done.
        ``on_tick(status)`` is called while it runs (a status line)."""
        self.instruction_pub.publish(self._String(data=instruction))
        if not self.spin_until(lambda: self.chunks and self.chunks[-1][1] == instruction, 30.0):
            raise TimeoutError(f"the policy's chunks do not carry the instruction {instruction!r}")
        episode = self.status["episode"] + 1
        self._recording = task if record else None
        self.reset_pub.publish(self._String(data=json.dumps({"task": task, "seed": seed})))
        started = time.monotonic()
        def finished() -> bool:
            if on_tick is not None and self.status["episode"] >= episode:
                on_tick(self.status)
            return self.status["episode"] >= episode and self.status["done"]

        if not self.spin_until(finished, timeout):
            raise TimeoutError(f"{task} seed {seed}: not done after {timeout:.0f} s: {self.status}")
        self._recording = None
        st = self.status
        latencies = [c[0] for c in list(self.chunks)[-40:]]
        return {"task": task, "seed": seed, "instruction": instruction, "success": bool(st["success"]),
                "success_step": st["success_step"], "steps": st["step"], "wall_s": round(time.monotonic() - started, 2),
                "inference_ms": 1000 * float(np.median(latencies)) if latencies else None,
                "lockstep": st["lockstep"]}


def bring_up_metaworld(checkpoint: Path, time_mode: str, log_dir: Path):
    """The graph on a private DDS domain (this process's rclpy joins it): (processes, restore-environment)."""
    import contextlib

    from hlrp_ros.graph import isolated_ros_env
    from hlrp_ros.tools.closed_loop import bring_up, joined_graph

    env = isolated_ros_env()
    procs = bring_up(checkpoint, env, log_dir, world="metaworld", sim_params={"time_mode": time_mode},
                     policy_params=policy_state_params(checkpoint))
    joined = contextlib.ExitStack()
    joined.enter_context(joined_graph(env))
    return procs, joined.close


def summarise(condition: str, outcomes: list[dict]) -> dict:
    """Per-task and average success of one condition."""
    per_task = {}
    for task in MT10_TASKS:
        mine = [o for o in outcomes if o["task"] == task]
        if mine:
            per_task[task] = {"episodes": len(mine), "success": sum(o["success"] for o in mine) / len(mine)}
    average = float(np.mean([v["success"] for v in per_task.values()])) if per_task else 0.0
    return {"condition": condition, "episodes": len(outcomes), "average_success": average, "per_task": per_task}


def run(checkpoint: Path, conditions: list[str], tasks: list[str], episodes: int, seed: int, time_mode: str,
        strip_path: Path | None, ready_timeout: float = 180.0, log=print) -> dict[str, list[dict]]:
    """Bring up the graph, run every condition's episodes, shut it down; outcomes by condition."""
    import tempfile

    from hlrp_ros.tools.closed_loop import shut_down

    log_dir = Path(tempfile.mkdtemp(prefix="hlrp_metaworld_eval_"))
    procs, restore = bring_up_metaworld(checkpoint, time_mode, log_dir)
    strip = FrameStrip() if strip_path is not None else None
    driver = MetaWorldDriver(strip)
    try:
        if not driver.wait_ready(instruction_for(tasks[0]), ready_timeout):
            logs = "\n".join(p.node_name + ":\n" + p.output()[-2000:] for p in procs)
            raise RuntimeError(f"nodes not ready; logs in {log_dir}:\n{logs}")
        results = run_plans(conditions, tasks, episodes, seed, log, lambda plan, record: driver.run_episode(
            plan["task"], plan["seed"], plan["instruction"], timeout=600.0, record=record))
    finally:
        driver.close()
        restore()
        codes = shut_down(procs)
        log(f"node exit codes: {codes} (logs in {log_dir})")
    if strip is not None and strip.frames:
        strip.save(strip_path)
        log(f"frame strip: {strip_path}")
    return results


def run_inprocess(checkpoint: Path, conditions: list[str], tasks: list[str], episodes: int, seed: int,
                  replan_steps: int = 8, dtype: str = "float32", log=print) -> dict[str, list[dict]]:
    """The same episodes without ROS: the policy in this process, a chunk every ``replan_steps`` steps
    (metaworld_sim's ``chunk_period``) of which those steps' commands are executed, as the lock-step graph
    does. A quick check of a checkpoint, and the reference that tells a policy's failure from the graph's."""
    import torch

    from hlrp_ros.policies.base import Observation
    from hlrp_ros.policies.factory import load_policy
    from hlrp_ros.sim.metaworld_env import MetaWorldEnv

    torch.set_num_threads(1)
    policy = load_policy(checkpoint, dtype=dtype)
    state_kind = "full" if policy_state_params(checkpoint) else "ee"
    camera = policy.config.camera_names[0]
    env = MetaWorldEnv()  # metaworld_sim's camera settings; the policy resizes as policy_node does
    generator = torch.Generator().manual_seed(seed)

    def run_episode(plan: dict, record: bool) -> dict:
        env.reset(plan["task"], plan["seed"])
        while not env.success and not env.done:
            obs = Observation(images={camera: env.render()}, state=env.state_of(state_kind),
                              instruction=plan["instruction"])
            chunk = policy.predict_action_chunk(obs, generator=generator).numpy()
            for command in chunk[:replan_steps]:
                if env.step_target(command) or env.done:
                    break
        return {"task": plan["task"], "seed": plan["seed"], "instruction": plan["instruction"], "success": env.success,
                "success_step": env.success_step, "steps": env.steps}

    try:
        return run_plans(conditions, tasks, episodes, seed, log, run_episode)
    finally:
        env.close()


def run_plans(conditions: list[str], tasks: list[str], episodes: int, seed: int, log,
              run_episode) -> dict[str, list[dict]]:
    """Every condition's ``episodes`` episodes of every task (``plan_episode``), each an outcome of
    ``run_episode(plan, record)`` (record: the first condition's first episode of a task, for the frame
    strip); one log line per task."""
    results: dict[str, list[dict]] = {}
    for condition in conditions:
        results[condition] = []
        t0 = time.monotonic()
        for task in tasks:
            for i in range(episodes):
                plan = plan_episode(condition, task, i, seed)
                outcome = run_episode(plan, condition == conditions[0] and i == 0)
                outcome.update(condition=condition, instructed_task=plan["instructed_task"])
                results[condition].append(outcome)
            done = [o for o in results[condition] if o["task"] == task]
            inference = f", inference {done[-1]['inference_ms']:.1f} ms" if done[-1].get("inference_ms") else ""
            log(f"[{condition}] {task:24s} {sum(o['success'] for o in done)}/{len(done)}  "
                f"({time.monotonic() - t0:.0f} s{inference})")
    return results


def print_table(summary: list[dict], log=print) -> None:
    """Success per task (rows) and condition (columns), with the average."""
    header = "| task | " + " | ".join(s["condition"] for s in summary) + " |"
    log(header)
    log("|" + "---|" * (len(summary) + 1))
    tasks = [t for t in MT10_TASKS if any(t in s["per_task"] for s in summary)]
    for task in tasks:
        cells = []
        for s in summary:
            v = s["per_task"].get(task)
            cells.append(f"{v['success']:.0%} ({v['episodes']})" if v else "")
        log(f"| {task} | " + " | ".join(cells) + " |")
    log("| **average** | " + " | ".join(f"**{s['average_success']:.1%}** ({s['episodes']})" for s in summary) + " |")
