"""rosbag2 import: bags written here (MCAP and sqlite3, with the rosbags library) become episodes by the recording rule."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from hlrp_ros.datasets.reader import DatasetReader
from hlrp_ros.datasets.rosbag_import import TopicMap, import_bag, main

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # bag start (ns)
JOINTS = ["shoulder", "elbow"]
TASKS = ["stack the cubes", "open the drawer"]


def write_bag(path, storage: StoragePlugin, task: str, samples: int = 40, camera_gap=range(0, 0),
              stamp_lag_ms: int = 3) -> None:
    """20 Hz camera (grey = sample number), joint states and commands, stamped k * 50 ms; logged a bit later."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    Image, JointState = types["sensor_msgs/msg/Image"], types["sensor_msgs/msg/JointState"]
    String = types["std_msgs/msg/String"]
    with Writer(path, version=9, storage_plugin=storage) as bag:
        camera = bag.add_connection("/camera/image_raw", Image.__msgtype__, typestore=store)
        states = bag.add_connection("/joint_states", JointState.__msgtype__, typestore=store)
        commands = bag.add_connection("/joint_command", JointState.__msgtype__, typestore=store)
        instruction = bag.add_connection("/instruction", String.__msgtype__, typestore=store)
        bag.write(instruction, T0, store.serialize_cdr(String(data=task), String.__msgtype__))
        for k in range(samples):
            stamp = T0 + k * 50 * MS
            header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="")
            log = stamp + stamp_lag_ms * MS
            q = np.array([0.01 * k, -0.01 * k])
            for connection, values in ((states, q), (commands, q + 0.5)):
                msg = JointState(header=header, name=JOINTS, position=values, velocity=np.zeros(0),
                                 effort=np.zeros(0))
                bag.write(connection, log, store.serialize_cdr(msg, JointState.__msgtype__))
            if k not in camera_gap:
                pixels = np.full(32 * 48 * 3, 20 + 4 * k, dtype=np.uint8)
                image = Image(header=header, height=32, width=48, encoding="rgb8", is_bigendian=0, step=48 * 3,
                              data=pixels)
                bag.write(camera, log, store.serialize_cdr(image, Image.__msgtype__))


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_a_bag_becomes_an_episode_of_the_samples_at_each_tick(tmp_path, storage):
    write_bag(tmp_path / "bag", storage, TASKS[0])
    topics = TopicMap(cameras={"/camera/image_raw": "front"})
    writer, result = import_bag(tmp_path / "bag", tmp_path / "ds", topics, fps=10, max_age=0.08)
    assert result.frames == 20 and result.task == TASKS[0] and sum(result.dropped.values()) == 0
    reader = DatasetReader(tmp_path / "ds")
    reader.validate()
    ep = reader.episode(0)
    k = 2 * np.arange(20)  # tick i at 100 ms * i: the 20 Hz sample stamped exactly then
    np.testing.assert_allclose(ep.states, np.stack([0.01 * k, -0.01 * k], 1), atol=1e-7)
    np.testing.assert_allclose(ep.actions, ep.states + 0.5, atol=1e-6)
    grey = reader.frames(0, "observation.images.front").reshape(20, -1).mean(1)
    np.testing.assert_allclose(grey, 20 + 4 * k, atol=2.0)
    assert reader.joint_names == JOINTS and reader.tasks == [TASKS[0]]


def test_a_camera_gap_drops_frames_and_several_bags_append_episodes(tmp_path, capsys):
    write_bag(tmp_path / "a", StoragePlugin.MCAP, TASKS[0])
    write_bag(tmp_path / "b", StoragePlugin.SQLITE3, TASKS[1], camera_gap=range(10, 20))  # 0.5 s without images
    code = main([str(tmp_path / "ds"), str(tmp_path / "a"), str(tmp_path / "b"), "--fps", "10", "--max-age", "0.08",
                 "--camera", "/camera/image_raw=front"])
    assert code == 0
    out = capsys.readouterr().out
    assert "episode 0, 20 frames" in out and "episode 1, 16 frames" in out and "'camera:front': 4" in out, out
    reader = DatasetReader(tmp_path / "ds")
    reader.validate()
    assert reader.tasks == TASKS and [r["length"] for r in reader.episodes] == [20, 16]
    ep = reader.episode(1)
    k = np.round(ep.states[:, 0] / 0.01).astype(int)
    # tick k=10: the latest image (k=9) is 50 ms old, within max_age, so it is used; ticks k=12..18 find it
    # 150..450 ms old: dropped, never filled with it
    assert list(k) == [k for k in range(0, 40, 2) if k not in (12, 14, 16, 18)]
    grey = reader.frames(1, "observation.images.front").reshape(len(k), -1).mean(1)
    image_k = np.where(k == 10, 9, k)
    np.testing.assert_allclose(grey, 20 + 4 * image_k, atol=2.0)
