"""controller_node: executes ActionChunks at a fixed control rate, each action at its due time.

A ``LifecycleNode``: ``on_configure`` validates the parameters and builds the (ROS-free)
executor, safety filter and watchdog from ``hlrp_ros.control``; ``on_activate`` starts the
control timer. With ``autostart`` (default) it configures and activates itself. The action
for a tick is computed from the node clock's time against the chunk's due times, never by
counting ticks, so late ticks still command what is due. Never imports torch.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from hlrp_ros.chunk_codec import ChunkError, decode_chunk, ns_to_time, time_to_ns
from hlrp_ros.control.admission import ChunkAdmission, run_label
from hlrp_ros.control.chunk import INTERPOLATION_MODES, TimedChunk
from hlrp_ros.control.executor import ChunkExecutor
from hlrp_ros.control.limits import JointLimits, SafetyFilter, limit_path
from hlrp_ros.control.loop import ControlLoop
from hlrp_ros.control.ordering import arrives_out_of_order
from hlrp_ros.control.watchdog import OutputState, StateTracker, Watchdog
from hlrp_ros.diagnostics import ERROR, OK, WARN, ReasonThrottle, make_array, make_status
from hlrp_ros.nodes import (
    ParameterError,
    ParamSpec,
    QosMismatches,
    SimClockWatch,
    accept_live_updates,
    declare_parameters,
    init_ros,
    shutdown_ros,
    spin_until_shutdown,
    steady_timer,
)

OUTPUT_MODES = ("joint_state", "float64_array", "joint_trajectory")

LIMITS_FIXED = "safety limits stay as configured while the node is active (reconfigure it through its lifecycle)"

PARAMS = (
    ParamSpec("joint_names", [], "Joints commanded, in output order; chunks are re-ordered by name to it.",
              fixed_because="they fix the output order and the limits' joints"),
    ParamSpec("control_rate", 50.0, "Command rate (Hz).", minimum=1.0, maximum=1000.0),
    ParamSpec("input_topic", "/action_chunk", "hlrp_ros/ActionChunk input."),
    ParamSpec("chunk_publishers", [], "Fully qualified node names (e.g. /policy_node) whose ActionChunks are "
              "executed; chunks from any other node are rejected (empty: any publisher). A guard against a stray or "
              "second policy, not security: a node name can be claimed by anyone on the DDS domain (use SROS2)."),
    ParamSpec("output_mode", "joint_state", "joint_state: sensor_msgs/JointState positions (Isaac Sim "
              "/joint_command); float64_array: std_msgs/Float64MultiArray (forward_command_controller "
              "/<controller>/commands); joint_trajectory: trajectory_msgs/JointTrajectory of the remaining "
              "chunk (joint_trajectory_controller).", choices=OUTPUT_MODES),
    ParamSpec("output_topic", "/joint_command", "Command output topic."),
    ParamSpec("joint_states_topic", "/joint_states", "Measured joint states: every start of commanding (the first "
              "chunk, or the first after a stop) ramps from the measured positions within the limits "
              "(empty: none, allowed only with require_joint_state false)."),
    ParamSpec("require_joint_state", True, "Command nothing until a measured joint state (younger than "
              "max_joint_state_age) arrived on joint_states_topic. false: without one, commanding starts from the "
              "last command or, before any, jumps straight to the first due action (no speed limit on that step)."),
    ParamSpec("max_joint_state_age", 1.0, "A measured joint state received longer ago than this is not used as "
              "the start of a ramp (s).", minimum=0.001, maximum=3600.0, read_only=False),
    ParamSpec("interpolation", "hold", "Between due times: hold the due action or interpolate linearly to the next.",
              choices=INTERPOLATION_MODES),
    ParamSpec("blend_time", 0.0, "Seconds over which a new chunk is blended in from the old one (0: switch).",
              minimum=0.0, maximum=10.0),
    ParamSpec("watchdog_timeout", 1.0, "Seconds without a chunk starting to execute before the watchdog trips "
              "(s); chunks accepted but not yet due do not count.", minimum=0.001, maximum=3600.0, read_only=False),
    ParamSpec("on_timeout", "hold", "When the chunk ran out or the watchdog tripped: hold the last safe command "
              "(keep publishing it) or stop publishing.", choices=("hold", "stop")),
    ParamSpec("max_chunk_age", 2.0, "A chunk whose observation is older than this on arrival (or stamped this "
              "far in the future) is rejected (s); "
              "must exceed the policy's inference latency plus its max_observation_age.",
              minimum=0.0, maximum=3600.0, read_only=False),
    ParamSpec("max_start_delay", 1.0, "A chunk whose first action is due more than this after it arrives is "
              "rejected (s): a policy clock running ahead, or a chunk meant for later, must not sit in the queue.",
              minimum=0.0, maximum=3600.0, read_only=False),
    ParamSpec("position_limits_lower", [], "Lowest position per joint (empty: unlimited).", item_type=float,
              fixed_because=LIMITS_FIXED),
    ParamSpec("position_limits_upper", [], "Highest position per joint (empty: unlimited).", item_type=float,
              fixed_because=LIMITS_FIXED),
    ParamSpec("velocity_limits", [], "Largest speed per joint, unit/s (empty: unlimited).", item_type=float,
              fixed_because=LIMITS_FIXED),
    ParamSpec("resync_threshold", [0.0], "When the measured state jumps by more than this between two joint states "
              "(the robot was moved, or a simulator reset it with its clock running), the next command starts "
              "from the measured position on that joint instead of ramping back from the old command; one value "
              "for every joint or one per joint (position unit, above the distance a joint moves between two "
              "measurements; 0 never, e.g. for a joint whose state is not its command's quantity)."),
    ParamSpec("seam_threshold", 0.2, "Largest per-joint jump accepted at a chunk seam; larger ones are ramped "
              "(position unit; 0 disables the guard).", minimum=0.0),
    ParamSpec("seam_ramp_scale", 0.5, "Seam ramp speed as a fraction of velocity_limits.", minimum=0.01, maximum=1.0),
    ParamSpec("seam_ramp_velocity", 0.5, "Seam ramp speed for joints without a velocity limit (unit/s).",
              minimum=1e-6),
    ParamSpec("control_thread", True, "Tick from a dedicated thread at absolute deadlines of the steady clock "
              "(commands stay on time while the policy infers on the same cores) instead of an executor timer. "
              "With use_sim_time the ticks always follow /clock through a timer."),
    ParamSpec("realtime_priority", 50, "SCHED_FIFO priority of the control thread when the system permits it "
              "(root, CAP_SYS_NICE or an rtprio limit; else normal priority, logged); 0: normal priority.",
              minimum=0, maximum=99),
    ParamSpec("active_wait", 0.002, "Last part of each wait of the control thread spent polling the clock instead "
              "of sleeping (s): it covers the machine's wake-up latency (about 2 ms on a virtual machine; 0.1-0.3 ms "
              "on bare metal) at the cost of that share of one core.", minimum=0.0, maximum=0.05),
    ParamSpec("autostart", True, "Configure and activate at start-up (no lifecycle manager needed)."),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", minimum=0.05, maximum=60.0),
)


def _sec(clock) -> float:
    return clock.now().nanoseconds * 1e-9


class ControllerNode(LifecycleNode):
    """Chunk execution, limits and watchdog on ROS topics (see module docstring)."""

    def __init__(self, node_name: str = "controller_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.params: dict = {}
        self.config_error: ParameterError | None = None
        try:
            self.params = declare_parameters(self, PARAMS)
        except ParameterError as exc:
            self.config_error = exc
        self._timer = self._diag_timer = self._chunk_sub = self._js_sub = None
        self._loop: ControlLoop | None = None
        self._live_updates = False
        self._publisher_names: dict[bytes, str] = {}
        # Ticks may run on the control thread; chunks, joint states and diagnostics on the executor's.
        self._lock = threading.Lock()
        self._cmd_pub = self._diag_pub = None
        self.qos_mismatches = QosMismatches(self)
        self.sim_clock = SimClockWatch(self, "nothing is commanded")
        self.reject = ReasonThrottle(self.get_logger().warning)  # chunks
        self.dropped_inputs = ReasonThrottle(self.get_logger().warning)  # joint states
        self.published = 0
        self.accepted = 0
        self.last_tick: float | None = None
        # (positions, receive time s, header stamp ns) of the newest measured joint state
        self.measured: tuple[np.ndarray, float, int] | None = None
        self._hold_sent = False
        self._waiting_logged = False

    # ----------------------------------------------------------------------------- lifecycle
    def _validate(self) -> None:
        if self.config_error is not None:
            raise self.config_error
        p = self.params
        names = p["joint_names"]
        if not names or any(not n for n in names):
            raise ParameterError("joint_names", "must list at least one (non-empty) joint name")
        if len(set(names)) != len(names):
            raise ParameterError("joint_names", f"duplicate names in {names}")
        for key in ("input_topic", "output_topic"):
            if not p[key]:
                raise ParameterError(key, "must not be empty")
        if p["require_joint_state"] and not p["joint_states_topic"]:
            raise ParameterError("joint_states_topic", "is empty but require_joint_state is true: name the measured "
                                                       "joint state topic, or set require_joint_state false to "
                                                       "command without one (the first command then jumps)")
        try:
            self.limits = JointLimits.build(len(names), p["position_limits_lower"], p["position_limits_upper"],
                                            p["velocity_limits"])
        except ValueError as exc:
            name = str(exc).split(" ")[0]
            raise ParameterError(name if name in self.params else "position_limits_lower", str(exc)) from exc
        resync = [float(v) for v in p["resync_threshold"]]
        if len(resync) not in (1, len(names)) or any(not np.isfinite(v) or v < 0 for v in resync):
            raise ParameterError("resync_threshold", f"one value >= 0, or one per joint ({len(names)}); got {resync}")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._validate()
        except ParameterError as exc:
            self.config_error = exc
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        p = self.params
        self.joint_names = list(p["joint_names"])
        self.period = 1.0 / p["control_rate"]
        self.executor_ = ChunkExecutor(p["blend_time"], p["interpolation"])
        self.safety = SafetyFilter(self.limits, p["seam_threshold"], p["seam_ramp_scale"], p["seam_ramp_velocity"],
                                   max_step_time=2.0 * self.period)
        self.watchdog = Watchdog(p["watchdog_timeout"])
        self.watchdog_tripped = False
        self.resync_thresholds = np.broadcast_to(np.asarray(p["resync_threshold"], dtype=np.float64),
                                                 (len(self.joint_names),)).copy()
        self.resyncs = 0
        self._moved = np.zeros(len(self.joint_names), dtype=bool)  # joints whose measured state jumped
        if not self._live_updates:
            self._live_updates = True
            accept_live_updates(self, PARAMS, self.params, apply=self._apply_live)
        self.admission = ChunkAdmission()
        self.tracker = StateTracker()
        self._cmd_pub = self.create_lifecycle_publisher(self._output_type(), p["output_topic"], 10)
        self._diag_pub = self.create_publisher(self._diag_type(), "/diagnostics", 10)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self._chunk_sub = self.create_subscription(
            self._chunk_type(), p["input_topic"], self._on_chunk_message, qos,
            event_callbacks=self.qos_mismatches.callbacks(p["input_topic"], "reliable, volatile",
                                                          "Publish ActionChunks reliable (policy_node does)."))
        if p["joint_states_topic"]:
            from sensor_msgs.msg import JointState

            self._js_sub = self.create_subscription(
                JointState, p["joint_states_topic"], self.on_joint_state, qos_profile_sensor_data,
                event_callbacks=self.qos_mismatches.callbacks(p["joint_states_topic"], "best effort, volatile",
                                                              "Any publisher should match: check its deadline "
                                                              "and liveliness settings."))
        self.get_logger().info(f"configured: {len(self.joint_names)} joints, {p['control_rate']:g} Hz, "
                               f"output {p['output_mode']} on {p['output_topic']}")
        if not p["require_joint_state"]:
            self.get_logger().warning("require_joint_state is false: commanding may start without a measured joint "
                                      "state; before any command the first one jumps to the first due action")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.params["control_thread"] and not self.get_parameter("use_sim_time").value:
            sys.setswitchinterval(2e-4)  # the tick thread waits for the GIL at most this long
            self._loop = ControlLoop(self.period, self._locked_tick, self.params["realtime_priority"],
                                     active_wait=self.params["active_wait"], on_error=self._tick_failed)
            self._loop.start()
            self.get_logger().info(f"control thread at absolute deadlines, {self._loop.scheduling}")
        else:
            self._timer = self.create_timer(self.period, self._locked_tick)
        self._diag_timer = steady_timer(self, self.params["diagnostics_period"], self.publish_diagnostics)
        self.get_logger().info("active: waiting for action chunks on " + self.params["input_topic"])
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        for timer in (self._timer, self._diag_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._timer = self._diag_timer = None
        self.executor_.clear()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for sub in (self._chunk_sub, self._js_sub):
            if sub is not None:
                self.destroy_subscription(sub)
        self._chunk_sub = self._js_sub = None
        return TransitionCallbackReturn.SUCCESS

    def _apply_live(self, name: str, value) -> None:
        if name == "watchdog_timeout":
            self.watchdog.timeout = value

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    def destroy_node(self) -> None:
        self._stop_loop()  # no tick may publish through a destroyed publisher
        super().destroy_node()

    def _locked_tick(self) -> None:
        with self._lock:
            self.on_tick()


    def _tick_failed(self, exc: BaseException) -> None:
        self.get_logger().error(f"control tick failed: {type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------------------- message types
    def _output_type(self):
        mode = self.params["output_mode"]
        if mode == "joint_state":
            from sensor_msgs.msg import JointState
            return JointState
        if mode == "float64_array":
            from std_msgs.msg import Float64MultiArray
            return Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory
        return JointTrajectory

    @staticmethod
    def _chunk_type():
        from hlrp_ros.msg import ActionChunk
        return ActionChunk

    @staticmethod
    def _diag_type():
        from diagnostic_msgs.msg import DiagnosticArray
        return DiagnosticArray

    # ----------------------------------------------------------------------------- inputs
    def on_joint_state(self, msg) -> None:
        """Remember the measured positions (never replaced by an older-stamped state): starts ramp from them."""
        now = _sec(self.get_clock())
        index = {n: i for i, n in enumerate(msg.name)}
        if len(index) != len(msg.name) or any(n not in index for n in self.joint_names):
            return
        positions = np.array([msg.position[index[n]] if index[n] < len(msg.position) else np.nan
                              for n in self.joint_names])
        if not np.all(np.isfinite(positions)):
            return
        stamp = time_to_ns(msg.header.stamp)
        with self._lock:
            self._keep_measured(positions, now, stamp)

    def _keep_measured(self, positions: np.ndarray, now: float, stamp: int) -> None:
        if self.measured is not None and arrives_out_of_order(stamp, self.measured[2], now - self.measured[1],
                                                              self.params["max_joint_state_age"]):
            self.dropped_inputs("joint_state_out_of_order", f"dropped a joint state on {self.params['joint_states_topic']} "
                                                    f"stamped {(self.measured[2] - stamp) * 1e-9:.3f} s before the "
                                                    f"one already kept (out of order)")
            return
        positions = self.limits.clamp(positions)
        if self.measured is not None:  # a jump between two measurements: the robot was moved, not driven
            jumped = (self.resync_thresholds > 0) & (np.abs(positions - self.measured[0]) > self.resync_thresholds)
            self._moved = self._moved | jumped
        self.measured = (positions, now, stamp)

    def _on_chunk_message(self, msg, info) -> None:
        """Subscription callback: the publishing node must be one of ``chunk_publishers`` (when set)."""
        allowed = self.params["chunk_publishers"]
        if allowed:
            publisher = self.publisher_name(info.get("publisher_gid"))
            if publisher not in allowed:
                self.reject("chunk_publisher", f"rejected ActionChunk {msg.chunk_id} ({run_label(msg.run_id)}): "
                                               f"published by {publisher or 'an unknown node'}, not one of "
                                               f"chunk_publishers {allowed}")
                return
        self.on_chunk(msg)

    def publisher_name(self, gid: dict | None) -> str | None:
        """Fully qualified name of the node owning the publisher ``gid`` (from the ROS graph), or None."""
        if not gid:
            return None
        key = bytes(gid.get("data", b""))
        name = self._publisher_names.get(key)
        if name is None:  # a publisher not seen yet: ask the graph (discovery has announced it by now)
            for endpoint in self.get_publishers_info_by_topic(self.params["input_topic"]):
                namespace = endpoint.node_namespace.rstrip("/")
                self._publisher_names[bytes(endpoint.endpoint_gid)] = f"{namespace}/{endpoint.node_name}"
            name = self._publisher_names.get(key)
        return name

    def on_chunk(self, msg) -> None:
        """Validate and queue a chunk; anything wrong is logged (throttled per reason) and dropped."""
        now = _sec(self.get_clock())
        try:
            chunk = decode_chunk(msg, self.joint_names)
        except ChunkError as exc:
            self.reject(f"chunk_{exc.reason}", f"rejected ActionChunk {msg.chunk_id} ({run_label(msg.run_id)}): {exc}")
            return
        timed = TimedChunk(chunk.chunk_id, chunk.first_action_ns * 1e-9, chunk.dt, chunk.actions, chunk.stamp_ns * 1e-9)
        with self._lock:  # decoding above needs no lock: the control thread waits only for this part
            self._admit(chunk, timed, now)

    def _admit(self, chunk, timed: TimedChunk, now: float) -> None:
        problem = self._timing_problem(timed, now)
        verdict = self.admission.check(chunk.run_id, chunk.chunk_id, timed.stamp) if problem is None else None
        if problem is None and not verdict.accepted:
            problem = (f"chunk_{verdict.reason}", verdict.message)
        if problem is not None:
            reason, why = problem
            self.reject(reason, f"rejected ActionChunk {chunk.chunk_id} ({run_label(chunk.run_id)}): {why}")
            return
        if verdict.took_over is not None:
            self.get_logger().warning(f"ActionChunk {chunk.chunk_id}: {verdict.message}; the old run's chunks "
                                      f"are refused from now on")
        self.admission.admit(chunk.run_id, chunk.chunk_id, timed.stamp)
        self.executor_.submit(timed)
        self.accepted += 1

    def _timing_problem(self, timed: TimedChunk, now: float) -> tuple[str, str] | None:
        """(reason, text) when the chunk's times make it unusable now: stale, from the future, or due too late."""
        p = self.params
        age = now - timed.stamp
        if -age > p["max_chunk_age"]:  # the policy's clock runs ahead of ours: ages mean nothing
            return "chunk_future", (f"observation stamped {-age:.3f} s in the future (more than max_chunk_age "
                                    f"{p['max_chunk_age']:g} s): are the clocks synchronised (or use_sim_time "
                                    f"set alike)?")
        if age > p["max_chunk_age"] or timed.end <= now:
            return "chunk_stale", (f"stale: observation {age:.3f} s old (max_chunk_age {p['max_chunk_age']:g} s), "
                                   f"last action due {timed.end - now:+.3f} s from now")
        if timed.start - now > p["max_start_delay"]:
            return "chunk_too_early", (f"first action due {timed.start - now:.3f} s from now (more than "
                                       f"max_start_delay {p['max_start_delay']:g} s): is the policy's clock ahead?")
        return None

    # ----------------------------------------------------------------------------- control loop
    def _set_state(self, state: OutputState, reason: str) -> None:
        if not self.tracker.update(state, reason):
            return
        if state == OutputState.RUNNING:  # rclpy: one severity per call site
            self.get_logger().info(f"{state.value}: {reason}")
        else:
            self.get_logger().warning(f"{state.value}: {reason}")

    def on_tick(self) -> None:
        """Command what is due now (or hold / stop); never counts ticks."""
        now = _sec(self.get_clock())
        if self.last_tick is not None and now < self.last_tick:
            self._clock_jumped_back(self.last_tick - now)
        self.last_tick = now
        target = self.executor_.target(now)
        if target is not None and target.switched:  # only chunks that execute feed the watchdog
            self.watchdog.feed(now)
        # what this tick acted on, so diagnostics never report a trip beside a state that ignored it
        self.watchdog_tripped = self.watchdog.expired(now)
        if target is None or self.watchdog_tripped:
            self._no_target(now)
            return
        starting = self.tracker.state in (OutputState.WAITING, OutputState.STOPPED)
        if starting and not self._start_from_measured(now):
            return
        if self._moved.any() and not starting:
            self._resync_to_measured(now)
        result = self.safety.filter(target.positions, now, new_chunk=target.switched or starting)
        if result.seam_jump is not None:
            joint, jump = result.seam_jump
            self.get_logger().warning(f"seam: chunk {target.chunk_id} starts {jump:.3f} away on joint "
                                      f"'{self.joint_names[joint]}' (seam_threshold "
                                      f"{self.params['seam_threshold']:g}): ramping within the velocity limit")
        self._set_state(OutputState.RUNNING, f"executing chunk {target.chunk_id}")
        self._hold_sent = False
        if self.params["output_mode"] == "joint_trajectory":
            if target.switched:
                self._publish_trajectory(now, result.positions)
        else:
            self._publish_positions(now, result.positions)

    def _start_from_measured(self, now: float) -> bool:
        """Before the first command after waiting or stopping: ramp from the measured joint state.

        False (nothing may be commanded yet) while ``require_joint_state`` finds no fresh measured state.
        """
        p = self.params
        if self.measured is not None and now - self.measured[1] <= p["max_joint_state_age"]:
            self.safety.reset(self.measured[0], now)
            self._moved[:] = False  # every joint starts from the measured state: no jump left to act on
            self._waiting_logged = False
            return True
        if not p["require_joint_state"]:
            return True
        if self.measured is None:
            why = f"none received on {p['joint_states_topic']} yet"
        else:
            why = (f"the last one on {p['joint_states_topic']} is {now - self.measured[1]:.2f} s old "
                   f"(max_joint_state_age {p['max_joint_state_age']:g} s)")
        self.tracker.update(OutputState.WAITING, f"waiting for a measured joint state: {why}")
        if not self._waiting_logged:  # once per wait, whatever the state before
            self._waiting_logged = True
            self.get_logger().warning(f"not commanding: waiting for a measured joint state ({why}); commanding "
                                      f"starts from it within the limits")
        return False

    def _resync_to_measured(self, now: float) -> None:
        """Joints whose measured state jumped continue from the measured position, not from the last command.

        Without this, a robot moved while the controller ran (by hand, by a simulator reset that keeps its clock
        running) would be ramped back to where it was. A steady gap between command and measurement (a hand
        pressing on an object, tracking lag) is no jump and keeps the command as it is.
        """
        moved, self._moved = self._moved, np.zeros_like(self._moved)
        if self.measured is None or self.safety.last is None:
            return
        gap = np.abs(self.measured[0] - self.safety.last)
        last = self.safety.last.copy()
        last[moved] = self.measured[0][moved]
        self.safety.reset(last, now)
        self.resyncs += 1
        names = ", ".join(f"'{self.joint_names[j]}' {gap[j]:.3f}" for j in np.flatnonzero(moved))
        self.get_logger().warning(f"resync: the measured state jumped (distance from the last command: {names}; "
                                  f"resync_threshold): commanding from the measured state on those joints")

    def _clock_jumped_back(self, jump: float) -> None:
        """A simulator reset (or a stepped clock): nothing planned on the old timeline may execute."""
        self.executor_.clear()
        self.admission.clock_reset()
        self.watchdog.reset()
        self.measured = None
        self.safety.reset(self.safety.last)  # keep the last command (to hold), forget its time
        self.get_logger().warning(f"clock jumped back {jump:.3f} s (simulator reset?): dropped every pending "
                                  f"chunk; waiting for chunks on the new timeline")

    def _no_target(self, now: float) -> None:
        """Nothing is due: keep waiting, or hold / stop after the chunk ran out or the watchdog tripped."""
        expired = self.watchdog_tripped
        if self.tracker.state == OutputState.WAITING and not expired:
            return
        if expired:
            reason = (f"watchdog: no valid chunk for {self.watchdog.age(now):.2f} s "
                      f"(watchdog_timeout {self.watchdog.timeout:g} s)")
        else:
            current = self.executor_.current
            reason = f"chunk {current.chunk_id if current else '?'} ran out"
        if self.tracker.state == OutputState.WAITING:  # never commanded anything: nothing to hold
            self._set_state(OutputState.STOPPED, reason + " before any command, stopped publishing")
        elif self.params["on_timeout"] == "hold" and self.safety.last is not None:
            self._set_state(OutputState.HOLDING, reason + ", holding the last command")
            self._publish_hold(now)
        else:
            self._set_state(OutputState.STOPPED, reason + ", stopped publishing")

    # ----------------------------------------------------------------------------- outputs
    def _publish_hold(self, now: float) -> None:
        """Hold: repeat the last command (position modes) or send it once as a one-point trajectory."""
        if self.params["output_mode"] != "joint_trajectory":
            self._publish_positions(now, self.safety.last)
        elif not self._hold_sent:
            self._hold_sent = True
            self._publish_trajectory(now, self.safety.last, hold=True)

    def _publish_positions(self, now: float, positions: np.ndarray) -> None:
        msg = self._output_type()()
        if self.params["output_mode"] == "joint_state":
            ns_to_time(int(round(now * 1e9)), msg.header.stamp)
            msg.name = list(self.joint_names)
            msg.position = [float(v) for v in positions]
        else:
            msg.data = [float(v) for v in positions]
        self._cmd_pub.publish(msg)
        self.published += 1

    def _publish_trajectory(self, now: float, positions: np.ndarray, hold: bool = False) -> None:
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        msg = JointTrajectory()
        ns_to_time(int(round(now * 1e9)), msg.header.stamp)
        msg.joint_names = list(self.joint_names)
        times, targets = np.array([now + self.period]), positions[None, :]
        remaining = None if hold else self.executor_.remaining(now)
        if remaining is not None:
            times = np.concatenate([times, remaining[0][remaining[0] > now + self.period]])
            targets = np.vstack([targets, remaining[1][remaining[0] > now + self.period]])
            targets = limit_path(positions, now + self.period, times, targets, self.limits)
        for t, q in zip(times, targets):
            offset = int(round((t - now) * 1e9))
            msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in q],
                                                   time_from_start=Duration(sec=offset // 10**9,
                                                                            nanosec=offset % 10**9)))
        self._cmd_pub.publish(msg)
        self.published += 1

    def _timing_values(self) -> dict:
        loop = self._loop
        if loop is None:
            return {"control_thread": False}
        return {"control_thread": True, "tick_late_p50_ms": loop.late_percentile(50) * 1e3,
                "tick_late_p99_ms": loop.late_percentile(99) * 1e3, "ticks_missed": loop.missed,
                "scheduling": loop.scheduling}

    def hold_on_shutdown(self) -> None:
        """The last command once more, as a hold: a trajectory controller drops the rest of the path."""
        self._stop_loop()
        safety = getattr(self, "safety", None)
        if self._cmd_pub is None or safety is None or safety.last is None or not self.context.ok():
            return
        now = _sec(self.get_clock())
        if self.params["output_mode"] == "joint_trajectory":
            self._publish_trajectory(now, safety.last, hold=True)
        else:
            self._publish_positions(now, safety.last)
        from rclpy.duration import Duration

        # the node is destroyed next: let reliable subscribers acknowledge the hold first
        acked = self._cmd_pub.wait_for_all_acked(Duration(seconds=1.0))
        self.get_logger().info("shutting down: published a hold of the last command"
                               + ("" if acked else " (not acknowledged by every subscriber within 1 s)"))

    def publish_diagnostics(self) -> None:
        with self._lock:  # read under the lock, publish outside it
            array = self._diagnostics()
        self._diag_pub.publish(array)

    def _diagnostics(self):
        now = _sec(self.get_clock())
        current = self.executor_.current
        state = self.tracker.state
        level = {OutputState.RUNNING: OK, OutputState.WAITING: OK, OutputState.HOLDING: WARN,
                 OutputState.STOPPED: ERROR}[state]
        if state == OutputState.WAITING and self.tracker.reason.startswith("waiting for a measured"):
            level = WARN  # chunks arrive but cannot be executed
        age = self.watchdog.age(now)
        values = {
            "state": state.value, "watchdog_tripped": self.watchdog_tripped,
            "seconds_since_last_chunk": -1.0 if age is None else age,
            "chunk_age": -1.0 if current is None else now - current.stamp,
            "chunk_id": -1 if current is None else current.chunk_id,
            "run_id": self.admission.run_id or "",
            "joint_state_age": -1.0 if self.measured is None else now - self.measured[1],
            "chunks_accepted": self.accepted, "chunks_rejected": self.reject.total,
            "joint_states_dropped": self.dropped_inputs.total,
            "commands_published": self.published, "seam_ramping": self.safety.ramping,
            "seam_guard_activations": self.safety.seam_activations, "resyncs": self.resyncs,
            **self._timing_values(),
            **self.qos_mismatches.diagnostics(),
        }
        message = self.tracker.reason
        if self.sim_clock.waiting():
            level, message = WARN, "waiting for /clock (use_sim_time): nothing is commanded"
        status = make_status(f"{self.get_name()}: chunk execution", self.get_name(), level, message, values)
        return make_array(self.get_clock().now().to_msg(), [status])


def main(args=None) -> int:
    """Run the controller; exit code 1 when the configuration is invalid."""
    init_ros(args)
    node = ControllerNode()
    code = 0
    try:
        if node.params.get("autostart", True) or node.config_error is not None:
            node.trigger_configure()
            if node.config_error is not None:
                code = 1
            else:
                node.trigger_activate()
        if code == 0:
            spin_until_shutdown(node)
            node.hold_on_shutdown()
    except KeyboardInterrupt:  # during start-up
        pass
    finally:
        node.destroy_node()
        shutdown_ros()
    return code


if __name__ == "__main__":
    sys.exit(main())
