"""policy_node: cameras + joint states + instruction in, ActionChunk out, on a timer.

Inputs are kept latest-only (sensor-data QoS for cameras and joint states). The instruction
(and abstract token) topics are subscribed twice, reliable + transient local (a latched
instruction published before the node started still arrives) and reliable + volatile (a plain
``ros2 topic pub`` or any default publisher is heard too); a publisher no subscription can match
gets one warning in the node's words and a diagnostics entry.
The node spins on a single-threaded executor; the timer hands each inference to one dedicated
worker thread, so the subscriptions keep flowing while the model runs, and a tick that lands
while the previous inference is still running is skipped and counted (``hlrp_ros.control.ticks``).
(rclpy's ``MultiThreadedExecutor`` was the first design: its wait loop re-woke for every entity
that was ready but not yet taken by a worker, which kept one core at ~100 % and made inference
~6x slower, 112 ms instead of ~20 ms, on the 2-core demo machine.)

Each chunk: every input is checked (present, fresh, sane), the instruction is re-tokenised only
when it changed, the prefix is encoded once, the suffix denoised, and ``n_action_steps``
actions are published with ``first_action_time`` = the time the inputs were gathered +
``first_action_delay`` and ``dt`` = ``action_period``. Anything wrong is logged (throttled per
reason) and no chunk is published for that tick. A policy that conditions on several
observations (``n_obs_steps > 1``) gets them from an ``ObservationBuffer`` a timer fills twice per
observation period; a gap in it blocks the chunk like any other unusable input. The model is reached only through
``hlrp_ros.policies`` (``load_policy``, ``Observation``, ``encode_prefix``, ``sample_chunk``,
``processor.tokenize``); torch is imported with it, after the parameters were validated.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from hlrp_ros.allocator import keep_freed_memory, request_huge_pages
from hlrp_ros.chunk_codec import encode_chunk, time_to_ns
from hlrp_ros.control.ordering import arrives_out_of_order
from hlrp_ros.control.seams import RTC_MODES, PublishedChunk, RtcConfig, SeamPlanner
from hlrp_ros.control.ticks import TickGate
from hlrp_ros.diagnostics import OK, WARN, ReasonThrottle, make_array, make_status
from hlrp_ros.nodes import (
    ParameterError,
    ParamSpec,
    QosMismatches,
    SimClockWatch,
    accept_live_updates,
    declare_parameters,
    run_node,
    steady_timer,
)
from hlrp_ros.policies.base import Observation, ObservationHistoryError, fitted_size, history_length
from hlrp_ros.ros_image import BACKENDS, ImageConverter, ImageError

PARAMS = (
    ParamSpec("checkpoint", "", "Policy checkpoint directory (native HLRP or LeRobot SmolVLA).",
              fixed_because="the model is loaded once, at start-up"),
    ParamSpec("tokenizer_dir", "", "Tokenizer directory passed to load_policy (LeRobot checkpoints; empty: none)."),
    ParamSpec("device", "cpu", "Torch device: cpu, cuda, cuda:N."),
    ParamSpec("dtype", "float32", "Model dtype (bfloat16: 2.5-3x faster on CPUs with AMX, actions within ~1 % "
              "of float32; docs/cpu_speed.md).", choices=("float32", "bfloat16")),
    ParamSpec("compile", False, "Compile the chunk with torch.compile: the flow-matching families at fixed "
              "shapes; diffusion's image encoder and UNet step with frozen weights (inductor; faster on a CPU). A "
              "warm-up chunk at start compiles it (tens of seconds; minutes for a base model); same actions "
              "within float tolerance."),
    ParamSpec("cuda_graphs", False, "Record the chunk as CUDA graphs and replay it for every chunk (device cuda, "
              "flow-matching families): removes the per-kernel launch cost that dominates on a GPU at batch 1; a "
              "warm-up chunk at start records it."),
    ParamSpec("camera_topics", ["/camera/image_raw"], "Camera topics; a topic ending in /compressed is a "
              "sensor_msgs/CompressedImage, any other a raw sensor_msgs/Image."),
    ParamSpec("camera_names", ["top"], "Model camera name fed by each camera_topics entry (same order/length)."),
    ParamSpec("joint_states_topic", "/joint_states", "sensor_msgs/JointState input (re-ordered by name)."),
    ParamSpec("instruction_topic", "/instruction", "std_msgs/String instruction; any reliable publisher, latched "
              "(transient local) or not (a plain ros2 topic pub)."),
    ParamSpec("abstract_tokens_topic", "", "Optional std_msgs/Int32MultiArray of abstract action token ids "
              "(empty: not subscribed)."),
    ParamSpec("joint_names", [], "Joints defining the order of state and action dimensions "
              "(empty: the checkpoint's joint_names)."),
    ParamSpec("state_joint_names", [], "Joints whose measured positions form the state, in order, when it is not "
              "the action's joints (a model with state_dim != action_dim; empty: joint_names)."),
    ParamSpec("inference_period", 0.5, "Timer period between inferences (s).", minimum=0.001, maximum=3600.0, read_only=False),
    ParamSpec("action_period", 0.1, "Seconds between consecutive actions of a chunk (ActionChunk.dt).",
              minimum=1e-4, maximum=60.0),
    ParamSpec("first_action_delay", 0.0, "actions[0] is due this long after the inputs were gathered (s).",
              minimum=-10.0, maximum=10.0, read_only=False),
    ParamSpec("num_steps", 0, "Denoising steps (0: the checkpoint's num_steps).", minimum=0, maximum=1000, read_only=False),
    ParamSpec("n_action_steps", 0, "Actions published per chunk (0: the checkpoint's n_action_steps).",
              minimum=0, maximum=100000, read_only=False),
    ParamSpec("observation_period", 0.0, "Policies conditioning on several observations (n_obs_steps > 1, e.g. "
              "diffusion): seconds between the observations of their history (0: the checkpoint's "
              "observation_period; LeRobot checkpoints record none and get 0.1 s: set the dataset's frame period).",
              minimum=0.0, maximum=60.0, fixed_because="the history buffer is sized for it at start-up"),
    ParamSpec("history_tolerance", 0.0, "Largest distance (s) between a wanted history time and the observation "
              "used for it (0: half the observation period); farther is a gap in the inputs: no chunk.",
              minimum=0.0, maximum=60.0, fixed_because="the history buffer is sized for it at start-up"),
    ParamSpec("history_pad_start", True, "Until the inputs are old enough for the whole history, repeat the first "
              "observation (what LeRobot does after a reset); false: no chunk until then.",
              fixed_because="the history buffer is sized for it at start-up"),
    ParamSpec("max_observation_age", 0.5, "Inputs older than this, or stamped this far in the future (clocks out of "
              "sync), block inference (s).", minimum=0.0, maximum=3600.0, read_only=False),
    ParamSpec("output_topic", "/action_chunk", "hlrp_ros/ActionChunk output."),
    ParamSpec("image_size_mismatch", "resize", "Image size different from the model's: resize with padding "
              "(the processor's documented behaviour; warned once per camera and size) or reject.",
              choices=("resize", "reject"), read_only=False),
    ParamSpec("image_backend", "auto", "Image conversion: cv_bridge when importable (auto), or the numpy/OpenCV "
              "fallback.", choices=BACKENDS),
    ParamSpec("max_instruction_chars", 4096, "Instructions longer than this many characters are cut before "
              "tokenising (then truncated to the tokenizer limit), with a warning.", minimum=1, read_only=False),
    ParamSpec("seed", -1, "Seed of the denoising noise (-1: random).", minimum=-1, read_only=False),
    ParamSpec("torch_threads", 0, "torch.set_num_threads (0: torch's default).", minimum=0, maximum=256),
    ParamSpec("tune_host_memory", True, "CPU inference: back large tensors with transparent huge pages and keep "
              "freed memory in the process (no page faults at steady state; the process keeps its peak memory). "
              "Huge pages need torch not yet imported in this process (else set THP_MEM_ALLOC_ENABLE=1)."),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", minimum=0.05, maximum=60.0),
    ParamSpec("rtc_mode", "off", "Real-time chunking: off (each chunk from fresh noise), guided (each chunk "
              "inpainted onto the actions the previous one still has due; flow-matching families) or conditioned "
              "(those actions handed to a model trained to continue them: HLRP with rtc_max_delay > 0).",
              choices=RTC_MODES, fixed_because="it is checked against the loaded policy family at start-up"),
    ParamSpec("rtc_beta", 5.0, "Real-time chunking: clip of the guidance weight (the paper's beta).",
              minimum=0.01, maximum=1000.0, read_only=False),
    ParamSpec("rtc_execution_horizon", 0, "Real-time chunking: s, the last s actions of a chunk are not guided "
              "(action steps; 0: inference_period / action_period, rounded).", minimum=0, maximum=100000),
    ParamSpec("rtc_delay_window", 20, "Real-time chunking: gather-to-publish latencies in the delay estimate's "
              "sliding window.", minimum=1, maximum=10000),
    ParamSpec("rtc_delay_quantile", 0.95, "Real-time chunking: quantile of that window used as the inference "
              "delay.", minimum=0.0, maximum=1.0),
    ParamSpec("rtc_delay_warmup", 2, "Real-time chunking: first latencies left out of the estimate.",
              minimum=0, maximum=10000),
    ParamSpec("rtc_fixed_delay_steps", -1, "Real-time chunking: inference delay d in action steps instead of the "
              "online estimate (-1: estimate).", minimum=-1, maximum=100000),
    ParamSpec("rtc_max_state_divergence", 0.5, "Real-time chunking: the previous chunk is continued only while the "
              "measured joint positions are within this of its action due at the observation (max over joints, "
              "action units); farther (a reset, a teleport, a collision) the chunk is sampled fresh. 0: no check. "
              "Applies when the state is the action's joints.", minimum=0.0, maximum=1e6,
              fixed_because="it is part of the real-time chunking planner built at start-up"),
    ParamSpec("extra_inference_delay", 0.0, "EVALUATION ONLY: sleep this long (s) before publishing each chunk, to "
              "measure behaviour at inference delays the machine does not produce. Keep 0 on a robot.",
              minimum=0.0, maximum=10.0, read_only=False),
)


def stamp_or(msg, fallback_ns: int) -> int:
    """Header stamp in ns, or ``fallback_ns`` (receive time) when the stamp is unset (zero)."""
    ns = time_to_ns(msg.header.stamp)
    return ns if ns > 0 else fallback_ns


class InputRejected(Exception):
    """An input that blocks this tick; ``reason`` keys the throttled log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PolicyNode(Node):
    """Runs the policy on the latest inputs every ``inference_period`` (see module docstring)."""

    def __init__(self, node_name: str = "policy_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.params = declare_parameters(self, PARAMS)
        self._validate_static()
        if self.params["tune_host_memory"]:  # huge pages must be requested before torch is imported
            self.get_logger().debug(f"huge pages: {request_huge_pages().reason}")
        self.reject = ReasonThrottle(self.get_logger().warning)
        self.warn_once = ReasonThrottle(self.get_logger().warning, period=float("inf"))
        try:
            self.images = ImageConverter(self.params["image_backend"])
        except RuntimeError as exc:
            raise ParameterError("image_backend", str(exc)) from exc
        self.get_logger().info(f"loading the policy from {self.params['checkpoint']} on {self.params['device']} "
                               f"({self.params['dtype']})...")
        loading = time.monotonic()
        self._load_policy()
        what = type(self.policy).__name__
        if hasattr(self.policy, "parameters"):  # a torch module (every family today)
            what += f", {sum(t.numel() for t in self.policy.parameters()) / 1e6:.1f} M parameters"
        self.get_logger().info(f"policy loaded in {time.monotonic() - loading:.1f} s: {what}")
        if self.params["tune_host_memory"]:
            self.get_logger().debug(f"host memory: {keep_freed_memory().reason}")
        self.latest: dict[str, tuple[object, int]] = {}  # topic -> (message, receive time ns)
        self.run_id = uuid.uuid4().hex  # tells this run's chunks from a previous (killed, restarted) run's
        self.chunk_id = 0
        self.published = 0
        self.latencies: list[float] = []
        self._instruction: str | None = None
        self._instruction_used = ""
        self.gate = TickGate(self.params["inference_period"])
        self.qos_mismatches = QosMismatches(self)
        # per camera topic: frames received, lost in transport (middleware count), and at the last report
        self.camera_stats = {t: {"received": 0, "lost": 0, "reported": 0, "reported_ns": None}
                             for t in self.params["camera_topics"]}
        self.sim_clock = SimClockWatch(self, "no inference runs")
        self.seams = self._seam_planner()
        self._inference_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._create_interfaces()
        accept_live_updates(self, PARAMS, self.params, self._check_live, self._apply_live)
        self.get_logger().info(
            f"ready: cameras {dict(zip(self.params['camera_topics'], self.params['camera_names']))}, "
            f"joints {self.joint_names}, {self.n_action_steps} actions every {self.params['inference_period']:g} s, "
            f"image backend {self.images.backend}, run id {self.run_id}")

    # ----------------------------------------------------------------------------- configuration
    def _validate_static(self) -> None:
        p = self.params
        path = Path(p["checkpoint"]) if p["checkpoint"] else None
        if path is None or not (path / "config.json").is_file():
            raise ParameterError("checkpoint", f"no checkpoint (config.json) at {p['checkpoint']!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", p["device"]):
            raise ParameterError("device", f"expected cpu, cuda, cuda:N or mps, got {p['device']!r}")
        if p["tokenizer_dir"] and not Path(p["tokenizer_dir"]).is_dir():
            raise ParameterError("tokenizer_dir", f"not a directory: {p['tokenizer_dir']!r}")
        topics, names = p["camera_topics"], p["camera_names"]
        if not topics or len(topics) != len(names):
            raise ParameterError("camera_names", f"needs one model camera name per camera_topics entry "
                                                 f"({len(names)} names for {len(topics)} topics)")
        for key, values in (("camera_topics", topics), ("camera_names", names), ("joint_names", p["joint_names"]),
                            ("state_joint_names", p["state_joint_names"])):
            if len(set(values)) != len(values) or any(not v for v in values):
                raise ParameterError(key, f"entries must be unique and non-empty: {values}")
        for key in ("joint_states_topic", "instruction_topic", "output_topic"):
            if not p[key]:
                raise ParameterError(key, "must not be empty")

    def _load_policy(self) -> None:
        import inspect

        import torch

        from hlrp_ros.policies.factory import load_policy

        p = self.params
        if p["device"].startswith("cuda") and not torch.cuda.is_available():
            raise ParameterError("device", f"{p['device']!r} requested but CUDA is not available")
        if p["torch_threads"]:
            torch.set_num_threads(p["torch_threads"])
        kwargs = {}
        if p["tokenizer_dir"] and "tokenizer_dir" in inspect.signature(load_policy).parameters:
            kwargs["tokenizer_dir"] = p["tokenizer_dir"]
        try:
            self.policy = load_policy(p["checkpoint"], device=p["device"], dtype=p["dtype"], **kwargs)
        except Exception as exc:
            raise ParameterError("checkpoint", f"cannot load {p['checkpoint']!r}: {exc}") from exc
        cfg = self.policy.config
        missing = [c for c in cfg.camera_names if c not in p["camera_names"]]
        unknown = [c for c in p["camera_names"] if c not in cfg.camera_names]
        if missing or unknown:
            raise ParameterError("camera_names", f"model cameras {list(cfg.camera_names)}: missing {missing}, "
                                                 f"unknown {unknown}")
        names = p["joint_names"] or list(cfg.joint_names or [])
        if not names:
            raise ParameterError("joint_names", "required: the checkpoint names no joints")
        state_names = p["state_joint_names"] or names
        if len(names) != cfg.action_dim:
            raise ParameterError("joint_names", f"{len(names)} names, but the model has action_dim {cfg.action_dim}")
        if len(state_names) != cfg.state_dim:
            which = "state_joint_names" if p["state_joint_names"] else "joint_names"
            hint = "" if p["state_joint_names"] else \
                " (its state is not its action's joints: set state_joint_names to the joints that form it)"
            raise ParameterError(which, f"{len(state_names)} names, but the model has state_dim {cfg.state_dim}"
                                        f"{hint}")
        if cfg.joint_names and sorted(cfg.joint_names) != sorted(names):
            raise ParameterError("joint_names", f"{names} differ from the checkpoint's {list(cfg.joint_names)}")
        self.joint_names = list(names)
        self.state_names = list(state_names)
        self.n_action_steps = p["n_action_steps"] or cfg.n_action_steps
        if self.n_action_steps > cfg.chunk_size:
            raise ParameterError("n_action_steps", f"{self.n_action_steps} > the model's chunk_size {cfg.chunk_size}")
        self.num_steps = p["num_steps"] or None
        self.generator = None
        if p["seed"] >= 0:
            self.generator = torch.Generator().manual_seed(p["seed"])
        self._create_history(cfg)
        self._prepare_execution(cfg)

    def _prepare_execution(self, cfg) -> None:
        """Compiled / CUDA-graph execution, warmed up on a blank observation so the first real chunk is not late."""
        p = self.params
        if not (p["compile"] or p["cuda_graphs"]):
            return
        name = "cuda_graphs" if p["cuda_graphs"] else "compile"
        if p["cuda_graphs"] and not p["device"].startswith("cuda"):
            raise ParameterError("cuda_graphs", f"needs device cuda (device is {p['device']!r})")
        try:
            self.policy.set_execution(compile=p["compile"], cuda_graphs=p["cuda_graphs"])
        except (NotImplementedError, ValueError) as exc:
            raise ParameterError(name, str(exc)) from exc
        blank = Observation(images={c: np.zeros((*cfg.image_size, 3), dtype=np.uint8) for c in cfg.camera_names},
                            state=np.zeros(cfg.state_dim, dtype=np.float32), instruction="warm up")
        # a policy conditioning on several observations gets its history (the same blank, one period earlier)
        blank.history = [dataclasses.replace(blank)] * (history_length(cfg) - 1) or None
        start = time.monotonic()
        self.policy.predict_action_chunk(blank, num_steps=self.num_steps)
        what = " and ".join(w for w, on in (("compiled", p["compile"]), ("recorded as CUDA graphs", p["cuda_graphs"]))
                            if on)
        self.get_logger().info(f"chunk {what} in {time.monotonic() - start:.1f} s (warm-up on a blank observation)")

    def _create_history(self, cfg) -> None:
        """A policy conditioning on ``n_obs_steps > 1`` observations gets a buffer of stamped observations."""
        from hlrp_ros.policies.history import ObservationBuffer

        p = self.params
        self.history = None
        self._history_lock = threading.Lock()  # pushed on the executor thread, read on the inference thread
        n = history_length(cfg)
        if n <= 1:
            return
        period = p["observation_period"] or float(getattr(cfg, "observation_period", 0.0) or 0.0)
        if period <= 0:
            raise ParameterError("observation_period", f"the policy conditions on {n} observations but neither "
                                                       f"the checkpoint nor the parameter gives their period")
        self.history = ObservationBuffer(n, period, tolerance=p["history_tolerance"] or None,
                                         pad_start=p["history_pad_start"])
        self.get_logger().info(f"the policy conditions on {n} observations {period:g} s apart "
                               f"(tolerance {self.history.tolerance:g} s)")

    def _seam_planner(self) -> SeamPlanner:
        p = self.params
        if p["rtc_mode"] != "off" and not getattr(self.policy, "supports_guidance", False):
            raise ParameterError("rtc_mode", f"{p['rtc_mode']!r} needs a flow-matching policy; "
                                             f"{type(self.policy).__name__} samples unguided only (use off)")
        if p["rtc_mode"] == "conditioned" and not getattr(self.policy, "supports_conditioning", False):
            raise ParameterError("rtc_mode", "'conditioned' needs a model trained to continue a chunk prefix "
                                             "(HLRP trained with rtc_max_delay > 0); this one was not (use guided)")
        config = RtcConfig(mode=p["rtc_mode"], beta=p["rtc_beta"], execution_horizon=p["rtc_execution_horizon"],
                           delay_window=p["rtc_delay_window"], delay_quantile=p["rtc_delay_quantile"],
                           delay_warmup=p["rtc_delay_warmup"], fixed_delay_steps=p["rtc_fixed_delay_steps"],
                           max_state_divergence=p["rtc_max_state_divergence"])
        if p["rtc_mode"] != "off" and not self._state_is_action_joints() and p["rtc_max_state_divergence"] > 0:
            self.get_logger().info("rtc_max_state_divergence is not checked: the state "
                                   f"{self.state_names} is not the action's joints {self.joint_names}")
        default_s = round(p["inference_period"] / p["action_period"])
        return SeamPlanner(config, self.policy.config.chunk_size, default_s)

    def _create_interfaces(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import Int32MultiArray, String

        from hlrp_ros.msg import ActionChunk

        p = self.params
        inputs = MutuallyExclusiveCallbackGroup()
        sensor = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability)
        for topic in p["camera_topics"]:
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self._subscribe_sensor(kind, topic, sensor, inputs)
        self._subscribe_sensor(JointState, p["joint_states_topic"], sensor, inputs)
        self._subscribe_command(String, p["instruction_topic"], inputs)
        if p["abstract_tokens_topic"]:
            self._subscribe_command(Int32MultiArray, p["abstract_tokens_topic"], inputs)
        self.chunk_pub = self.create_publisher(ActionChunk, p["output_topic"],
                                               QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.timer = self.create_timer(p["inference_period"], self.on_tick,
                                       callback_group=MutuallyExclusiveCallbackGroup())
        steady_timer(self, p["diagnostics_period"], self.publish_diagnostics, callback_group=inputs)
        if self.history is not None:  # twice per period: the nearest sample stays well inside the tolerance
            self.create_timer(self.history.period / 2, self.sample_history, callback_group=inputs)

    def _subscribe_sensor(self, kind, topic: str, qos: QoSProfile, group) -> None:
        lost = self._lost_reporter(topic) if topic in self.camera_stats else None
        self.create_subscription(kind, topic, self._keeper(topic), qos, callback_group=group,
                                 event_callbacks=self.qos_mismatches.callbacks(
                                     topic, "best effort, volatile", "Any publisher should match: check the "
                                     "deadline and liveliness settings of the publisher.", message_lost=lost))

    def _lost_reporter(self, topic: str):
        """Frames the middleware saw but could not deliver whole (too large for its transport, mostly)."""
        def on_lost(event) -> None:
            stats = self.camera_stats[topic]
            stats["lost"] = int(event.total_count)
            self.reject(f"camera_lost_{topic}", f"camera {topic}: {stats['lost']} frames lost in transport so far "
                                                f"({stats['received']} received): frames larger than the DDS "
                                                f"transport carries whole? Use the shipped Fast DDS profile "
                                                f"(config/fastdds_shm.xml, FASTDDS_DEFAULT_PROFILES_FILE) on both "
                                                f"ends")
        return on_lost

    def _subscribe_command(self, kind, topic: str, group) -> None:
        """Two subscriptions: latched publishers' stored message reaches only a transient-local reader,
        and a volatile publisher (``ros2 topic pub``) only matches a volatile one."""
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        volatile = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        advice = (f"Publish it reliable, latched or not: ros2 topic pub {topic} {kind.__module__.split('.')[0]}/msg/"
                  f"{kind.__name__} ... (its default QoS) or --qos-reliability reliable.")
        self.create_subscription(kind, topic, self._keeper(topic), latched, callback_group=group,
                                 event_callbacks=self.qos_mismatches.callbacks(topic, "reliable", advice,
                                                                               report=False))
        self.create_subscription(kind, topic, self._keeper(topic), volatile, callback_group=group,
                                 event_callbacks=self.qos_mismatches.callbacks(topic, "reliable", advice))

    def _keeper(self, topic: str):
        """Subscription callback keeping the latest message of ``topic`` (never replaced by an older-stamped one)."""
        def keep(msg) -> None:
            received = self.get_clock().now().nanoseconds
            kept = self.latest.get(topic)
            if kept is not None and hasattr(msg, "header"):
                stamp, kept_stamp = time_to_ns(msg.header.stamp), time_to_ns(kept[0].header.stamp)
                if arrives_out_of_order(stamp, kept_stamp, (received - kept[1]) * 1e-9,
                                        self.params["max_observation_age"]):
                    age = (kept_stamp - stamp) * 1e-9
                    self.reject(f"out_of_order_{topic}", f"dropped a message on {topic} stamped {age:.3f} s before "
                                                         f"the one already kept (out of order: two publishers, or a "
                                                         f"replayed bag?)")
                    return
            self.latest[topic] = (msg, received)
            stats = self.camera_stats.get(topic)
            if stats is not None:
                stats["received"] += 1
        return keep

    def _check_live(self, name: str, value) -> str | None:
        """What the loaded model cannot take (ranges are checked by the specs)."""
        chunk_size = self.policy.config.chunk_size
        if name == "n_action_steps" and (value or self.policy.config.n_action_steps) > chunk_size:
            return f"{value} > the model's chunk_size {chunk_size}"
        return None

    def _apply_live(self, name: str, value) -> None:
        """Changes that need more than the new value in ``self.params`` (read at every inference)."""
        import torch

        if name == "num_steps":
            self.num_steps = value or None
        elif name == "n_action_steps":
            self.n_action_steps = value or self.policy.config.n_action_steps
        elif name == "seed":
            self.generator = torch.Generator().manual_seed(value) if value >= 0 else None
        elif name == "inference_period":
            self.timer.timer_period_ns = int(round(value * 1e9))
            self.gate.period = value

    # ----------------------------------------------------------------------------- inputs
    def _fresh(self, latest: dict, topic: str, what: str, now_ns: int):
        entry = latest.get(topic)
        if entry is None:
            raise InputRejected(f"missing_{topic}", f"no {what} received yet on {topic}")
        msg, received = entry
        stamp = stamp_or(msg, received)
        age = (now_ns - stamp) * 1e-9
        limit = self.params["max_observation_age"]
        if age > limit:
            raise InputRejected(f"stale_{topic}", f"{what} on {topic} is {age:.3f} s old "
                                                  f"(max_observation_age {limit:g} s)")
        if -age > limit:  # the sender's clock runs ahead of ours: its ages mean nothing
            raise InputRejected(f"future_{topic}", f"{what} on {topic} is stamped {-age:.3f} s in the future "
                                                   f"(more than max_observation_age {limit:g} s): are the "
                                                   f"clocks synchronised (or use_sim_time set alike)?")
        return msg, stamp

    def _image(self, latest: dict, topic: str, camera: str, now_ns: int) -> tuple[np.ndarray, int]:
        msg, stamp = self._fresh(latest, topic, f"camera '{camera}' image", now_ns)
        try:
            rgb = self.images.to_rgb(msg)
        except ImageError as exc:  # keyed by cause and detail: a 16UC1 stream is not counted with mono16 ones
            raise InputRejected(f"image_{exc.key}_{topic}", f"camera '{camera}' ({topic}): {exc}") from exc
        if any(stride < 0 for stride in rgb.strides):  # BGR views: torch takes no negative strides
            rgb = np.ascontiguousarray(rgb)
        expected = tuple(self.policy.config.image_size)
        if rgb.shape[:2] != expected:
            size = f"{rgb.shape[1]}x{rgb.shape[0]}"
            model = f"{expected[1]}x{expected[0]}"
            if self.params["image_size_mismatch"] == "reject":
                raise InputRejected(f"image_size_{topic}", f"camera '{camera}' ({topic}): image size {size} differs "
                                                           f"from the model's {model} (image_size_mismatch: reject)")
            try:
                fitted_size(rgb.shape[0], rgb.shape[1], *expected)
            except ValueError as exc:
                raise InputRejected(f"image_aspect_{topic}", f"camera '{camera}' ({topic}): {exc}") from exc
            self.warn_once(f"resize_{topic}_{size}", f"camera '{camera}' ({topic}): image size {size} differs from "
                                                     f"the model's {model}; resizing with padding")
        return rgb, stamp

    def _state(self, latest: dict, now_ns: int) -> tuple[np.ndarray, int]:
        topic = self.params["joint_states_topic"]
        msg, stamp = self._fresh(latest, topic, "joint state", now_ns)
        names = list(msg.name)
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise InputRejected("joint_duplicate", f"joint state on {topic} has duplicate joint names {dupes}")
        if len(msg.position) != len(names):
            raise InputRejected("joint_layout", f"joint state on {topic} has {len(names)} names but "
                                                f"{len(msg.position)} positions")
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.state_names if n not in index]
        if missing:
            raise InputRejected("joint_missing", f"joint state on {topic} lacks configured joint(s) {missing}")
        state = np.array([msg.position[index[n]] for n in self.state_names], dtype=np.float32)
        bad = [n for n, v in zip(self.state_names, state) if not np.isfinite(v)]
        if bad:
            raise InputRejected("joint_nonfinite", f"joint state on {topic} has non-finite positions for {bad}")
        return state, stamp

    def _instruction_text(self, latest: dict) -> str:
        topic = self.params["instruction_topic"]
        entry = latest.get(topic)
        if entry is None:
            raise InputRejected("instruction_missing", f"no instruction received yet on {topic}")
        text = entry[0].data
        if not text.strip():
            raise InputRejected("instruction_empty", f"instruction on {topic} is empty")
        limit = self.params["max_instruction_chars"]
        if len(text) > limit:
            self.warn_once(f"chars_{hash(text)}", f"instruction has {len(text)} characters; cut to "
                                                  f"max_instruction_chars={limit} before tokenising")
            text = text[:limit]
        if text != self._instruction:  # re-tokenise only when the instruction changed
            tok = self.policy.processor.tokenize(text)
            self._instruction_used = text
            if tok.truncated:
                self._instruction_used = self._decode_truncated(tok, text)
                self.warn_once(f"truncated_{hash(text)}", f"instruction truncated to the tokenizer limit of "
                               f"{self.policy.config.tokenizer_max_length} tokens: {self._instruction_used!r}")
            self._instruction = text
        return text

    def _decode_truncated(self, tok, text: str) -> str:
        """The part of ``text`` the truncated tokens cover (token offsets), or ``text`` when unknown."""
        tokenizer = getattr(self.policy.processor, "tokenizer", None)
        limit = self.policy.config.tokenizer_max_length
        try:
            offsets = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
            end = max(e for _, e in offsets[:limit])
            return text[:end] if end > 0 else text
        except Exception:  # a tokenizer without offsets: report the text as sent
            return text

    def _abstract_tokens(self, latest: dict) -> list[int] | None:
        topic = self.params["abstract_tokens_topic"]
        entry = latest.get(topic) if topic else None
        return None if entry is None else [int(v) for v in entry[0].data]

    # ----------------------------------------------------------------------------- inference
    def on_tick(self) -> None:
        """Timer callback: start one inference on the inference thread unless the gate says skip."""
        if self.gate.begin(time.monotonic()):
            self._inference_thread.submit(self._infer_and_release)

    def _infer_and_release(self) -> None:
        try:
            self.infer_once()
        except Exception as exc:  # infer_once logs what it expects; anything else must not go unnoticed
            self.get_logger().error(f"inference thread: {type(exc).__name__}: {exc}")
        finally:
            self.gate.end(time.monotonic())

    def destroy_node(self) -> None:
        self._inference_thread.shutdown(wait=True, cancel_futures=True)  # finish the running chunk
        super().destroy_node()

    def gather(self, latest: dict, now_ns: int):
        """Checked inputs from the snapshot ``latest`` (topic -> (message, receive ns)), judged at ``now_ns``:
        ``(Observation, oldest input stamp ns)``; InputRejected when one is unusable."""
        instruction = self._instruction_text(latest)
        images, state, stamp_ns = self.gather_sensors(latest, now_ns)
        obs = Observation(images=images, state=state, instruction=instruction,
                          abstract_tokens=self._abstract_tokens(latest))
        return obs, stamp_ns

    def gather_sensors(self, latest: dict, now_ns: int) -> tuple[dict, np.ndarray, int]:
        """Checked camera images and joint state: ``(images, state, oldest input stamp ns)``."""
        p = self.params
        images, stamps = {}, []
        for topic, camera in zip(p["camera_topics"], p["camera_names"]):
            images[camera], stamp = self._image(latest, topic, camera, now_ns)
            stamps.append(stamp)
        state, stamp = self._state(latest, now_ns)
        stamps.append(stamp)
        return images, state, min(stamps)

    def sample_history(self) -> None:
        """Timer callback: adds the current images and state to the observation history.

        An unusable input adds nothing; the tick that needs the missing time then reports the gap (and
        ``infer_once`` the input's own reason).
        """
        latest = dict(self.latest)
        try:
            images, state, stamp_ns = self.gather_sensors(latest, self.get_clock().now().nanoseconds)
        except InputRejected:
            return
        with self._history_lock:
            self.history.push(Observation(images=images, state=state, instruction=""), stamp_ns * 1e-9)

    def with_history(self, obs, stamp_ns: int):
        """``(observation, stamp ns)``: ``obs`` (stamped ``stamp_ns``) with the history the policy needs.

        The instruction and abstract tokens are ``obs``'s, so an instruction change acts at the next chunk.
        When the history timer has meanwhile added newer sensor data, that newest observation is used (with
        its stamp): pushing the older one would read as the clock jumping back and empty the buffer.
        Raises ObservationHistoryError when the history is not there.
        """
        if self.history is None:
            return obs, stamp_ns
        with self._history_lock:
            newest = self.history.newest_stamp
            if newest is None or stamp_ns * 1e-9 >= newest:
                self.history.push(obs, stamp_ns * 1e-9)
            else:
                stamp_ns = int(round(newest * 1e9))
            current = self.history.current()
        return dataclasses.replace(current, instruction=obs.instruction,
                                   abstract_tokens=obs.abstract_tokens), stamp_ns

    def infer_once(self) -> bool:
        """Gather, check, infer and publish one chunk; False (with a throttled log) when nothing was published."""
        # Snapshot first, clock second: the subscriptions keep writing self.latest on the executor
        # thread, and an input received after now_ns would make the chunk due before its observation.
        latest = dict(self.latest)
        now_ns = self.get_clock().now().nanoseconds
        wall = time.monotonic()
        try:
            obs, stamp_ns = self.gather(latest, now_ns)
            obs, stamp_ns = self.with_history(obs, stamp_ns)
        except (InputRejected, ObservationHistoryError) as exc:
            self.reject(exc.reason, f"no chunk: {exc}")
            return False
        try:
            prefix = self.policy.encode_prefix(obs)
            chunk = self._sample_chunk(prefix, now_ns, obs, stamp_ns)
        except Exception as exc:  # a model error must not kill the node
            self.reject("model_error", f"no chunk: inference failed: {type(exc).__name__}: {exc}")
            return False
        actions = chunk.detach().float().cpu().numpy()[: self.n_action_steps]
        if not np.all(np.isfinite(actions)):
            self.reject("model_nonfinite", "no chunk: the model produced non-finite actions")
            return False
        latency = time.monotonic() - wall
        self.chunk_id += 1
        msg = encode_chunk(actions, self.joint_names, chunk_id=self.chunk_id, stamp_ns=stamp_ns,
                           first_action_ns=self._first_action_ns(now_ns),
                           dt=self.params["action_period"], instruction=self._instruction_used,
                           inference_latency=latency, run_id=self.run_id)
        self._extra_delay()
        self.chunk_pub.publish(msg)
        self.published += 1
        self.latencies = (self.latencies + [latency])[-100:]
        self.last_publish_ns = self.get_clock().now().nanoseconds
        self._remember_published(actions, now_ns, obs.instruction)
        return True

    # ----------------------------------------------------------------------------- real-time chunking
    def _first_action_ns(self, now_ns: int) -> int:
        return now_ns + int(self.params["first_action_delay"] * 1e9)

    def _state_is_action_joints(self) -> bool:
        """Whether the measured state can be held against the actions (the same joints, in the same order)."""
        return self.state_names == self.joint_names

    def _sample_chunk(self, prefix, now_ns: int, obs: Observation, stamp_ns: int):
        """``sample_chunk``, continuing the previous chunk's due actions when ``rtc_mode`` is not off."""
        p = self.params
        state = obs.state if self._state_is_action_joints() else None
        plan = self.seams.plan(p["rtc_mode"], self._first_action_ns(now_ns), p["action_period"],
                               p["first_action_delay"], obs.instruction, state, stamp_ns)
        if plan.due is None:
            return self.policy.sample_chunk(prefix, num_steps=self.num_steps, generator=self.generator)
        import torch

        from hlrp_ros.policies.common.realtime_chunking import ChunkGuide

        delay = plan.delay
        if p["rtc_mode"] == "conditioned":
            # The controller interpolates between rows: arriving between index d - 1 and d it already moves
            # towards row d, so that row is given too (guidance reaches it through the soft mask instead).
            delay = min(delay + 1, self.policy.config.chunk_size)
        guide = ChunkGuide(torch.from_numpy(plan.due.astype(np.float32)), delay=delay,
                           execution_horizon=plan.execution_horizon, beta=p["rtc_beta"], method=p["rtc_mode"])
        return self.policy.sample_chunk(prefix, num_steps=self.num_steps, generator=self.generator, guide=guide)

    def _extra_delay(self) -> None:
        """EVALUATION ONLY (``extra_inference_delay``): a longer inference, as a slower machine would have."""
        if self.params["extra_inference_delay"] > 0:
            time.sleep(self.params["extra_inference_delay"])

    def _remember_published(self, actions: np.ndarray, now_ns: int, instruction: str) -> None:
        chunk = PublishedChunk(actions.astype(np.float64), self._first_action_ns(now_ns), self.params["action_period"],
                               instruction)
        self.seams.published(chunk, (self.last_publish_ns - now_ns) * 1e-9)

    def _rtc_values(self) -> dict:
        estimate = self.seams.delays.estimate()
        values = {"rtc.mode": self.params["rtc_mode"], "rtc.beta": self.params["rtc_beta"],
                  "rtc.execution_horizon": self.seams.execution_horizon, "rtc.delay_steps_last": self.seams.last_delay,
                  "rtc.state_divergence_last": self.seams.last_divergence,
                  "rtc.delay_estimate_s": -1.0 if estimate is None else estimate,
                  "rtc.extra_inference_delay": self.params["extra_inference_delay"]}
        values.update({f"rtc.chunks.{reason}": n for reason, n in self.seams.counts.items()})
        return values

    def _camera_values(self, now_ns: int) -> dict:
        """Each camera's received rate since the last report, the age of its newest frame, frames lost."""
        values = {}
        for topic, camera in zip(self.params["camera_topics"], self.params["camera_names"]):
            stats = self.camera_stats[topic]
            since = stats["reported_ns"]
            rate = -1.0 if since is None or now_ns <= since else \
                (stats["received"] - stats["reported"]) / ((now_ns - since) * 1e-9)
            stats["reported"], stats["reported_ns"] = stats["received"], now_ns
            entry = self.latest.get(topic)
            values[f"camera.{camera}.rate_hz"] = rate
            values[f"camera.{camera}.age_s"] = -1.0 if entry is None else (now_ns - entry[1]) * 1e-9
            values[f"camera.{camera}.lost"] = stats["lost"]
        return values

    def publish_diagnostics(self) -> None:
        now = self.get_clock().now()
        lat = np.array(self.latencies) if self.latencies else np.zeros(1)
        last = getattr(self, "last_publish_ns", None)
        values = {
            "chunks_published": self.published, "skipped_ticks": self.gate.skipped,
            "inference_latency_last": float(lat[-1]), "inference_latency_mean": float(lat.mean()),
            "inference_latency_max": float(lat.max()),
            "seconds_since_last_chunk": -1.0 if last is None else (now.nanoseconds - last) * 1e-9,
            "rejected_inputs": self.reject.total, "image_backend": self.images.backend, "run_id": self.run_id,
        }
        if self.history is not None:
            values["history.observations"] = self.history.n_obs_steps
            values["history.period_s"] = self.history.period
            values["history.buffered"] = len(self.history)
        for reason, count in sorted(self.reject.counts.items()):
            values[f"rejected.{reason}"] = count
        values.update(self.qos_mismatches.diagnostics())
        values.update(self._camera_values(now.nanoseconds))
        values.update(self._rtc_values())
        stale = last is None or (now.nanoseconds - last) * 1e-9 > 3 * self.params["inference_period"]
        level, message = (WARN, "no recent chunk") if stale else (OK, "publishing chunks")
        if self.sim_clock.waiting():
            level, message = WARN, "waiting for /clock (use_sim_time): no inference runs"
        if self.qos_mismatches.seen:
            level = WARN
            message += "; incompatible publisher on " + ", ".join(sorted(self.qos_mismatches.seen))
        status = make_status(f"{self.get_name()}: inference", self.get_name(), level, message, values)
        self.diag_pub.publish(make_array(now.to_msg(), [status]))


def main(args=None) -> int:
    """Run the policy node; exit code 1 (with the parameter named) when the configuration is invalid."""
    return run_node(PolicyNode, "policy_node", args)


if __name__ == "__main__":
    sys.exit(main())
