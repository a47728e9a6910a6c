"""ActionChunk <-> numpy, with validation.

``encode_chunk`` builds the message the policy node publishes; ``decode_chunk`` checks a
received one (dimensions, names, values, dt) and returns its actions as a ``(horizon, dof)``
array with columns in the consumer's joint order. Rejections raise ``ChunkError`` whose
``reason`` is a short stable key (for throttled logging and counters) and whose text says
exactly what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NS_PER_S = 1_000_000_000


def time_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def time_to_sec(stamp) -> float:
    """``builtin_interfaces/Time`` -> float seconds."""
    return time_to_ns(stamp) / NS_PER_S


def ns_to_time(ns: int, stamp=None):
    """Integer nanoseconds -> ``builtin_interfaces/Time`` (filled into ``stamp`` when given)."""
    if stamp is None:
        from builtin_interfaces.msg import Time

        stamp = Time()
    sec, nanosec = divmod(int(ns), NS_PER_S)
    stamp.sec, stamp.nanosec = int(sec), int(nanosec)
    return stamp


class ChunkError(ValueError):
    """An ActionChunk that must not be executed.

    Attributes:
        reason: Stable short key (``dims``, ``names``, ``values``, ``dt``, ...).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodedChunk:
    """A validated ActionChunk.

    Attributes:
        run_id: Identity of the producing policy run.
        chunk_id: Producer's id, ordered within its run.
        stamp_ns: Observation time (nanoseconds).
        first_action_ns: Due time of ``actions[0]`` (nanoseconds).
        dt: Seconds between actions.
        joint_names: Column names, in the order of ``actions``' columns.
        actions: ``(horizon, dof)`` float64.
        instruction: Instruction the chunk was conditioned on.
        inference_latency: Seconds the producer spent.
    """

    run_id: str
    chunk_id: int
    stamp_ns: int
    first_action_ns: int
    dt: float
    joint_names: tuple[str, ...]
    actions: np.ndarray
    instruction: str
    inference_latency: float


def encode_chunk(actions: np.ndarray, joint_names: Sequence[str], *, chunk_id: int, stamp_ns: int,
                 first_action_ns: int, dt: float, instruction: str = "", inference_latency: float = 0.0,
                 run_id: str = ""):
    """Build an ``hlrp_ros/ActionChunk`` from a ``(horizon, action_dim)`` array."""
    from hlrp_ros.msg import ActionChunk

    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[1] != len(joint_names):
        raise ValueError(f"actions shape {actions.shape} does not match {len(joint_names)} joint names")
    msg = ActionChunk()
    ns_to_time(stamp_ns, msg.header.stamp)
    ns_to_time(first_action_ns, msg.first_action_time)
    msg.run_id = run_id
    msg.chunk_id = int(chunk_id)
    msg.dt = float(dt)
    msg.joint_names = list(joint_names)
    msg.horizon, msg.action_dim = int(actions.shape[0]), int(actions.shape[1])
    msg.actions = np.ascontiguousarray(actions).ravel()
    msg.instruction = instruction
    msg.inference_latency = float(inference_latency)
    return msg


def column_order(names: Sequence[str], expected: Sequence[str]) -> np.ndarray:
    """Indices that reorder columns named ``names`` into ``expected``; ChunkError when the sets differ."""
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if list(names).count(n) > 1})
        raise ChunkError("names", f"duplicate joint names {dupes}")
    missing = [n for n in expected if n not in names]
    extra = [n for n in names if n not in set(expected)]
    if missing or extra:
        raise ChunkError("names", f"joint names do not match: missing {missing}, unexpected {extra}")
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[n] for n in expected], dtype=np.int64)


def decode_chunk(msg, expected_names: Sequence[str] | None = None, max_horizon: int = 100_000) -> DecodedChunk:
    """Validate an ActionChunk and return its actions in ``expected_names`` order.

    Raises:
        ChunkError: wrong dimensions, names, non-finite values or a bad dt.
    """
    names = tuple(msg.joint_names)
    horizon, dim = int(msg.horizon), int(msg.action_dim)
    if dim != len(names):
        raise ChunkError("dims", f"action_dim is {dim} but {len(names)} joint names were sent")
    if not 1 <= horizon <= max_horizon or dim < 1:
        raise ChunkError("dims", f"horizon {horizon} x action_dim {dim} is empty or too large")
    values = np.asarray(msg.actions, dtype=np.float64)
    if values.size != horizon * dim:
        raise ChunkError("dims", f"{values.size} action values for horizon {horizon} x action_dim {dim} "
                                 f"(expected {horizon * dim})")
    if not (math.isfinite(msg.dt) and msg.dt > 0):
        raise ChunkError("dt", f"dt must be finite and > 0, got {msg.dt}")
    actions = values.reshape(horizon, dim)
    bad = ~np.isfinite(actions)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ChunkError("values", f"{int(bad.sum())} non-finite action values (first: step {row}, "
                                   f"joint {names[col]!r} = {actions[row, col]})")
    if expected_names is not None:
        if len(names) != len(expected_names):
            raise ChunkError("dims", f"chunk has {len(names)} joints {list(names)}, "
                                     f"expected {len(expected_names)} {list(expected_names)}")
        order = column_order(names, expected_names)
        actions, names = actions[:, order], tuple(expected_names)
    elif len(set(names)) != len(names):
        column_order(names, names)  # raises on duplicates
    return DecodedChunk(
        run_id=str(msg.run_id), chunk_id=int(msg.chunk_id), stamp_ns=time_to_ns(msg.header.stamp),
        first_action_ns=time_to_ns(msg.first_action_time), dt=float(msg.dt), joint_names=names,
        actions=actions, instruction=str(msg.instruction), inference_latency=float(msg.inference_latency),
    )
