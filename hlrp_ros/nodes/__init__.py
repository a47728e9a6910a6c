"""Thin rclpy nodes (policy_node, controller_node, demo_sim) and their shared helpers (parameters, spinning).

Every parameter is declared once, from a ``ParamSpec`` (type from the default, a description,
an optional range or set of choices, read-only unless it is safe to change at run time).
Defaults live in ``config/hlrp.yaml``; the spec defaults only make a node start without it.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_ARRAY_TYPES = {str: "STRING_ARRAY", float: "DOUBLE_ARRAY", int: "INTEGER_ARRAY", bool: "BOOL_ARRAY"}


class ParameterError(ValueError):
    """An invalid node configuration; the message starts with the parameter's name."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"invalid parameter '{name}': {problem}")
        self.name = name


@dataclass(frozen=True)
class ParamSpec:
    """One parameter.

    Attributes:
        name: Parameter name.
        default: Default value; its Python type fixes the ROS type (lists: ``item_type``).
        description: What it means, with its unit.
        minimum: Inclusive lower bound of a number (None: none).
        maximum: Inclusive upper bound of a number (None: none).
        choices: Allowed values of a string.
        read_only: Whether it may only be set at start-up (``ros2 param set`` is then refused, saying why).
        item_type: Element type of a list parameter.
        fixed_because: Why a read-only parameter cannot change while the node runs.
    """

    name: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[str] = field(default_factory=tuple)
    read_only: bool = True
    item_type: type = str
    fixed_because: str = "the node uses it to build its state at start-up"

    def descriptor(self):
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

        text = self.description
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        text += " Fixed while running." if self.read_only else " Can be changed while running."
        # Not rclpy's read_only flag: its refusal cannot say why; accept_live_updates refuses with the reason.
        desc = ParameterDescriptor(description=text, read_only=False)
        if isinstance(self.default, bool):
            return desc
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if isinstance(self.default, float) and (self.minimum is not None or self.maximum is not None):
            desc.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
        elif isinstance(self.default, int) and (self.minimum is not None or self.maximum is not None):
            desc.integer_range = [IntegerRange(from_value=int(max(low, -2**63)), to_value=int(min(high, 2**63 - 1)))]
        return desc

    def check(self, value: Any) -> Any:
        """``value`` validated against the range/choices; ParameterError naming the parameter otherwise."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ParameterError(self.name, f"must be finite, got {value}")
            if self.minimum is not None and value < self.minimum:
                raise ParameterError(self.name, f"must be >= {self.minimum}, got {value}")
            if self.maximum is not None and value > self.maximum:
                raise ParameterError(self.name, f"must be <= {self.maximum}, got {value}")
        if self.choices and value not in self.choices:
            raise ParameterError(self.name, f"must be one of {list(self.choices)}, got {value!r}")
        return value


def declare_parameters(node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare every spec on ``node`` and return the validated values by name.

    Raises:
        ParameterError: a value of the wrong type, out of range or not among the choices.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    values: dict[str, Any] = {}
    for spec in specs:
        default = spec.default
        if isinstance(default, list) and not default:  # empty list: type from item_type, unset by default
            default = getattr(Parameter.Type, _ARRAY_TYPES[spec.item_type])
        try:
            value = node.declare_parameter(spec.name, default, spec.descriptor()).value
        except (InvalidParameterTypeException, InvalidParameterValueException, TypeError) as exc:
            raise ParameterError(spec.name, str(exc)) from exc
        values[spec.name] = _validated(spec, value)
    return values


def _validated(spec: ParamSpec, value: Any) -> Any:
    """``value`` of the spec's type (ints accepted for floats, tuples as lists), in range; else ParameterError."""
    if value is None:
        value = []
    if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = type(spec.default)
    if not isinstance(value, expected) and not (expected is list and isinstance(value, (list, tuple))):
        raise ParameterError(spec.name, f"expected {expected.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(value, (list, tuple)):
        value = list(value)
    return spec.check(value)


def accept_live_updates(node, specs: Sequence[ParamSpec], values: dict[str, Any],
                        check: Callable[[str, Any], str | None] | None = None,
                        apply: Callable[[str, Any], None] | None = None) -> None:
    """Let ``ros2 param set`` change the specs that are not read-only, validated, with a log line.

    A read-only one is refused with its ``fixed_because``; a value of the wrong type or out of range
    with what is wrong; ``check(name, value)`` may refuse too (returning the reason, e.g. a value the
    loaded model cannot take). Only when every value of the request passed are ``values`` updated,
    ``apply(name, value)`` called and each change logged: all or nothing.
    """
    from rcl_interfaces.msg import SetParametersResult

    by_name = {spec.name: spec for spec in specs}

    def on_set(parameters) -> SetParametersResult:
        changes = []
        for parameter in parameters:
            spec = by_name.get(parameter.name)
            if spec is None:  # rclpy's own (use_sim_time, ...)
                continue
            if spec.read_only:
                return SetParametersResult(successful=False, reason=f"{spec.name} is fixed while the node runs: "
                                                                    f"{spec.fixed_because}; restart it to change it")
            try:
                changes.append((spec.name, _validated(spec, parameter.value)))
            except ParameterError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        for name, value in changes:
            problem = check(name, value) if check is not None else None
            if problem:
                return SetParametersResult(successful=False, reason=f"invalid parameter '{name}': {problem}")
        for name, value in changes:
            old, values[name] = values[name], value
            if apply is not None:
                apply(name, value)
            node.get_logger().info(f"parameter {name} changed from {old!r} to {value!r}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)


def describe_parameters(specs: Sequence[ParamSpec]) -> str:
    """Markdown table of the specs (for docs)."""
    rows = ["| parameter | default | range | description |", "| --- | --- | --- | --- |"]
    for s in specs:
        bounds = "" if s.minimum is None and s.maximum is None else (
            f"[{'' if s.minimum is None else s.minimum}, {'' if s.maximum is None else s.maximum}]")
        rows.append(f"| `{s.name}` | `{s.default!r}` | {bounds} | {s.descriptor().description} |")
    return "\n".join(rows)


def steady_timer(node, period: float, callback, **kwargs):
    """A timer on the steady clock: it keeps firing while ROS time stands still (``use_sim_time`` with a
    paused or missing ``/clock``), so diagnostics can say what the node waits for."""
    from rclpy.clock import Clock, ClockType

    return node.create_timer(period, callback, clock=Clock(clock_type=ClockType.STEADY_TIME), **kwargs)


class SimClockWatch:
    """With ``use_sim_time``, tells (once) that nothing runs until ``/clock`` does, and when it starts.

    Timers on ROS time do not fire before the first clock message; call ``waiting()`` from a
    ``steady_timer``.

    Args:
        node: The node.
        blocked: What waits for the clock, in words ("nothing is commanded").
    """

    def __init__(self, node, blocked: str) -> None:
        self._node, self._blocked = node, blocked
        self._announced = False

    def waiting(self) -> bool:
        """Whether the node waits for its first ``/clock`` message (logged on the first call that sees it)."""
        node = self._node
        if not node.get_parameter("use_sim_time").value:
            return False
        waiting = node.get_clock().now().nanoseconds == 0
        if waiting and not self._announced:
            self._announced = True
            node.get_logger().warning(f"waiting for /clock: use_sim_time is true and no clock message has arrived; "
                                      f"{self._blocked} until the clock runs (is the simulator running and its "
                                      f"clock bridged to /clock?)")
        elif not waiting and self._announced:
            self._announced = False
            node.get_logger().info("/clock is running")
        return waiting


class QosMismatches:
    """Publishers whose QoS a node's subscriptions cannot match, said once in the node's own words.

    rclpy's default reaction is a generic warning in the node log and nothing else; here each
    topic and differing policy gets one warning naming the topic, what the node subscribes with
    and what to do, and ``seen`` (topic -> policies) feeds the node's diagnostics.

    Args:
        node: The node (for its logger).
    """

    def __init__(self, node) -> None:
        self._node = node
        self.seen: dict[str, set[str]] = {}

    def callbacks(self, topic: str, subscribes: str, advice: str, report: bool = True, message_lost=None):
        """``event_callbacks`` for one subscription on ``topic``.

        Args:
            subscribes: The subscription's QoS, in words ("reliable, volatile").
            advice: What a publisher must offer to be heard.
            report: False for a second subscription on the same topic whose mismatches are expected
                (a latched one next to a volatile one) and otherwise reported by the first.
            message_lost: Called with the middleware's lost-sample status (total_count), if given.
        """
        from rclpy.event_handler import SubscriptionEventCallbacks
        from rclpy.qos import qos_policy_name_from_kind

        def on_incompatible(event) -> None:
            if not report:
                return
            policy = qos_policy_name_from_kind(event.last_policy_kind)
            policies = self.seen.setdefault(topic, set())
            if policy in policies:
                return
            policies.add(policy)
            self._node.get_logger().warning(
                f"{topic}: a publisher's QoS is incompatible with this node's subscription ({subscribes}): its "
                f"{policy.lower().replace('_', ' ')} policy differs, so none of its messages arrive. {advice}")

        return SubscriptionEventCallbacks(incompatible_qos=on_incompatible, message_lost=message_lost)

    def diagnostics(self) -> dict[str, str]:
        """``incompatible_qos.<topic>`` -> the differing policies, for a DiagnosticStatus."""
        return {f"incompatible_qos.{topic}": ",".join(sorted(p)) for topic, p in sorted(self.seen.items())}


class _StopSignals:
    """SIGINT and SIGTERM, handled by the node's own main instead of rclpy's handlers.

    Under ``ros2 launch`` a Ctrl-C reaches every node twice (the terminal signals the whole process
    group, then launch signals each node); rclpy's handler shuts the context down at the first one,
    under the feet of threads still publishing, and the second lands in ``destroy_node`` as a
    KeyboardInterrupt. Here the first signal only asks the spin loop to return, so the node stops
    its own work (inference thread, a final hold) while the context is still valid; later ones are
    ignored. A signal during start-up (before spinning) abandons the start-up.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.spinning = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.requested.is_set():
            return
        self.requested.set()
        if not self.spinning:
            raise KeyboardInterrupt


STOP_SIGNALS = _StopSignals()


def init_ros(args=None) -> None:
    """``rclpy.init`` for a node executable: SIGINT / SIGTERM go to ``STOP_SIGNALS``, not to rclpy."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    STOP_SIGNALS.install()


def shutdown_ros() -> None:
    """The end of a node executable: shut the context down and ignore further stop signals.

    rclpy's default would "restore" signal dispositions it never set; either way a second Ctrl-C
    still in flight would kill the exiting process with status 130."""
    import rclpy

    rclpy.try_shutdown(uninstall_handlers=False)
    if threading.current_thread() is threading.main_thread():
        # Python resets its handlers while the interpreter finalises; a signal landing then (the second
        # Ctrl-C from ros2 launch) would kill the process (status 130) after a clean exit.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def spin_until_shutdown(node) -> None:
    """Spin ``node`` on a single-threaded executor until SIGINT / SIGTERM (``init_ros``) or an external shutdown.

    Returns with the context still valid after a signal, so the caller can stop the node's own work
    and publish what it must before ``destroy_node``. A context shut down by someone else while the
    executor builds its wait set surfaces as ``RCLError`` ("the given context is not valid") rather
    than ``ExternalShutdownException``; both are the same clean exit.
    """
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    STOP_SIGNALS.spinning = True
    try:
        while not STOP_SIGNALS.requested.is_set() and node.context.ok():
            executor.spin_once(timeout_sec=0.1)  # a signal is seen within 0.1 s
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # rclpy's RCLError
        if node.context.ok():
            raise
    finally:
        STOP_SIGNALS.spinning = False
        executor.remove_node(node)
        executor.shutdown(timeout_sec=1.0)


def run_node(make_node, name: str, args=None) -> int:
    """A node executable's ``main``: init, build, spin until a stop signal, destroy, shut down.

    Returns 1 (with the invalid parameter named in a fatal log line) when ``make_node`` raises
    ``ParameterError``, else 0; a stop signal during start-up is a clean exit too.
    """
    import rclpy

    init_ros(args)
    node = None
    try:
        node = make_node()
        spin_until_shutdown(node)
    except ParameterError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        return 1
    except KeyboardInterrupt:  # during start-up
        pass
    finally:
        if node is not None:
            node.destroy_node()
        shutdown_ros()
    return 0
