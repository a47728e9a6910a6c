"""Thin rclpy nodes (policy_node, controller_node, demo_sim) and their shared helpers (parameters, spinning).

Every parameter is declared once, from a ``ParamSpec`` (type from the default, a description,
an optional range or set of choices, read-only unless it is safe to change at run time).
Defaults live in ``config/hlrp.yaml``; the spec defaults only make a node start without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
        read_only: Whether it may only be set at start-up.
        item_type: Element type of a list parameter.
    """

    name: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[str] = field(default_factory=tuple)
    read_only: bool = True
    item_type: type = str

    def descriptor(self):
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

        text = self.description
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        desc = ParameterDescriptor(description=text, read_only=self.read_only)
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
        if value is None:
            value = []
        if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = type(spec.default)
        if not isinstance(value, expected) and not (expected is list and isinstance(value, (list, tuple))):
            raise ParameterError(spec.name, f"expected {expected.__name__}, got {type(value).__name__} {value!r}")
        if isinstance(value, (list, tuple)):
            value = list(value)
        values[spec.name] = spec.check(value)
    return values


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

    def callbacks(self, topic: str, subscribes: str, advice: str, report: bool = True):
        """``event_callbacks`` for one subscription on ``topic``.

        Args:
            subscribes: The subscription's QoS, in words ("reliable, volatile").
            advice: What a publisher must offer to be heard.
            report: False for a second subscription on the same topic whose mismatches are expected
                (a latched one next to a volatile one) and otherwise reported by the first.
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

        return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)

    def diagnostics(self) -> dict[str, str]:
        """``incompatible_qos.<topic>`` -> the differing policies, for a DiagnosticStatus."""
        return {f"incompatible_qos.{topic}": ",".join(sorted(p)) for topic, p in sorted(self.seen.items())}


def spin_until_shutdown(node) -> None:
    """Spin ``node`` on a single-threaded executor until Ctrl-C or an external shutdown.

    A SIGINT that lands while the executor is building its wait set surfaces as ``RCLError`` ("the given
    context is not valid") instead of ``ExternalShutdownException``; once the context is shut down that
    is the same clean exit (it made the policy node exit 1 at the end of one of five evaluation runs).
    """
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # rclpy's RCLError
        if node.context.ok():
            raise
