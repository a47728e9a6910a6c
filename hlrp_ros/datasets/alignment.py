"""Sampling asynchronous streams on a fixed clock: the rule every recorded frame follows.

Rule: at tick ``t`` each stream contributes its latest sample stamped at or before ``t``;
if that sample is older than ``t - max_age`` (or there is none) the frame is dropped and
the drop is counted against the stream. A dropped frame is never filled with stale data,
and a sample stamped after the tick is never used (no look-ahead), so a recording made
live and one imported from a bag give the same frames for the same messages.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class LatestSample:
    """Recent samples of one stream, kept in stamp order.

    Args:
        horizon_ns: Samples older than the newest one by more than this are forgotten (they can
            only serve ticks that far in the past).
    """

    def __init__(self, horizon_ns: int) -> None:
        self.horizon_ns = int(horizon_ns)
        self._stamps: deque[int] = deque()
        self._values: deque[Any] = deque()

    def add(self, stamp_ns: int, value: Any) -> None:
        """Keep ``value`` stamped ``stamp_ns``; an out-of-order sample is inserted in place."""
        stamp_ns = int(stamp_ns)
        if not self._stamps or stamp_ns >= self._stamps[-1]:
            self._stamps.append(stamp_ns)
            self._values.append(value)
        else:
            i = bisect.bisect_right(self._stamps, stamp_ns)
            self._stamps.insert(i, stamp_ns)
            self._values.insert(i, value)
        newest = self._stamps[-1]
        while len(self._stamps) > 1 and newest - self._stamps[1] >= self.horizon_ns:
            self._stamps.popleft()
            self._values.popleft()

    def at(self, tick_ns: int) -> tuple[int, Any] | None:
        """The latest ``(stamp_ns, value)`` stamped at or before ``tick_ns``; None if there is none."""
        i = bisect.bisect_right(self._stamps, int(tick_ns))
        if i == 0:
            return None
        return self._stamps[i - 1], self._values[i - 1]

    def __len__(self) -> int:
        return len(self._stamps)


@dataclass
class AlignedFrame:
    """One tick's inputs, or why it was dropped.

    Attributes:
        tick_ns: The tick (ns).
        values: Stream name -> the sample used (all streams) when the frame is kept.
        ages_ns: Stream name -> tick minus the sample's stamp (ns).
        dropped: Stream names whose sample was missing or too old (empty: kept).
    """

    tick_ns: int
    values: dict[str, Any] = field(default_factory=dict)
    ages_ns: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        return not self.dropped


class FrameAligner:
    """Applies the rule to several named streams, counting drops per stream.

    Args:
        max_age_ns: Stream name -> the largest tick-minus-stamp accepted (ns). Streams that change
            rarely (an instruction) get a large one.
    """

    def __init__(self, max_age_ns: Mapping[str, int]) -> None:
        self.max_age_ns = {name: int(age) for name, age in max_age_ns.items()}
        self.streams = {name: LatestSample(horizon_ns=max(age, 1) * 2) for name, age in self.max_age_ns.items()}
        self.kept = 0
        self._dropped = 0
        # stream -> frames dropped because of it ("missing": none yet, "stale": too old)
        self.drops: dict[str, int] = {name: 0 for name in self.max_age_ns}

    def add(self, name: str, stamp_ns: int, value: Any) -> None:
        self.streams[name].add(stamp_ns, value)

    def sample(self, tick_ns: int) -> AlignedFrame:
        """The frame at ``tick_ns``; a dropped one is counted in ``drops`` for every stream at fault."""
        frame = AlignedFrame(tick_ns=int(tick_ns))
        for name, stream in self.streams.items():
            got = stream.at(tick_ns)
            if got is None or tick_ns - got[0] > self.max_age_ns[name]:
                frame.dropped.append(name)
                continue
            frame.values[name] = got[1]
            frame.ages_ns[name] = int(tick_ns - got[0])
        if frame.dropped:
            self._dropped += 1
            for name in frame.dropped:
                self.drops[name] += 1
            frame.values.clear()
        else:
            self.kept += 1
        return frame

    @property
    def dropped_frames(self) -> int:
        """Frames dropped (a frame missing two streams counts once here, once per stream in ``drops``)."""
        return self._dropped

    def reset_counts(self) -> None:
        self.kept = 0
        self._dropped = 0
        self.drops = {name: 0 for name in self.max_age_ns}
