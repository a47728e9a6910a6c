"""rosbag2 bags (MCAP or sqlite3) into a LeRobot v3.0 dataset, one episode per bag, by the recorder's rule.

Bags are read with the ``rosbags`` library (no ROS installation needed). Each input takes its messages'
header stamps (the bag's log time for a message without one), frames are sampled at ``fps`` from the
first instant every input has a sample to the last message, and ``hlrp_ros.datasets.alignment`` decides:
the latest sample at or before the tick, dropped and counted when older than ``max_age``. The task is the
last instruction published at or before the first frame (or ``--task``)::

    python -m hlrp_ros.datasets.rosbag_import OUT_DIR BAG [BAG ...] --fps 10 \\
        --camera /camera/image_raw=front --state /joint_states --action /joint_command \\
        --instruction /instruction
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hlrp_ros.datasets.alignment import FrameAligner
from hlrp_ros.datasets.lerobot_v3 import DatasetSpec, DatasetWriter
from hlrp_ros.ros_image import ImageError, compressed_to_rgb, is_compressed, raw_to_rgb

NS = 1_000_000_000


@dataclass
class TopicMap:
    """Which bag topics feed which dataset features.

    Attributes:
        cameras: Topic -> camera name (``observation.images.<name>``); Image or CompressedImage.
        state: sensor_msgs/JointState topic (positions: ``observation.state``).
        action: Topic of the recorded action: JointState positions or std_msgs/Float64MultiArray.
        instruction: std_msgs/String topic (the episode's task); empty: ``task`` is used.
        joint_names: State/action order; empty: the first joint state's names.
    """

    cameras: dict[str, str]
    state: str = "/joint_states"
    action: str = "/joint_command"
    instruction: str = "/instruction"
    joint_names: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    bag: str
    episode_index: int | None
    frames: int
    dropped: dict[str, int]
    task: str


def positions(msg, joint_names: Sequence[str]) -> np.ndarray:
    """JointState positions in ``joint_names`` order (by name when the message has names)."""
    if getattr(msg, "name", None) is not None and len(msg.name):
        index = {n: i for i, n in enumerate(msg.name)}
        missing = [n for n in joint_names if n not in index]
        if missing:
            raise ValueError(f"joint state without {missing}")
        return np.array([msg.position[index[n]] for n in joint_names], dtype=np.float32)
    values = np.asarray(getattr(msg, "position", getattr(msg, "data", [])), dtype=np.float32)
    if values.shape != (len(joint_names),):
        raise ValueError(f"{values.size} values for {len(joint_names)} joints")
    return values


def _stamp(msg, log_time: int) -> int:
    header = getattr(msg, "header", None)
    stamp = int(header.stamp.sec) * NS + int(header.stamp.nanosec) if header is not None else 0
    return stamp or int(log_time)


def import_bag(bag: str | Path, writer_root: str | Path, topics: TopicMap, fps: int, max_age: float = 0.25,
               task: str = "", robot_type: str = "unknown", writer: DatasetWriter | None = None
               ) -> tuple[DatasetWriter | None, ImportResult]:
    """Import one bag as one episode (appended to the dataset at ``writer_root``)."""
    from rosbags.highlevel import AnyReader

    max_age_ns = int(max_age * NS)
    streams = {topic: f"camera:{name}" for topic, name in topics.cameras.items()}
    streams.update({topics.state: "state", topics.action: "action"})
    joint_names = list(topics.joint_names)
    with AnyReader([Path(bag)]) as reader:
        wanted = [c for c in reader.connections if c.topic in streams or c.topic == topics.instruction]
        missing = set(streams) - {c.topic for c in wanted}
        if missing:
            raise ValueError(f"{bag}: no messages on {sorted(missing)}; topics: {sorted(reader.topics)}")
        samples: dict[str, list[tuple[int, object]]] = {name: [] for name in streams.values()}
        instructions: list[tuple[int, str]] = []
        for connection, log_time, raw in reader.messages(connections=wanted):
            msg = reader.deserialize(raw, connection.msgtype)
            if connection.topic == topics.instruction:
                instructions.append((int(log_time), msg.data))
                continue
            stream = streams[connection.topic]
            if stream.startswith("camera:"):
                samples[stream].append((_stamp(msg, log_time), msg))  # decoded when used
                continue
            if not joint_names:
                if not len(getattr(msg, "name", [])):
                    raise ValueError(f"{bag}: {connection.topic} has no joint names; pass joint_names")
                joint_names = list(msg.name)
            samples[stream].append((_stamp(msg, log_time), positions(msg, joint_names)))
    for name, got in samples.items():
        if not got:
            raise ValueError(f"{bag}: no messages for {name}")
        got.sort(key=lambda s: s[0])
    start = max(got[0][0] for got in samples.values())
    end = max(got[-1][0] for got in samples.values())
    if not task:
        before = [text for t, text in instructions if t <= start] or [text for _, text in instructions[:1]]
        task = before[-1] if before else ""
    if not task:
        raise ValueError(f"{bag}: no instruction on {topics.instruction}; pass a task")
    aligner = FrameAligner({name: max_age_ns for name in samples})
    for name, got in samples.items():
        aligner.streams[name].horizon_ns = 1 << 62  # whole bag in memory: keep everything
        for stamp, value in got:
            aligner.add(name, stamp, value)
    if writer is None:
        first = {name.split(":", 1)[1]: _rgb(aligner.streams[name].at(end)[1]) for name in samples
                 if name.startswith("camera:")}
        spec = DatasetSpec(fps=fps, joint_names=tuple(joint_names), robot_type=robot_type,
                           cameras={n: img.shape[:2] for n, img in first.items()})
        writer = DatasetWriter(writer_root, spec)
    episode = writer.start_episode(task)
    tick = start
    while tick <= end:
        frame = aligner.sample(tick)
        if frame.kept:
            images = {k.split(":", 1)[1]: _rgb(v) for k, v in frame.values.items() if k.startswith("camera:")}
            episode.add_frame(frame.values["state"], frame.values["action"], images)
        tick += NS // fps
    if len(episode) == 0:
        writer.discard_episode()
        return writer, ImportResult(str(bag), None, 0, dict(aligner.drops), task)
    row = writer.save_episode()
    return writer, ImportResult(str(bag), row["episode_index"], row["length"], dict(aligner.drops), task)


def _rgb(msg) -> np.ndarray:
    return compressed_to_rgb(msg) if is_compressed(msg) else np.ascontiguousarray(raw_to_rgb(msg))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import rosbag2 bags (MCAP, sqlite3) into a LeRobot v3.0 "
                                                 "dataset, one episode per bag.")
    parser.add_argument("output", type=Path, help="dataset directory (created or continued)")
    parser.add_argument("bags", nargs="+", type=Path, help="bag directories (or .mcap files)")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--max-age", type=float, default=0.25, help="s; older inputs drop the frame")
    parser.add_argument("--camera", action="append", default=[], metavar="TOPIC=NAME", help="repeatable")
    parser.add_argument("--state", default="/joint_states")
    parser.add_argument("--action", default="/joint_command")
    parser.add_argument("--instruction", default="/instruction")
    parser.add_argument("--task", default="", help="task of every episode (instead of the instruction topic)")
    parser.add_argument("--joint-names", default="", help="comma-separated; default: the bag's joint states")
    parser.add_argument("--robot-type", default="unknown")
    args = parser.parse_args(argv)
    cameras = dict(item.split("=", 1) for item in args.camera)
    topics = TopicMap(cameras=cameras, state=args.state, action=args.action, instruction=args.instruction,
                      joint_names=[n for n in args.joint_names.split(",") if n])
    writer = None
    for bag in args.bags:
        try:
            writer, result = import_bag(bag, args.output, topics, args.fps, args.max_age, args.task,
                                        args.robot_type, writer)
        except (ValueError, ImageError) as exc:
            print(f"{bag}: skipped: {exc}", file=sys.stderr)
            continue
        print(f"{bag}: episode {result.episode_index}, {result.frames} frames, dropped {result.dropped}, "
              f"task {result.task!r}")
    return 0 if writer is not None else 1


if __name__ == "__main__":
    sys.exit(main())
