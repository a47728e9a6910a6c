"""Chunk time indexing, switching and blending (hlrp_ros.control.chunk / executor), no ROS."""

from __future__ import annotations

import numpy as np
import pytest

from hlrp_ros.control.chunk import TimedChunk
from hlrp_ros.control.executor import ChunkExecutor, blend_weight


def chunk(chunk_id: int, start: float, values, dt: float = 0.1) -> TimedChunk:
    return TimedChunk(chunk_id, start, dt, np.asarray(values, dtype=np.float64).reshape(len(values), -1))


def test_index_follows_due_times_not_ticks():
    c = chunk(1, 10.0, [0, 1, 2, 3])
    assert c.index_at(9.99) == -1
    assert c.index_at(10.0) == 0
    assert c.index_at(10.0999) == 0
    assert c.index_at(10.1) == 1  # exactly at a due time (float rounding tolerated)
    assert c.index_at(1_700_000_000.0 + 0.3 - 1_700_000_000.0 + 10.0) == 3
    assert c.index_at(10.4) == 4 == c.horizon
    assert not c.covers(10.4) and c.covers(10.39)
    assert c.end == pytest.approx(10.4)


def test_sample_hold_and_linear():
    c = chunk(1, 0.0, [0.0, 1.0, 3.0])
    assert c.sample(0.15, "hold")[0] == 1.0
    assert c.sample(0.15, "linear")[0] == pytest.approx(2.0)
    assert c.sample(0.25, "linear")[0] == 3.0  # last action held
    assert c.sample(-0.01) is None and c.sample(0.3) is None


def test_invalid_chunk_rejected():
    with pytest.raises(ValueError):
        chunk(1, 0.0, [1.0], dt=0.0)
    with pytest.raises(ValueError):
        TimedChunk(1, 0.0, 0.1, np.zeros((0, 2)))


def test_executor_runs_out_and_returns_none():
    ex = ChunkExecutor()
    assert ex.target(0.0) is None
    ex.submit(chunk(1, 0.0, [5.0, 6.0]))
    first = ex.target(0.0)
    assert first.positions[0] == 5.0 and first.switched and first.index == 0
    second = ex.target(0.1)
    assert second.positions[0] == 6.0 and not second.switched
    assert ex.target(0.2) is None


def test_switch_drops_elapsed_steps():
    ex = ChunkExecutor()
    ex.submit(chunk(1, 0.0, [0, 1, 2, 3, 4, 5]))
    assert ex.target(0.05).positions[0] == 0
    # Chunk 2 computed from an observation at t=0.1, arrives at t=0.32: its steps 0..1 elapsed.
    ex.submit(chunk(2, 0.1, [10, 11, 12, 13, 14]))
    target = ex.target(0.32)
    assert target.chunk_id == 2 and target.index == 2 and target.positions[0] == 12 and target.switched
    assert ex.target(0.41).positions[0] == 13


def test_future_chunk_waits_for_its_first_due_time():
    ex = ChunkExecutor()
    ex.submit(chunk(1, 0.0, [0, 1, 2, 3]))
    ex.target(0.0)
    ex.submit(chunk(2, 0.25, [20, 21]))
    assert ex.target(0.2).chunk_id == 1  # chunk 2 not due yet: keep executing chunk 1
    assert ex.target(0.25).chunk_id == 2
    assert ex.last_id == 2


def test_newer_pending_chunk_replaces_older_pending():
    ex = ChunkExecutor()
    ex.submit(chunk(1, 1.0, [1]))
    ex.submit(chunk(2, 1.0, [2]))
    assert ex.target(1.0).positions[0] == 2


def test_blend_over_overlap():
    ex = ChunkExecutor(blend_time=0.2)
    ex.submit(chunk(1, 0.0, [0.0] * 10))
    ex.target(0.0)
    ex.submit(chunk(2, 0.0, [1.0] * 10))
    assert ex.target(0.1).positions[0] == pytest.approx(0.0)  # switch at 0.1: weight 0
    mid = ex.target(0.2)
    assert mid.blending and mid.positions[0] == pytest.approx(0.5)
    assert ex.target(0.3).positions[0] == pytest.approx(1.0)
    assert not ex.target(0.35).blending


def test_blend_stops_where_old_chunk_ends():
    ex = ChunkExecutor(blend_time=1.0)
    ex.submit(chunk(1, 0.0, [0.0, 0.0]))
    ex.target(0.0)
    ex.submit(chunk(2, 0.0, [1.0] * 10))
    assert ex.target(0.1).blending
    after = ex.target(0.25)  # old chunk ran out at 0.2: no overlap left
    assert not after.blending and after.positions[0] == 1.0


def test_blend_weight():
    assert blend_weight(0.0, 0.0, 0.0) == 1.0
    assert blend_weight(0.05, 0.0, 0.1) == pytest.approx(0.5)
    assert blend_weight(-1.0, 0.0, 0.1) == 0.0


def test_remaining_lists_future_actions_with_due_times():
    ex = ChunkExecutor()
    ex.submit(chunk(1, 0.0, [0, 1, 2, 3]))
    ex.target(0.15)
    times, targets = ex.remaining(0.15)
    np.testing.assert_allclose(times, [0.2, 0.3])
    np.testing.assert_allclose(targets[:, 0], [2, 3])
    assert ex.remaining(0.35) is None
