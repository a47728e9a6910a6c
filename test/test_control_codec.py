"""ActionChunk <-> numpy (hlrp_ros.chunk_codec): round trip and every rejection."""

from __future__ import annotations

import numpy as np
import pytest

from hlrp_ros.chunk_codec import ChunkError, decode_chunk, encode_chunk, ns_to_time, time_to_ns

pytestmark = pytest.mark.ros

NAMES = ["a", "b", "c"]


def make(actions=None, names=NAMES, **kw):
    actions = np.arange(12, dtype=np.float32).reshape(4, 3) if actions is None else actions
    args = dict(chunk_id=3, stamp_ns=1_700_000_000_123_456_789, first_action_ns=1_700_000_000_500_000_000, dt=0.05)
    args.update(kw)
    return encode_chunk(actions, names, **args)


def test_round_trip_and_reorder():
    msg = make(instruction="go", inference_latency=0.2)
    chunk = decode_chunk(msg, ["c", "a", "b"])
    assert chunk.joint_names == ("c", "a", "b")
    np.testing.assert_array_equal(chunk.actions[:, 0], [2, 5, 8, 11])
    assert chunk.stamp_ns == 1_700_000_000_123_456_789 and chunk.first_action_ns == 1_700_000_000_500_000_000
    assert (chunk.chunk_id, chunk.dt, chunk.instruction) == (3, 0.05, "go")


def test_time_conversion():
    assert time_to_ns(ns_to_time(12_345_678_901)) == 12_345_678_901


@pytest.mark.parametrize("mutate,reason,text", [
    (lambda m: setattr(m, "action_dim", 2), "dims", "action_dim is 2 but 3 joint names"),
    (lambda m: setattr(m, "horizon", 5), "dims", "12 action values for horizon 5"),
    (lambda m: setattr(m, "dt", 0.0), "dt", "dt must be finite and > 0"),
    (lambda m: setattr(m, "joint_names", ["a", "b", "x"]), "names", "missing ['c'], unexpected ['x']"),
    (lambda m: setattr(m, "joint_names", ["a", "a", "b"]), "names", "duplicate joint names ['a']"),
])
def test_rejections(mutate, reason, text):
    msg = make()
    mutate(msg)
    with pytest.raises(ChunkError, match=None) as info:
        decode_chunk(msg, NAMES)
    assert info.value.reason == reason and text in str(info.value)


def test_nan_rejected():
    actions = np.zeros((2, 3), dtype=np.float32)
    actions[1, 2] = np.nan
    with pytest.raises(ChunkError, match="non-finite action values .*step 1, joint 'c'"):
        decode_chunk(make(actions), NAMES)


def test_wrong_joint_count():
    with pytest.raises(ChunkError, match="expected 2"):
        decode_chunk(make(), ["a", "b"])
