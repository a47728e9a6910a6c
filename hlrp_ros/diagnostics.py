"""diagnostic_msgs/DiagnosticArray building and per-reason throttled logging for the nodes.

Statuses follow diagnostic_updater's conventions: ``name`` is ``"<node>: <task>"``,
``hardware_id`` names the node, ``level`` is OK/WARN/ERROR/STALE and every figure is a
``KeyValue`` string, so ``rqt_robot_monitor`` and ``diagnostic_aggregator`` read them as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

OK, WARN, ERROR, STALE = 0, 1, 2, 3


def make_status(name: str, hardware_id: str, level: int, message: str, values: Mapping[str, object]):
    """One ``diagnostic_msgs/DiagnosticStatus``."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus(name=name, hardware_id=hardware_id, message=message)
    status.level = bytes([level])
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    return status


def make_array(stamp, statuses) -> object:
    """A ``diagnostic_msgs/DiagnosticArray`` stamped ``stamp`` (a builtin_interfaces/Time)."""
    from diagnostic_msgs.msg import DiagnosticArray

    array = DiagnosticArray(status=list(statuses))
    array.header.stamp = stamp
    return array


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class ReasonThrottle:
    """Logs at most once per ``period`` seconds for each reason key, counting every occurrence.

    rclpy's ``throttle_duration_sec`` is keyed by call site; here one call site reports many
    different problems, and each must get its own message.

    Args:
        log: Called with the message text (e.g. ``node.get_logger().warning``).
        period: Seconds between two messages for the same reason.
        clock: Monotonic time source (seconds).
        max_reasons: Distinct reasons kept; later new ones share the key ``other`` (reasons can carry
            details taken from input messages, and a flood of distinct ones must not grow memory).
    """

    def __init__(self, log: Callable[[str], object], period: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, max_reasons: int = 256) -> None:
        self._log, self.period, self._clock = log, period, clock
        self.max_reasons = max_reasons
        self._last: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str, message: str) -> bool:
        """Count ``reason``; log ``message`` unless the same reason was logged within the period."""
        if reason not in self.counts and len(self.counts) >= self.max_reasons:
            reason = "other"
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.period:
            return False
        self._last[reason] = now
        suppressed = self.counts[reason] - 1
        self._log(message if not suppressed or last is None else f"{message} ({self.counts[reason]} times so far)")
        return True

    @property
    def total(self) -> int:
        """Number of rejections of any reason."""
        return sum(self.counts.values())
