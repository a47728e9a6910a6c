"""Which chunks may execute: ordering by observation time across policy runs.

Every chunk names the policy run that made it (``run_id``, random per ``policy_node`` start)
and an id ordered within that run. A chunk is admitted when it is built on newer information
than the last admitted one:

- same run: its ``(observation stamp, chunk id)`` is greater than the last admitted pair, so a
  replayed chunk (equal pair) is refused, and a huge id can only shadow chunks built on the
  same observation: the run's next observation gets through again;
- another run: its observation is newer than the last admitted chunk's; the run it replaces is
  retired, and nothing from a retired run executes again (a policy killed and restarted takes
  over with its first chunk; a stale duplicate of the old one cannot come back).

Ordering by the observation stamp, not by ids, is what makes a restart harmless: ids start
again at 1 in every run, observation time only moves forward. When the controller's own clock
jumps backwards (a simulator reset), ``clock_reset`` forgets the last stamp: every later stamp
is smaller than it, and keeping it would refuse every chunk for ever.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


def run_label(run_id: str) -> str:
    """How logs name a run: its first 8 characters (as git shortens hashes), or "unnamed"."""
    return f"run {run_id[:8]}" if run_id else "unnamed run"


@dataclass(frozen=True)
class Admission:
    """The verdict on one chunk.

    Attributes:
        accepted: Whether the chunk may execute.
        reason: Stable key of a refusal (``replayed``, ``older_observation``, ``retired_run``), "" when accepted.
        message: What was wrong, or for an accepted chunk of a new run, that it took over ("" otherwise).
        took_over: The run id this chunk's run replaced (None when it did not change runs).
    """

    accepted: bool
    reason: str = ""
    message: str = ""
    took_over: str | None = None


class ChunkAdmission:
    """Remembers the last admitted ``(run, stamp, id)`` and the retired runs (see module docstring).

    Args:
        retired_memory: How many retired run ids to remember (the oldest are forgotten first).
    """

    def __init__(self, retired_memory: int = 64) -> None:
        self.run_id: str | None = None
        self.stamp: float | None = None
        self.chunk_id: int | None = None
        self.retired: deque[str] = deque(maxlen=retired_memory)

    def check(self, run_id: str, chunk_id: int, stamp: float) -> Admission:
        """Whether a chunk of ``run_id`` with ``chunk_id``, built on an observation at ``stamp``, may execute.

        Does not change the state: call ``admit`` once the chunk passed every other check.
        """
        if run_id in self.retired:
            return Admission(False, "retired_run", f"its policy {run_label(run_id)} was replaced by "
                                                   f"{run_label(self.run_id)}: is an old policy_node still "
                                                   f"publishing?")
        if self.stamp is None:
            return Admission(True, took_over=self._replaced(run_id))
        if run_id == self.run_id:
            if (stamp, chunk_id) > (self.stamp, self.chunk_id):
                return Admission(True)
            if (stamp, chunk_id) == (self.stamp, self.chunk_id):
                return Admission(False, "replayed", f"the same chunk (id {chunk_id}, observation {stamp:.3f}) "
                                                    f"was already accepted")
            return Admission(False, "older_observation", self._older(stamp, chunk_id))
        if stamp > self.stamp:
            return Admission(True, message=f"policy {run_label(run_id)} took over from {run_label(self.run_id)} "
                                           f"(its observation is {stamp - self.stamp:.3f} s newer)",
                             took_over=self.run_id)
        return Admission(False, "older_observation", self._older(stamp, chunk_id))

    def admit(self, run_id: str, chunk_id: int, stamp: float) -> None:
        """Record an admitted chunk; a change of run retires the previous one."""
        replaced = self._replaced(run_id)
        if replaced is not None:
            self.retired.append(replaced)
        self.run_id, self.chunk_id, self.stamp = run_id, chunk_id, stamp

    def clock_reset(self) -> None:
        """The clock jumped backwards: forget the last stamp (runs stay as they are; retired ones stay retired)."""
        self.stamp = self.chunk_id = None

    def _replaced(self, run_id: str) -> str | None:
        return self.run_id if self.run_id is not None and self.run_id != run_id else None

    def _older(self, stamp: float, chunk_id: int) -> str:
        return (f"built on an observation at {stamp:.3f} (id {chunk_id}), not newer than the last accepted "
                f"chunk's {self.stamp:.3f} (id {self.chunk_id}, {run_label(self.run_id)})")
