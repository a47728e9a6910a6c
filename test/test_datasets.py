"""LeRobot v3.0 datasets: the alignment rule, the writer, the reader, crash recovery, the LeRobot-verified fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hlrp_ros.datasets import lerobot_v3
from hlrp_ros.datasets.alignment import FrameAligner, LatestSample
from hlrp_ros.datasets.lerobot_v3 import DatasetError, DatasetSpec, DatasetWriter
from hlrp_ros.datasets.reader import DatasetReader
from hlrp_ros.datasets.synthetic import LENGTHS, SPEC, synthetic_frame, task_of, write_synthetic

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_dataset"
MS = 1_000_000


def test_latest_sample_takes_the_newest_at_or_before_the_tick_never_a_later_one():
    stream = LatestSample(horizon_ns=10_000 * MS)
    for stamp, value in ((100, "a"), (300, "c"), (200, "b")):  # out of order: inserted in place
        stream.add(stamp * MS, value)
    assert stream.at(99 * MS) is None
    assert stream.at(100 * MS) == (100 * MS, "a")
    assert stream.at(250 * MS) == (200 * MS, "b")
    assert stream.at(10_000 * MS) == (300 * MS, "c")


def test_a_frame_with_a_too_old_input_is_dropped_and_counted_never_filled():
    aligner = FrameAligner({"camera": 50 * MS, "state": 50 * MS})
    aligner.add("camera", 0, "img0")
    aligner.add("state", 0, "q0")
    aligner.add("state", 100 * MS, "q1")
    kept = aligner.sample(40 * MS)
    assert kept.kept and kept.values == {"camera": "img0", "state": "q0"}
    assert kept.ages_ns == {"camera": 40 * MS, "state": 40 * MS}
    stale = aligner.sample(100 * MS)  # the camera's newest is 100 ms old
    assert not stale.kept and stale.dropped == ["camera"] and stale.values == {}
    aligner.add("camera", 90 * MS, "img1")
    again = aligner.sample(100 * MS)
    assert again.values == {"camera": "img1", "state": "q1"}
    missing = FrameAligner({"camera": 50 * MS, "state": 50 * MS}).sample(0)
    assert missing.dropped == ["camera", "state"]
    assert aligner.kept == 2 and aligner.dropped_frames == 1 and aligner.drops == {"camera": 1, "state": 0}


def test_the_age_limit_is_inclusive():
    aligner = FrameAligner({"x": 50 * MS})
    aligner.add("x", 0, 1)
    assert aligner.sample(50 * MS).kept
    assert not aligner.sample(50 * MS + 1).kept


def test_written_dataset_reads_back_with_the_same_frames_tasks_and_boundaries(tmp_path):
    writer = write_synthetic(tmp_path / "ds")
    reader = DatasetReader(tmp_path / "ds")
    reader.validate()
    info = reader.info
    assert info["codebase_version"] == "v3.0" and info["fps"] == SPEC.fps
    assert info["total_episodes"] == len(LENGTHS) == writer.total_episodes
    assert info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 2
    assert info["features"]["observation.state"]["names"] == list(SPEC.joint_names)
    assert info["features"]["observation.state"]["unit"] == "rad"
    assert reader.tasks == [task_of(0), task_of(1)]
    start = 0
    for e, length in enumerate(LENGTHS):
        ep = reader.episode(e)
        assert ep.task == task_of(e) and ep.index_range == (start, start + length)
        for i in range(length):
            state, action, images = synthetic_frame(e, i)
            np.testing.assert_array_equal(ep.states[i], state)
            np.testing.assert_array_equal(ep.actions[i], action)
        for name in SPEC.cameras:
            frames = reader.frames(e, f"observation.images.{name}")
            assert frames.shape == (length, *SPEC.cameras[name], 3)
            recorded = np.stack([synthetic_frame(e, i)[2][name] for i in range(length)]).astype(float)
            assert np.abs(frames - recorded).mean() < 6.0  # yuv420p loss
            # each frame is nearer its own recording than its neighbour's: nothing shifted or repeated
            for i in range(length - 1):
                assert np.abs(frames[i] - recorded[i]).mean() < np.abs(frames[i] - recorded[i + 1]).mean()
        start += length
    states = np.concatenate([reader.episode(e).states for e in range(len(LENGTHS))])
    np.testing.assert_allclose(reader.stats["observation.state"]["mean"], states.mean(0), rtol=1e-5)
    np.testing.assert_allclose(reader.stats["observation.state"]["std"], states.std(0), rtol=1e-5)
    assert reader.stats["observation.state"]["count"] == [sum(LENGTHS)]
    assert np.asarray(reader.stats["observation.images.front"]["mean"]).shape == (3, 1, 1)


def test_discarded_episode_leaves_nothing_and_numbering_continues(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", SPEC)
    episode = writer.start_episode("keep me")
    for i in range(3):
        episode.add_frame(*synthetic_frame(0, i))
    writer.save_episode()
    episode = writer.start_episode("throw me away")
    for i in range(4):
        episode.add_frame(*synthetic_frame(1, i))
    assert writer.discard_episode() == 4
    assert not list((tmp_path / "ds").rglob("*.partial*"))
    episode = writer.start_episode("second kept")
    episode.add_frame(*synthetic_frame(2, 0))
    assert writer.save_episode()["episode_index"] == 1
    reader = DatasetReader(tmp_path / "ds")
    reader.validate()
    assert [r["tasks"] for r in reader.episodes] == [["keep me"], ["second kept"]]
    assert reader.tasks == ["keep me", "second kept"]


def test_bad_frames_and_misuse_are_refused(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", SPEC)
    with pytest.raises(DatasetError, match="no episode"):
        writer.save_episode()
    episode = writer.start_episode("t")
    state, action, images = synthetic_frame(0, 0)
    with pytest.raises(DatasetError, match="joints"):
        episode.add_frame(state[:2], action, images)
    with pytest.raises(DatasetError, match="finite"):
        episode.add_frame(np.full(3, np.nan), action, images)
    with pytest.raises(DatasetError, match="images for"):
        episode.add_frame(state, action, {"front": images["front"]})
    with pytest.raises(DatasetError, match="still being recorded"):
        writer.start_episode("u")
    with pytest.raises(DatasetError, match="no frames"):
        writer.save_episode()
    writer.discard_episode()
    other = DatasetSpec(fps=30, joint_names=SPEC.joint_names, cameras=SPEC.cameras)
    with pytest.raises(DatasetError, match="fps/joints"):
        DatasetWriter(tmp_path / "ds", other)


def test_an_interrupted_save_is_rolled_back_on_reopen_and_saved_episodes_stay(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    write_synthetic(root, lengths=(5, 6))
    writer = DatasetWriter(root, SPEC)
    episode = writer.start_episode("interrupted")
    for i in range(4):
        episode.add_frame(*synthetic_frame(2, i))
    real_replace = os.replace

    def die_at_the_commit(src, dst):  # everything of the episode is on disk, info.json is not yet renamed
        if str(dst).endswith("info.json"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(lerobot_v3.os, "replace", die_at_the_commit)
    with pytest.raises(KeyboardInterrupt):
        writer.save_episode()
    monkeypatch.setattr(lerobot_v3.os, "replace", real_replace)
    assert (root / "data/chunk-000/file-002.parquet").exists()  # written but not committed
    assert json.loads((root / "meta/info.json").read_text())["total_episodes"] == 2
    # a half-encoded video of a later episode, as a kill during recording leaves it
    (root / "videos/observation.images.front/chunk-000/file-003.partial.mp4").write_bytes(b"\0" * 100)
    reopened = DatasetWriter(root, SPEC)
    assert sorted(reopened.recovered) == sorted([
        "data/chunk-000/file-002.parquet", "meta/episodes/chunk-000/file-002.parquet",
        "videos/observation.images.front/chunk-000/file-002.mp4",
        "videos/observation.images.wrist/chunk-000/file-002.mp4",
        "videos/observation.images.front/chunk-000/file-003.partial.mp4", "meta/info.json.partial.json"])
    reader = DatasetReader(root)
    reader.validate()
    assert len(reader) == 2 and reader.info["total_frames"] == 11 and reader.tasks == [task_of(0), task_of(1)]
    assert reader.stats["action"]["count"] == [11]
    episode = reopened.start_episode("after the crash")
    episode.add_frame(*synthetic_frame(2, 0))
    reopened.save_episode()
    reader = DatasetReader(root)
    reader.validate()
    assert reader.episode(2).task == "after the crash" and reader.episode(2).index_range == (11, 12)


def test_the_lerobot_verified_fixture_reads_with_our_reader():
    """The fixture was written by our writer and loaded frame by frame by LeRobot 0.6.1
    (scripts/check_lerobot_dataset.py --fixture); its outcome is in lerobot_check.json."""
    check = json.loads((FIXTURE / "lerobot_check.json").read_text())
    assert check["lerobot"] == "0.6.1" and check["max_pixel_difference_lerobot_vs_ours"] <= 2
    reader = DatasetReader(FIXTURE / "dataset")
    reader.validate()
    assert len(reader) == check["episodes"] == len(LENGTHS)
    assert reader.info["total_frames"] == check["frames"] == sum(LENGTHS)
    assert reader.tasks == check["tasks"] and reader.camera_keys == check["cameras"]
    for e in range(len(reader)):
        ep = reader.episode(e)
        np.testing.assert_array_equal(ep.states, np.stack([synthetic_frame(e, i)[0] for i in range(LENGTHS[e])]))
        np.testing.assert_array_equal(ep.actions, np.stack([synthetic_frame(e, i)[1] for i in range(LENGTHS[e])]))
    tasks = pq.read_table(FIXTURE / "dataset" / "meta" / "tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # as LeRobot reads it
