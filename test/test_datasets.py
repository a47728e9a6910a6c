"""LeRobot v3.0 datasets: the alignment rule, the writer, the reader, crash recovery, the LeRobot-verified fixture."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hlrp_ros.datasets import lerobot_v3
from hlrp_ros.datasets.alignment import FrameAligner, LatestSample
from hlrp_ros.datasets.lerobot_v3 import DatasetError, DatasetSpec, DatasetWriter
from hlrp_ros.datasets.reader import DatasetReader
from hlrp_ros.datasets.synthetic import (
    IMAGE_SPEC,
    LENGTHS,
    SPEC,
    synthetic_extras,
    synthetic_frame,
    task_of,
    write_synthetic,
)

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


def assert_synthetic_episodes(reader: DatasetReader, spec: DatasetSpec = IMAGE_SPEC) -> None:
    """Every episode of ``reader`` holds exactly the synthetic frames, images and extras it was written with."""
    for row in reader.episodes:
        e, length = row["episode_index"], row["length"]
        ep = reader.episode(e)
        assert ep.task == task_of(e)
        for i in range(length):
            state, action, images = synthetic_frame(e, i, spec)
            np.testing.assert_array_equal(ep.states[i], state)
            np.testing.assert_array_equal(ep.actions[i], action)
            for key, value in synthetic_extras(e, i, spec).items():
                np.testing.assert_array_equal(ep.extras[key][i], value)
        for name in spec.cameras:
            recorded = np.stack([synthetic_frame(e, i, spec)[2][name] for i in range(length)])
            np.testing.assert_array_equal(reader.frames(e, f"observation.images.{name}"), recorded)


def test_image_features_are_lossless_pngs_in_the_data_rows_and_extras_keep_their_shape(tmp_path):
    from PIL import Image

    write_synthetic(tmp_path / "ds", spec=IMAGE_SPEC)
    reader = DatasetReader(tmp_path / "ds")
    reader.validate()
    features = reader.info["features"]
    assert features["observation.images.wrist"] == {"dtype": "image", "shape": [33, 47, 3],
                                                    "names": ["height", "width", "channels"]}
    assert features["action.plan"] == {"dtype": "float32", "shape": [4, 3], "names": ["plan_step", "joint"],
                                       "unit": "rad"}
    assert features["observation.step"]["dtype"] == "int64" and reader.info["video_path"] is None
    assert reader.camera_keys == ["observation.images.front", "observation.images.wrist"]
    assert reader.extra_keys == ["action.plan", "observation.step"]
    assert not (tmp_path / "ds" / "videos").exists()
    assert_synthetic_episodes(reader)
    # The column is what datasets.Image stores, {bytes, path}, and the bytes are a PNG any decoder reads.
    table = pq.read_table(tmp_path / "ds" / "data/chunk-000/file-000.parquet")
    assert str(table.schema.field("observation.images.front").type) == "struct<bytes: binary, path: string>"
    first = table["observation.images.front"][0].as_py()
    assert first["bytes"].startswith(b"\x89PNG") and first["path"] is None
    with Image.open(io.BytesIO(first["bytes"])) as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), synthetic_frame(0, 0, IMAGE_SPEC)[2]["front"])
    plan_type = table.schema.field("action.plan").type  # nested fixed-size lists, (4, 3) per row
    assert (plan_type.list_size, plan_type.value_type.list_size, str(plan_type.value_type.value_type)) == (4, 3, "float")
    plans = np.concatenate([[synthetic_extras(e, i, IMAGE_SPEC)["action.plan"] for i in range(n)]
                            for e, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(reader.stats["action.plan"]["mean"], plans.astype(np.float64).mean(0), rtol=1e-9)
    assert np.asarray(reader.stats["observation.images.front"]["std"]).shape == (3, 1, 1)


def test_a_spec_with_images_or_extras_is_kept_when_reopened_and_frames_must_fit_it(tmp_path):
    write_synthetic(tmp_path / "ds", spec=IMAGE_SPEC)
    with pytest.raises(DatasetError, match="storage/extras"):
        DatasetWriter(tmp_path / "ds", DatasetSpec(fps=10, joint_names=SPEC.joint_names, cameras=IMAGE_SPEC.cameras,
                                                   image_storage="image"))  # the extras missing
    writer = DatasetWriter(tmp_path / "ds", IMAGE_SPEC)
    assert writer.total_episodes == len(LENGTHS)
    episode = writer.start_episode("t")
    state, action, images = synthetic_frame(0, 0, IMAGE_SPEC)
    extras = synthetic_extras(0, 0, IMAGE_SPEC)
    with pytest.raises(DatasetError, match="extra features"):
        episode.add_frame(state, action, images, {"action.plan": extras["action.plan"]})
    with pytest.raises(DatasetError, match="shape"):
        episode.add_frame(state, action, images, {**extras, "action.plan": np.zeros(5)})
    with pytest.raises(DatasetError, match="camera wrist"):
        episode.add_frame(state, action, {**images, "wrist": images["front"]}, extras)
    writer.discard_episode()
    with pytest.raises(ValueError, match="image_storage='image'"):
        DatasetWriter(tmp_path / "video", SPEC, episodes_per_file=2)


def test_packed_episodes_share_files_and_a_reopened_dataset_continues_in_a_new_file(tmp_path):
    root = tmp_path / "ds"
    writer = write_synthetic(root, lengths=(4, 5, 6), spec=IMAGE_SPEC, episodes_per_file=2)
    assert writer.committed_episodes == 3
    data = sorted(str(p.relative_to(root)) for p in root.glob("data/*/*.parquet"))
    assert data == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet"]  # (0, 1) and (2,)
    assert pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")["episode_index"].to_pylist() == [0, 1]
    writer = DatasetWriter(root, IMAGE_SPEC, episodes_per_file=2)
    episode = writer.start_episode(task_of(3))
    for i in range(3):
        episode.add_frame(*synthetic_frame(3, i, IMAGE_SPEC), extras=synthetic_extras(3, i, IMAGE_SPEC))
    row = writer.save_episode()
    assert row["data/file_index"] == 2 and writer.committed_episodes == 3  # waiting for its file
    assert DatasetReader(root).info["total_episodes"] == 3
    writer.close()
    reader = DatasetReader(root)
    reader.validate()
    assert len(reader) == 4 and reader.info["total_frames"] == 18
    assert reader.stats["observation.state"]["count"] == [18]
    assert_synthetic_episodes(reader)


def test_a_packed_file_interrupted_at_its_commit_is_rolled_back_whole(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    write_synthetic(root, lengths=(3, 4), spec=IMAGE_SPEC, episodes_per_file=2)
    writer = DatasetWriter(root, IMAGE_SPEC, episodes_per_file=2)
    real_replace = os.replace

    def die_at_the_commit(src, dst):
        if str(dst).endswith("info.json"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    for e in (2, 3):
        episode = writer.start_episode(task_of(e))
        for i in range(3):
            episode.add_frame(*synthetic_frame(e, i, IMAGE_SPEC), extras=synthetic_extras(e, i, IMAGE_SPEC))
        if e == 3:
            monkeypatch.setattr(lerobot_v3.os, "replace", die_at_the_commit)
            with pytest.raises(KeyboardInterrupt):
                writer.save_episode()  # the file is full: written, and killed before info.json
            monkeypatch.setattr(lerobot_v3.os, "replace", real_replace)
        else:
            writer.save_episode()
    assert (root / "meta/episodes/chunk-000/file-001.parquet").exists()
    before = DatasetReader(root)  # a reader ignores what info.json does not count
    before.validate()
    assert len(before) == 2
    reopened = DatasetWriter(root, IMAGE_SPEC, episodes_per_file=2)
    assert sorted(reopened.recovered) == ["data/chunk-000/file-001.parquet", "meta/episodes/chunk-000/file-001.parquet",
                                          "meta/info.json.partial.json"]
    assert reopened.total_episodes == 2 and reopened.next_file == 1
    reader = DatasetReader(root)
    reader.validate()
    assert len(reader) == 2 and reader.stats["action"]["count"] == [7]
    assert_synthetic_episodes(reader)


PACKING_WRITER = """
import sys
from hlrp_ros.datasets.lerobot_v3 import DatasetWriter
from hlrp_ros.datasets.synthetic import IMAGE_SPEC, synthetic_extras, synthetic_frame, task_of

writer = DatasetWriter(sys.argv[1], IMAGE_SPEC, episodes_per_file=3)
e = 0
while True:
    episode = writer.start_episode(task_of(e))
    for i in range(2 + e % 4):
        episode.add_frame(*synthetic_frame(e, i, IMAGE_SPEC), extras=synthetic_extras(e, i, IMAGE_SPEC))
    writer.save_episode()
    if writer.committed_episodes == e + 1:
        print(writer.committed_episodes, flush=True)
    e += 1
"""


def test_a_packing_writer_killed_at_any_moment_leaves_whole_committed_files(tmp_path):
    root = tmp_path / "ds"
    writer = subprocess.Popen([sys.executable, "-c", PACKING_WRITER, str(root)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        for line in writer.stdout:
            if int(line) >= 9:
                break
        os.kill(writer.pid, signal.SIGKILL)  # while it writes on: anywhere in an episode or a file's commit
    finally:
        writer.kill()
        writer.wait(10)
    assert writer.returncode == -signal.SIGKILL
    for _ in range(2):  # as the kill left it, then after a writer reopened (and cleaned) it
        reader = DatasetReader(root)
        reader.validate()
        assert len(reader) >= 9 and len(reader) % 3 == 0
        assert reader.stats["observation.state"]["count"] == [reader.info["total_frames"]]
        assert_synthetic_episodes(reader)
        DatasetWriter(root, IMAGE_SPEC, episodes_per_file=3)
        assert not list(root.rglob("*.partial*"))
