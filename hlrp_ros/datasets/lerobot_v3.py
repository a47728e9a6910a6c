"""LeRobot dataset format v3.0, written and read directly (pyarrow for the tables, PyAV for the videos).

Layout under the dataset root (the one LeRobot's ``LeRobotDataset(repo_id, root=...)`` loads)::

    meta/info.json                                    codebase_version "v3.0", fps, features, totals
    meta/stats.json                                   min/max/mean/std/count per feature
    meta/tasks.parquet                                task string (pandas index) -> task_index
    meta/episodes/chunk-CCC/file-FFF.parquet          one row per episode: length, tasks, index range,
                                                      data/video file and time range, per-episode stats
    data/chunk-CCC/file-FFF.parquet                   one row per frame
    videos/<camera key>/chunk-CCC/file-FFF.mp4        one video per camera

Each saved episode gets its own data, video and episodes file (file index = episode index modulo
``chunks_size``), which LeRobot reads like any multi-file v3.0 dataset. Crash safety: every file is
written under a temporary name and renamed into place; ``meta/info.json`` is renamed last and is the
commit point. Opening a dataset again removes whatever an interrupted save left beyond the episodes
``info.json`` counts, and rewrites the tasks and stats from the committed episodes, so after a kill at
any instant the dataset holds exactly the episodes whose save had completed.

Units: the state and action vectors are stored as given (this package's nodes use radians for
revolute joints and metres for prismatic ones, as ROS does); each feature's ``unit`` field says so.
LeRobot's own robot drivers (SO-100/101, Koch) record degrees or percentages: a policy trained on one
convention must not be run on the other without converting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH, STATS_PATH, TASKS_PATH = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
STATE, ACTION = "observation.state", "action"
IMAGE_PREFIX = "observation.images."
PARTIAL = ".partial"
# Frames per video sampled for the image statistics of one episode.
IMAGE_STATS_FRAMES = 50


class DatasetError(RuntimeError):
    """A dataset that is not a consistent LeRobot v3.0 dataset, or a frame that does not fit it."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset records.

    Attributes:
        fps: Frames per second of the recording clock (LeRobot: ``info.fps``).
        joint_names: Names of the state and action dimensions, in order.
        cameras: Camera name -> (height, width) of its frames; stored as ``observation.images.<name>``.
        robot_type: Free text (LeRobot: ``info.robot_type``).
        unit: Unit of state and action values ("rad" for revolute joints, as ROS JointState uses).
        action_names: Names of the action dimensions when they differ from ``joint_names``.
        codec: PyAV encoder of the videos (libx264 decodes everywhere; libsvtav1 is LeRobot's default).
        pix_fmt: Pixel format of the videos.
        crf: Constant rate factor of the encoder (lower: closer to the recorded pixels).
        gop: Frames between two key frames (small: fast random access when training).
    """

    fps: int
    joint_names: tuple[str, ...]
    cameras: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    robot_type: str = "unknown"
    unit: str = "rad"
    action_names: tuple[str, ...] | None = None
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    crf: int = 18
    gop: int = 2

    def __post_init__(self) -> None:
        if int(self.fps) != self.fps or self.fps <= 0:
            raise ValueError(f"fps must be a positive integer (LeRobot stores an int), got {self.fps}")
        if not self.joint_names:
            raise ValueError("joint_names must not be empty")
        for name, (height, width) in self.cameras.items():
            if height % 2 or width % 2:
                raise ValueError(f"camera {name}: {self.pix_fmt} video needs even sizes, got {height}x{width}")

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(self.action_names or self.joint_names)

    def features(self) -> dict[str, dict]:
        """``info.json`` features: cameras (video), state, action and LeRobot's bookkeeping columns."""
        features: dict[str, dict] = {}
        for name, (height, width) in self.cameras.items():
            features[IMAGE_PREFIX + name] = {
                "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": height, "video.width": width, "video.codec": _codec_name(self.codec),
                         "video.pix_fmt": self.pix_fmt, "video.is_depth_map": False, "video.fps": int(self.fps),
                         "video.channels": 3, "has_audio": False}}
        features[STATE] = {"dtype": "float32", "shape": [len(self.joint_names)], "names": list(self.joint_names),
                           "unit": self.unit}
        features[ACTION] = {"dtype": "float32", "shape": [len(self.actions)], "names": list(self.actions),
                            "unit": self.unit}
        for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                            ("index", "int64"), ("task_index", "int64")):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        return features

    @classmethod
    def from_info(cls, info: Mapping) -> DatasetSpec:
        """The spec of an existing dataset (its ``info.json``)."""
        features = info["features"]
        cameras, codec, pix_fmt = {}, "libx264", "yuv420p"
        for key, feature in features.items():
            if feature["dtype"] == "video" and key.startswith(IMAGE_PREFIX):
                cameras[key[len(IMAGE_PREFIX):]] = (int(feature["shape"][0]), int(feature["shape"][1]))
                video = feature.get("info", {})
                codec = {"h264": "libx264", "av1": "libsvtav1"}.get(video.get("video.codec"), codec)
                pix_fmt = video.get("video.pix_fmt", pix_fmt)
        return cls(fps=int(info["fps"]), joint_names=tuple(features[STATE]["names"]), cameras=cameras,
                   robot_type=info.get("robot_type") or "unknown", unit=features[STATE].get("unit", "rad"),
                   action_names=tuple(features[ACTION]["names"]), codec=codec, pix_fmt=pix_fmt)


def _codec_name(encoder: str) -> str:
    import av

    return av.codec.Codec(encoder, "w").name if encoder.startswith("lib") else encoder


def chunk_file(episode_index: int) -> dict[str, int]:
    return {"chunk_index": episode_index // CHUNKS_SIZE, "file_index": episode_index % CHUNKS_SIZE}


def _replace_atomically(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, then rename onto ``path`` (readers see the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL + path.suffix)
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_json(path: Path, data: dict) -> None:
    _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=4) + "\n"))


def _write_table(path: Path, table) -> None:
    import pyarrow.parquet as pq

    _replace_atomically(path, lambda tmp: pq.write_table(table, tmp))


def _tasks_table(tasks: Sequence[str]):
    """``meta/tasks.parquet`` as pandas writes it: the task string is the (named) index, as LeRobot reads it."""
    import pyarrow as pa

    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "creator": {"library": "pyarrow"},
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "pandas_version": "2.2.3"}
    schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    return pa.table({"task_index": list(range(len(tasks))), "task": list(tasks)}, schema=schema)


def feature_stats(values: np.ndarray, axis: tuple[int, ...] = (0,)) -> dict[str, np.ndarray]:
    """min/max/mean/std/count of ``values`` over ``axis`` (float64)."""
    values = np.asarray(values, dtype=np.float64)
    count = int(np.prod([values.shape[a] for a in axis]))
    return {"min": values.min(axis=axis), "max": values.max(axis=axis), "mean": values.mean(axis=axis),
            "std": values.std(axis=axis), "count": np.array([count])}


def aggregate_stats(per_episode: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict]:
    """Dataset statistics from per-episode ones: count-weighted means, pooled variances."""
    out: dict[str, dict] = {}
    for key in per_episode[0] if per_episode else ():
        parts = [ep[key] for ep in per_episode]
        counts = np.array([float(p["count"][0]) for p in parts])
        total = counts.sum()
        weights = counts / total
        shape = (-1,) + (1,) * np.asarray(parts[0]["mean"]).ndim
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
        mean = (weights.reshape(shape) * means).sum(0)
        second = np.stack([np.asarray(p["std"], dtype=np.float64) ** 2 for p in parts]) + (means - mean) ** 2
        out[key] = {"min": np.min([p["min"] for p in parts], axis=0), "max": np.max([p["max"] for p in parts], axis=0),
                    "mean": mean, "std": np.sqrt((weights.reshape(shape) * second).sum(0)),
                    "count": np.array([int(total)])}
    return out


def _jsonable(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    return {key: {k: np.asarray(v).tolist() for k, v in s.items()} for key, s in stats.items()}


class VideoEncoder:
    """One camera's frames, encoded as they come into ``path`` (PyAV); pts = frame index at 1/fps."""

    def __init__(self, path: Path, spec: DatasetSpec, height: int, width: int) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.frames = path, 0
        self._container = av.open(str(path), mode="w", format="mp4")
        self._stream = self._container.add_stream(spec.codec, rate=int(spec.fps))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, spec.pix_fmt
        self._stream.codec_context.time_base = Fraction(1, int(spec.fps))
        options = {"crf": str(spec.crf), "g": str(spec.gop)}
        if spec.codec == "libx264":
            # no look-ahead: each frame is on disk (not in the encoder) soon after it is recorded
            options.update(preset="veryfast", tune="zerolatency")
        self._stream.options = options
        self._time_base = Fraction(1, int(spec.fps))
        self._shape = (height, width, 3)

    def add(self, rgb: np.ndarray) -> None:
        import av

        if rgb.shape != self._shape or rgb.dtype != np.uint8:
            raise DatasetError(f"frame of shape {rgb.shape} {rgb.dtype} for a {self._shape} uint8 video")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = self.frames, self._time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # a broken encoder: the file is deleted anyway
            pass
        self.path.unlink(missing_ok=True)


class Episode:
    """Frames of the episode being recorded (videos are encoded as frames arrive)."""

    def __init__(self, writer: DatasetWriter, index: int, task: str) -> None:
        self.writer, self.index, self.task = writer, index, task
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.timestamps: list[float] = []
        self.image_samples: dict[str, list[np.ndarray]] = {name: [] for name in writer.spec.cameras}
        self.videos = {name: VideoEncoder(writer._video_path(index, name, partial=True), writer.spec, h, w)
                       for name, (h, w) in writer.spec.cameras.items()}

    def __len__(self) -> int:
        return len(self.states)

    def add_frame(self, state: Sequence[float], action: Sequence[float],
                  images: Mapping[str, np.ndarray] | None = None) -> None:
        """One frame; its timestamp is ``frame_index / fps`` (the recording clock)."""
        spec = self.writer.spec
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if state.shape != (len(spec.joint_names),) or action.shape != (len(spec.actions),):
            raise DatasetError(f"state {state.shape} / action {action.shape} for {len(spec.joint_names)} joints")
        if not (np.isfinite(state).all() and np.isfinite(action).all()):
            raise DatasetError("state or action is not finite")
        images = images or {}
        if set(images) != set(spec.cameras):
            raise DatasetError(f"images for {sorted(images)}, the dataset records {sorted(spec.cameras)}")
        for name, rgb in images.items():
            self.videos[name].add(rgb)
            samples = self.image_samples[name]
            if len(self.states) % max(1, spec.fps // 5) == 0 and len(samples) < IMAGE_STATS_FRAMES:
                samples.append(rgb[::4, ::4])  # statistics from a strided subsample
        self.timestamps.append(len(self.states) / spec.fps)
        self.states.append(state)
        self.actions.append(action)

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        stats = {STATE: feature_stats(np.stack(self.states)), ACTION: feature_stats(np.stack(self.actions))}
        for name, samples in self.image_samples.items():
            pixels = np.stack(samples).astype(np.float64) / 255.0  # (n, h, w, 3) -> stats (3, 1, 1)
            s = feature_stats(pixels, axis=(0, 1, 2))
            stats[IMAGE_PREFIX + name] = {k: (v.reshape(3, 1, 1) if k != "count" else np.array([len(self)]))
                                          for k, v in s.items()}
        n = len(self)
        frame_index = np.arange(n)
        for key, values in (("timestamp", np.asarray(self.timestamps)), ("frame_index", frame_index),
                            ("episode_index", np.full(n, self.index)),
                            ("index", frame_index + self.writer.total_frames),
                            ("task_index", np.full(n, self.writer.task_index(self.task)))):
            stats[key] = feature_stats(values.reshape(-1, 1))
        return stats


class DatasetWriter:
    """Writes episodes into a LeRobot v3.0 dataset at ``root``, creating it or continuing an existing one.

    Args:
        root: Dataset directory.
        spec: What it records; must equal an existing dataset's (fps, joints, cameras).
    """

    def __init__(self, root: str | Path, spec: DatasetSpec) -> None:
        self.root, self.spec = Path(root), spec
        self.episode: Episode | None = None
        self.tasks: list[str] = []
        self._episodes: list[dict] = []
        self.recovered: list[str] = []
        if (self.root / INFO_PATH).exists():
            self._open_existing()
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_uncommitted(0)
            self._commit_meta()

    @property
    def total_episodes(self) -> int:
        return len(self._episodes)

    @property
    def total_frames(self) -> int:
        return int(self._episodes[-1]["dataset_to_index"]) if self._episodes else 0

    def task_index(self, task: str) -> int:
        if task not in self.tasks:
            self.tasks.append(task)
        return self.tasks.index(task)

    def start_episode(self, task: str) -> Episode:
        """Begin an episode recorded under ``task`` (the instruction)."""
        if self.episode is not None:
            raise DatasetError(f"episode {self.episode.index} is still being recorded; save or discard it first")
        if not task:
            raise DatasetError("an episode needs a task (the instruction)")
        self.episode = Episode(self, self.total_episodes, task)
        return self.episode

    def discard_episode(self) -> int:
        """Forget the episode being recorded; its number of frames."""
        episode, self.episode = self._require_episode(), None
        for video in episode.videos.values():
            video.abort()
        return len(episode)

    def save_episode(self) -> dict:
        """Write the episode being recorded and commit it; its episodes-table row."""
        episode = self._require_episode()
        if len(episode) == 0:
            raise DatasetError("the episode has no frames; discard it instead")
        index, n, fps = episode.index, len(episode), self.spec.fps
        files = chunk_file(index)
        task_index = self.task_index(episode.task)
        stats = episode.stats()
        for name, video in episode.videos.items():
            video.close()
            if video.frames != n:
                raise DatasetError(f"camera {name}: {video.frames} video frames for {n} frames")
            os.replace(video.path, self._video_path(index, name))
        start = self.total_frames
        _write_table(self.root / DATA_PATH.format(**files), self._data_table(episode, start, task_index))
        row = {"episode_index": index, "tasks": [episode.task], "length": n,
               "data/chunk_index": files["chunk_index"], "data/file_index": files["file_index"],
               "dataset_from_index": start, "dataset_to_index": start + n}
        for name in self.spec.cameras:
            key = IMAGE_PREFIX + name
            row.update({f"videos/{key}/chunk_index": files["chunk_index"], f"videos/{key}/file_index":
                        files["file_index"], f"videos/{key}/from_timestamp": 0.0,
                        f"videos/{key}/to_timestamp": n / fps})
        row.update({"meta/episodes/chunk_index": files["chunk_index"], "meta/episodes/file_index": files["file_index"]})
        for key, s in stats.items():
            for stat, value in s.items():
                row[f"stats/{key}/{stat}"] = np.asarray(value, dtype=np.float64).reshape(-1).tolist()
        _write_table(self.root / TASKS_PATH, _tasks_table(self.tasks))
        _write_table(self.root / EPISODES_PATH.format(**files), self._episode_table(row))
        self._episodes.append(row)
        self.episode = None
        self._commit_meta()
        return row

    def close(self) -> None:
        """Discard an unsaved episode (nothing of it stays on disk)."""
        if self.episode is not None:
            self.discard_episode()

    # --- files ---

    def _require_episode(self) -> Episode:
        if self.episode is None:
            raise DatasetError("no episode is being recorded")
        return self.episode

    def _video_path(self, index: int, camera: str, partial: bool = False) -> Path:
        path = self.root / VIDEO_PATH.format(video_key=IMAGE_PREFIX + camera, **chunk_file(index))
        return path.with_name(path.stem + PARTIAL + path.suffix) if partial else path

    def _data_table(self, episode: Episode, start: int, task_index: int):
        import pyarrow as pa

        n = len(episode)
        state_type = pa.list_(pa.float32(), len(self.spec.joint_names))
        action_type = pa.list_(pa.float32(), len(self.spec.actions))
        return pa.table({
            STATE: pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(episode.states)),
                                                     type=state_type),
            ACTION: pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(episode.actions)),
                                                      type=action_type),
            "timestamp": pa.array(np.asarray(episode.timestamps, dtype=np.float32)),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, episode.index, dtype=np.int64)),
            "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
        })

    @staticmethod
    def _episode_table(row: dict):
        import pyarrow as pa

        return pa.Table.from_pylist([row])

    def _info(self) -> dict:
        n = self.total_episodes
        return {"codebase_version": CODEBASE_VERSION, "robot_type": self.spec.robot_type,
                "total_episodes": n, "total_frames": self.total_frames, "total_tasks": len(self.tasks),
                "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                "fps": int(self.spec.fps), "splits": {"train": f"0:{n}"} if n else {},
                "data_path": DATA_PATH, "video_path": VIDEO_PATH if self.spec.cameras else None,
                "features": self.spec.features()}

    def _commit_meta(self) -> None:
        """stats.json, then info.json (the commit point)."""
        stats = aggregate_stats([_row_stats(row, self.spec) for row in self._episodes])
        _write_json(self.root / STATS_PATH, _jsonable(stats))
        _write_json(self.root / INFO_PATH, self._info())

    def _open_existing(self) -> None:
        info = json.loads((self.root / INFO_PATH).read_text())
        if info.get("codebase_version") != CODEBASE_VERSION:
            raise DatasetError(f"{self.root}: format {info.get('codebase_version')}, this writer writes "
                               f"{CODEBASE_VERSION}")
        existing = DatasetSpec.from_info(info)
        mine = (self.spec.fps, self.spec.joint_names, dict(self.spec.cameras), self.spec.actions)
        theirs = (existing.fps, existing.joint_names, dict(existing.cameras), existing.actions)
        if mine != theirs:
            raise DatasetError(f"{self.root} records fps/joints/cameras/actions {theirs}, not {mine}")
        committed = int(info["total_episodes"])
        self._episodes = [read_episode_row(self.root, i) for i in range(committed)]
        for row in self._episodes:
            for task in row["tasks"]:
                self.task_index(task)
        self._remove_uncommitted(committed)
        _write_table(self.root / TASKS_PATH, _tasks_table(self.tasks))
        self._commit_meta()

    def _remove_uncommitted(self, committed: int) -> None:
        """Delete partial files and the files of episodes at or beyond ``committed`` (an interrupted save)."""
        for path in sorted(self.root.rglob("file-*")) + sorted(self.root.rglob(f"*{PARTIAL}*")):
            if not path.exists():
                continue
            if PARTIAL not in path.name:
                number = int(path.name.split(".")[0].split("-")[1])
                chunk = int(path.parent.name.split("-")[1]) if path.parent.name.startswith("chunk-") else 0
                if chunk * CHUNKS_SIZE + number < committed:
                    continue
            path.unlink()
            self.recovered.append(str(path.relative_to(self.root)))


def _row_stats(row: Mapping, spec: DatasetSpec) -> dict[str, dict[str, np.ndarray]]:
    shapes = {key: tuple(f["shape"]) for key, f in spec.features().items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for column, value in row.items():
        if not column.startswith("stats/"):
            continue
        key, stat = column[len("stats/"):].rsplit("/", 1)
        shape = (1,) if stat == "count" else ((3, 1, 1) if key.startswith(IMAGE_PREFIX) else shapes[key][-1:])
        out.setdefault(key, {})[stat] = np.asarray(value, dtype=np.float64).reshape(shape)
    return out


def read_episode_row(root: Path, index: int) -> dict:
    """The episodes-table row of episode ``index`` (from its own file, or the file that holds it)."""
    import pyarrow.parquet as pq

    path = Path(root) / EPISODES_PATH.format(**chunk_file(index))
    if path.exists():
        rows = [r for r in pq.read_table(path).to_pylist() if r["episode_index"] == index]
        if rows:
            return rows[0]
    for other in sorted((Path(root) / "meta" / "episodes").glob("*/*.parquet")):
        rows = [r for r in pq.read_table(other).to_pylist() if r["episode_index"] == index]
        if rows:
            return rows[0]
    raise DatasetError(f"{root}: no episodes-table row for episode {index}")
