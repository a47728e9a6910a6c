"""Latest-only inputs that never go back in time.

A subscriber that keeps only the latest message would otherwise let an older message that
arrives late (two publishers, a replayed bag, a slow path through DDS) replace a newer one,
and a chunk would be built on the older information without anyone noticing.
"""

from __future__ import annotations


def arrives_out_of_order(stamp_ns: int, kept_stamp_ns: int, kept_age: float, max_age: float) -> bool:
    """Whether a message stamped ``stamp_ns`` must be dropped instead of replacing the kept one.

    It must when it is older than the kept message while that one is still usable: received
    ``kept_age`` seconds ago, within ``[0, max_age]``. A kept message that is stale, or was
    received "in the future" (the clock jumped back: a simulator reset), gives way, so a reset
    never blocks an input for good. Unset (zero) stamps are never judged.
    """
    if stamp_ns <= 0 or kept_stamp_ns <= 0:
        return False
    return stamp_ns < kept_stamp_ns and 0.0 <= kept_age <= max_age
