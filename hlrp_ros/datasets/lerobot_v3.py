"""LeRobot dataset format v3.0, written and read directly (pyarrow for the tables, PyAV for the videos).

Layout under the dataset root (the one LeRobot's ``LeRobotDataset(repo_id, root=...)`` loads)::

    meta/info.json                                    codebase_version "v3.0", fps, features, totals
    meta/stats.json                                   min/max/mean/std/count per feature
    meta/tasks.parquet                                task string (pandas index) -> task_index
    meta/episodes/chunk-CCC/file-FFF.parquet          one row per episode: length, tasks, index range,
                                                      data/video file and time range, per-episode stats
    data/chunk-CCC/file-FFF.parquet                   one row per frame
    videos/<camera key>/chunk-CCC/file-FFF.mp4        one video per camera (video storage)

Cameras are stored as LeRobot stores them: as videos (``dtype "video"``, the default: small, lossy) or,
with ``DatasetSpec(image_storage="image")``, as PNG images inside the data parquet (``dtype "image"``: a
struct column ``{bytes, path}`` as Hugging Face ``datasets.Image`` writes it; lossless). Other per-frame
features (``DatasetSpec.extras``: any shape, float32 or int64) are plain columns, nested fixed-size lists
for a multi-dimensional shape.

Files: by default each saved episode gets its own data, video and episodes file (the recorder's mode:
every episode is on disk when its save returns). ``DatasetWriter(..., episodes_per_file=N)`` packs ``N``
episodes per data and episodes file, as LeRobot itself does: saved episodes are kept in memory until the
file is full (or ``flush()`` / ``close()``) and are then written and committed together. Files are
numbered in the order they are written (``file index = file number modulo chunks_size``); LeRobot reads
either layout like any multi-file v3.0 dataset.

Crash safety: every file is written under a temporary name and renamed into place; ``meta/info.json``
is renamed last and is the commit point. Opening a dataset again removes every file no committed
episode refers to (what an interrupted save left), and rewrites the tasks and stats from the committed
episodes, so after a kill at any instant the dataset holds exactly the episodes whose commit had
completed: with one episode per file, every episode whose save had returned; with packing, every
episode of a file whose write had completed.

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
#: LeRobot's bookkeeping columns, in every data file.
INDEX_FEATURES = (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64"))
#: How camera frames are stored: LeRobot's "video" (mp4 per camera) or "image" (PNG in the data parquet).
IMAGE_STORAGES = ("video", "image")
PARTIAL = ".partial"
# Frames per video sampled for the image statistics of one episode.
IMAGE_STATS_FRAMES = 50
#: Features every dataset has (state, action, the bookkeeping columns): not cameras, not extras.
STANDARD_FEATURES = frozenset({STATE, ACTION, *(name for name, _ in INDEX_FEATURES)})


class DatasetError(RuntimeError):
    """A dataset that is not a consistent LeRobot v3.0 dataset, or a frame that does not fit it."""


@dataclass(frozen=True)
class FrameFeature:
    """A per-frame feature besides the state, the action and the cameras (an ``info.json`` feature).

    Attributes:
        dtype: "float32" or "int64".
        shape: Shape of one frame's value; ``(1,)`` for a scalar (a plain column, like ``frame_index``).
        names: LeRobot's ``names``: one per element of a vector, or one per axis of a larger shape.
        unit: Unit of the values (stored as the feature's ``unit`` field), if any.
    """

    dtype: str
    shape: tuple[int, ...]
    names: tuple[str, ...] | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "int64"):
            raise ValueError(f"extra features are float32 or int64, not {self.dtype}")
        if not self.shape or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"bad shape {self.shape}")

    def info(self) -> dict:
        feature = {"dtype": self.dtype, "shape": [int(n) for n in self.shape],
                   "names": list(self.names) if self.names else None}
        if self.unit:
            feature["unit"] = self.unit
        return feature

    @classmethod
    def from_info(cls, feature: Mapping) -> FrameFeature:
        names = feature.get("names")
        return cls(dtype=feature["dtype"], shape=tuple(int(n) for n in feature["shape"]),
                   names=tuple(names) if isinstance(names, list) else None, unit=feature.get("unit"))


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
        image_storage: "video" (mp4 per camera) or "image" (lossless PNG frames in the data parquet).
        extras: Feature key -> ``FrameFeature`` of further per-frame values (``Episode.add_frame(extras=)``).
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
    image_storage: str = "video"
    extras: Mapping[str, FrameFeature] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.fps) != self.fps or self.fps <= 0:
            raise ValueError(f"fps must be a positive integer (LeRobot stores an int), got {self.fps}")
        if not self.joint_names:
            raise ValueError("joint_names must not be empty")
        if self.image_storage not in IMAGE_STORAGES:
            raise ValueError(f"image_storage is one of {IMAGE_STORAGES}, not {self.image_storage!r}")
        for name, (height, width) in self.cameras.items():
            if self.image_storage == "video" and (height % 2 or width % 2):
                raise ValueError(f"camera {name}: {self.pix_fmt} video needs even sizes, got {height}x{width}")
        for key in self.extras:
            if key in STANDARD_FEATURES or key.startswith(IMAGE_PREFIX):
                raise ValueError(f"extra feature {key!r} would replace a standard feature")

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(self.action_names or self.joint_names)

    def features(self) -> dict[str, dict]:
        """``info.json`` features: cameras, state, action, the extras and LeRobot's bookkeeping columns."""
        features: dict[str, dict] = {}
        for name, (height, width) in self.cameras.items():
            if self.image_storage == "image":
                features[IMAGE_PREFIX + name] = {"dtype": "image", "shape": [height, width, 3],
                                                 "names": ["height", "width", "channels"]}
                continue
            features[IMAGE_PREFIX + name] = {
                "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": height, "video.width": width, "video.codec": _codec_name(self.codec),
                         "video.pix_fmt": self.pix_fmt, "video.is_depth_map": False, "video.fps": int(self.fps),
                         "video.channels": 3, "has_audio": False}}
        features[STATE] = {"dtype": "float32", "shape": [len(self.joint_names)], "names": list(self.joint_names),
                           "unit": self.unit}
        features[ACTION] = {"dtype": "float32", "shape": [len(self.actions)], "names": list(self.actions),
                            "unit": self.unit}
        for key, extra in self.extras.items():
            features[key] = extra.info()
        for name, dtype in INDEX_FEATURES:
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        return features

    @classmethod
    def from_info(cls, info: Mapping) -> DatasetSpec:
        """The spec of an existing dataset (its ``info.json``)."""
        features = info["features"]
        cameras, codec, pix_fmt, storage, extras = {}, "libx264", "yuv420p", "video", {}
        for key, feature in features.items():
            if feature["dtype"] in IMAGE_STORAGES and key.startswith(IMAGE_PREFIX):
                cameras[key[len(IMAGE_PREFIX):]] = (int(feature["shape"][0]), int(feature["shape"][1]))
                storage = feature["dtype"]
                video = feature.get("info", {})
                codec = {"h264": "libx264", "av1": "libsvtav1"}.get(video.get("video.codec"), codec)
                pix_fmt = video.get("video.pix_fmt", pix_fmt)
            elif key not in STANDARD_FEATURES:
                extras[key] = FrameFeature.from_info(feature)
        return cls(fps=int(info["fps"]), joint_names=tuple(features[STATE]["names"]), cameras=cameras,
                   robot_type=info.get("robot_type") or "unknown", unit=features[STATE].get("unit", "rad"),
                   action_names=tuple(features[ACTION]["names"]), codec=codec, pix_fmt=pix_fmt,
                   image_storage=storage, extras=extras)


def _codec_name(encoder: str) -> str:
    import av

    return av.codec.Codec(encoder, "w").name if encoder.startswith("lib") else encoder


def chunk_file(file_number: int) -> dict[str, int]:
    """Chunk and file index of the ``file_number``-th file of a kind (data, episodes, a camera's videos)."""
    return {"chunk_index": file_number // CHUNKS_SIZE, "file_index": file_number % CHUNKS_SIZE}


def file_number(chunk_index: int, file_index: int) -> int:
    return int(chunk_index) * CHUNKS_SIZE + int(file_index)


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, 3) uint8 RGB frame (what LeRobot's image features hold)."""
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR
    if not ok:
        raise DatasetError("PNG encoding failed")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PNG (or any image OpenCV reads)."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError("an image feature holds bytes that are not an image")
    return np.ascontiguousarray(bgr[..., ::-1])


def arrow_column(values: np.ndarray, shape: Sequence[int], dtype: str):
    """``values`` (n, *shape) as a pyarrow column: plain for shape (1,), else nested fixed-size lists."""
    import pyarrow as pa

    column = pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1))
    if tuple(shape) != (1,):
        for size in reversed(tuple(shape)):
            column = pa.FixedSizeListArray.from_arrays(column, int(size))
    return column


def column_values(column, shape: Sequence[int]) -> np.ndarray:
    """(n, *shape) numpy values of a (possibly chunked, possibly nested-list) pyarrow column."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if tuple(shape) != (1,):
        for _ in shape:
            column = column.flatten()
    values = column.to_numpy(zero_copy_only=False)
    return values.reshape((n,) if tuple(shape) == (1,) else (n, *shape))


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
    """Frames of the episode being recorded (videos are encoded, PNG images compressed, as frames arrive)."""

    def __init__(self, writer: DatasetWriter, index: int, task: str) -> None:
        self.writer, self.index, self.task = writer, index, task
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.timestamps: list[float] = []
        self.extras: dict[str, list[np.ndarray]] = {key: [] for key in writer.spec.extras}
        self.image_samples: dict[str, list[np.ndarray]] = {name: [] for name in writer.spec.cameras}
        self.pngs: dict[str, list[bytes]] = {}
        self.videos: dict[str, VideoEncoder] = {}
        if writer.spec.image_storage == "image":
            self.pngs = {name: [] for name in writer.spec.cameras}
        else:
            self.videos = {name: VideoEncoder(writer._video_path(writer.next_file, name, partial=True), writer.spec,
                                              h, w) for name, (h, w) in writer.spec.cameras.items()}

    def __len__(self) -> int:
        return len(self.states)

    def add_frame(self, state: Sequence[float], action: Sequence[float],
                  images: Mapping[str, np.ndarray] | None = None,
                  extras: Mapping[str, np.ndarray] | None = None) -> None:
        """One frame; its timestamp is ``frame_index / fps`` (the recording clock).

        ``extras``: a value for each of the spec's extra features, of its shape.
        """
        spec = self.writer.spec
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if state.shape != (len(spec.joint_names),) or action.shape != (len(spec.actions),):
            raise DatasetError(f"state {state.shape} / action {action.shape} for {len(spec.joint_names)} joints")
        if not (np.isfinite(state).all() and np.isfinite(action).all()):
            raise DatasetError("state or action is not finite")
        extras = self._checked_extras(extras or {})
        images = images or {}
        if set(images) != set(spec.cameras):
            raise DatasetError(f"images for {sorted(images)}, the dataset records {sorted(spec.cameras)}")
        for name, rgb in images.items():
            if name in self.pngs:
                if rgb.shape != (*spec.cameras[name], 3) or rgb.dtype != np.uint8:
                    raise DatasetError(f"camera {name}: frame of shape {rgb.shape} {rgb.dtype}, the dataset "
                                       f"records {spec.cameras[name]} uint8 RGB")
                self.pngs[name].append(encode_png(rgb))
            else:
                self.videos[name].add(rgb)
            samples = self.image_samples[name]
            if len(self.states) % max(1, spec.fps // 5) == 0 and len(samples) < IMAGE_STATS_FRAMES:
                samples.append(rgb[::4, ::4])  # statistics from a strided subsample
        for key, value in extras.items():
            self.extras[key].append(value)
        self.timestamps.append(len(self.states) / spec.fps)
        self.states.append(state)
        self.actions.append(action)

    def _checked_extras(self, extras: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.writer.spec
        if set(extras) != set(spec.extras):
            raise DatasetError(f"extra features {sorted(extras)}, the dataset records {sorted(spec.extras)}")
        checked = {}
        for key, feature in spec.extras.items():
            value = np.asarray(extras[key])
            if value.size != int(np.prod(feature.shape)):
                raise DatasetError(f"{key}: a value of shape {value.shape}, the feature's shape is {feature.shape}")
            if feature.dtype == "int64" and not np.array_equal(value, np.round(value)):
                raise DatasetError(f"{key}: integer feature given {value}")
            value = value.astype(feature.dtype).reshape(feature.shape)
            if not np.isfinite(value).all():
                raise DatasetError(f"{key} is not finite")
            checked[key] = value
        return checked

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        stats = {STATE: feature_stats(np.stack(self.states)), ACTION: feature_stats(np.stack(self.actions))}
        for key, values in self.extras.items():
            stats[key] = feature_stats(np.stack(values).reshape(len(self), *self.writer.spec.extras[key].shape))
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
        spec: What it records; must equal an existing dataset's (fps, joints, cameras, storage, extras).
        episodes_per_file: Episodes packed into one data and episodes file (see the module docstring):
            1 (default) commits every episode when it is saved; more keeps saved episodes in memory until
            their file is full or ``flush()`` / ``close()`` is called. Video storage packs no episodes (a
            discarded episode could not be taken out of a shared video).
    """

    def __init__(self, root: str | Path, spec: DatasetSpec, episodes_per_file: int = 1) -> None:
        if episodes_per_file < 1:
            raise ValueError(f"episodes_per_file must be at least 1, got {episodes_per_file}")
        if episodes_per_file > 1 and spec.cameras and spec.image_storage == "video":
            raise ValueError("episodes_per_file > 1 needs image_storage='image' (or no camera): a discarded "
                             "episode cannot be taken out of a video shared with other episodes")
        self.root, self.spec, self.episodes_per_file = Path(root), spec, int(episodes_per_file)
        self.episode: Episode | None = None
        self.tasks: list[str] = []
        self._episodes: list[dict] = []  # committed
        self._pending: list[tuple[dict, object]] = []  # saved, not yet written: (episodes row, data table)
        self._stats: dict[str, dict] = {}  # of the committed episodes
        self.next_file = 0  # number of the next data / episodes / video file written
        self.recovered: list[str] = []
        if (self.root / INFO_PATH).exists():
            self._open_existing()
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_unreferenced()
            self._commit_meta()

    @property
    def total_episodes(self) -> int:
        """Saved episodes (committed ones and, when packing, those waiting for their file)."""
        return len(self._episodes) + len(self._pending)

    @property
    def committed_episodes(self) -> int:
        """Episodes on disk and counted by ``info.json`` (what survives a kill)."""
        return len(self._episodes)

    @property
    def total_frames(self) -> int:
        """Frames of the saved episodes."""
        last = self._pending[-1][0] if self._pending else (self._episodes[-1] if self._episodes else None)
        return int(last["dataset_to_index"]) if last else 0

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
        """Save the episode being recorded; its episodes-table row. It is committed now (one episode per
        file) or with the other episodes of its file (packing)."""
        episode = self._require_episode()
        if len(episode) == 0:
            raise DatasetError("the episode has no frames; discard it instead")
        index, n, fps = episode.index, len(episode), self.spec.fps
        files = chunk_file(self.next_file)
        task_index = self.task_index(episode.task)
        stats = episode.stats()
        for name, video in episode.videos.items():
            video.close()
            if video.frames != n:
                raise DatasetError(f"camera {name}: {video.frames} video frames for {n} frames")
            os.replace(video.path, self._video_path(self.next_file, name))
        start = self.total_frames
        row = {"episode_index": index, "tasks": [episode.task], "length": n,
               "data/chunk_index": files["chunk_index"], "data/file_index": files["file_index"],
               "dataset_from_index": start, "dataset_to_index": start + n}
        for name in episode.videos:
            key = IMAGE_PREFIX + name
            row.update({f"videos/{key}/chunk_index": files["chunk_index"], f"videos/{key}/file_index":
                        files["file_index"], f"videos/{key}/from_timestamp": 0.0,
                        f"videos/{key}/to_timestamp": n / fps})
        row.update({"meta/episodes/chunk_index": files["chunk_index"], "meta/episodes/file_index": files["file_index"]})
        for key, s in stats.items():
            for stat, value in s.items():
                row[f"stats/{key}/{stat}"] = np.asarray(value, dtype=np.float64).reshape(-1).tolist()
        self._pending.append((row, self._data_table(episode, start, task_index)))
        self.episode = None
        if len(self._pending) >= self.episodes_per_file:
            self.flush()
        return row

    def flush(self) -> None:
        """Write the saved episodes waiting for their file (packing) into it and commit them."""
        import pyarrow as pa

        if not self._pending:
            return
        files = chunk_file(self.next_file)
        rows = [row for row, _ in self._pending]
        _write_table(self.root / DATA_PATH.format(**files), pa.concat_tables([table for _, table in self._pending]))
        _write_table(self.root / TASKS_PATH, _tasks_table(self.tasks))
        _write_table(self.root / EPISODES_PATH.format(**files), pa.Table.from_pylist(rows))
        self._episodes += rows
        self._pending = []
        self.next_file += 1
        new = aggregate_stats([_row_stats(row, self.spec) for row in rows])
        self._stats = aggregate_stats([self._stats, new]) if self._stats else new
        self._commit_meta()

    def close(self) -> None:
        """Discard an unsaved episode (nothing of it stays on disk) and commit the saved ones."""
        if self.episode is not None:
            self.discard_episode()
        self.flush()

    # --- files ---

    def _require_episode(self) -> Episode:
        if self.episode is None:
            raise DatasetError("no episode is being recorded")
        return self.episode

    def _video_path(self, number: int, camera: str, partial: bool = False) -> Path:
        path = self.root / VIDEO_PATH.format(video_key=IMAGE_PREFIX + camera, **chunk_file(number))
        return path.with_name(path.stem + PARTIAL + path.suffix) if partial else path

    def _data_table(self, episode: Episode, start: int, task_index: int):
        import pyarrow as pa

        n = len(episode)
        columns = {}
        for name, pngs in episode.pngs.items():  # as datasets.Image stores an image: {bytes, path}
            columns[IMAGE_PREFIX + name] = pa.StructArray.from_arrays(
                [pa.array(pngs, type=pa.binary()), pa.array([None] * n, type=pa.string())], names=["bytes", "path"])
        columns[STATE] = arrow_column(np.stack(episode.states), (len(self.spec.joint_names),), "float32")
        columns[ACTION] = arrow_column(np.stack(episode.actions), (len(self.spec.actions),), "float32")
        for key, values in episode.extras.items():
            feature = self.spec.extras[key]
            columns[key] = arrow_column(np.stack(values), feature.shape, feature.dtype)
        columns.update({
            "timestamp": pa.array(np.asarray(episode.timestamps, dtype=np.float32)),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, episode.index, dtype=np.int64)),
            "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
        })
        return pa.table(columns)

    def _info(self) -> dict:
        n = self.committed_episodes
        videos = self.spec.cameras and self.spec.image_storage == "video"
        return {"codebase_version": CODEBASE_VERSION, "robot_type": self.spec.robot_type,
                "total_episodes": n, "total_frames": int(self._episodes[-1]["dataset_to_index"]) if n else 0,
                "total_tasks": len(self.tasks),
                "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                "fps": int(self.spec.fps), "splits": {"train": f"0:{n}"} if n else {},
                "data_path": DATA_PATH, "video_path": VIDEO_PATH if videos else None,
                "features": self.spec.features()}

    def _commit_meta(self) -> None:
        """stats.json, then info.json (the commit point)."""
        _write_json(self.root / STATS_PATH, _jsonable(self._stats))
        _write_json(self.root / INFO_PATH, self._info())

    def _open_existing(self) -> None:
        info = json.loads((self.root / INFO_PATH).read_text())
        if info.get("codebase_version") != CODEBASE_VERSION:
            raise DatasetError(f"{self.root}: format {info.get('codebase_version')}, this writer writes "
                               f"{CODEBASE_VERSION}")
        existing = DatasetSpec.from_info(info)
        mine = (self.spec.fps, self.spec.joint_names, dict(self.spec.cameras), self.spec.actions,
                self.spec.image_storage if self.spec.cameras else None, dict(self.spec.extras))
        theirs = (existing.fps, existing.joint_names, dict(existing.cameras), existing.actions,
                  existing.image_storage if existing.cameras else None, dict(existing.extras))
        if mine != theirs:
            raise DatasetError(f"{self.root} records fps/joints/cameras/actions/storage/extras {theirs}, not {mine}")
        self._episodes = committed_episode_rows(self.root, int(info["total_episodes"]))
        for row in self._episodes:
            for task in row["tasks"]:
                self.task_index(task)
        referenced = self._referenced_files()
        self.next_file = 1 + max((file_number(*numbers) for numbers in referenced.values()), default=-1)
        self._remove_unreferenced(set(referenced))
        _write_table(self.root / TASKS_PATH, _tasks_table(self.tasks))
        self._stats = aggregate_stats([_row_stats(row, self.spec) for row in self._episodes])
        self._commit_meta()

    def _referenced_files(self) -> dict[str, tuple[int, int]]:
        """Path (relative to the root) -> (chunk, file) index of every file a committed episode refers to."""
        files: dict[str, tuple[int, int]] = {}
        for row in self._episodes:
            numbers = {"data": (row["data/chunk_index"], row["data/file_index"]),
                       "episodes": (row["meta/episodes/chunk_index"], row["meta/episodes/file_index"])}
            files[DATA_PATH.format(chunk_index=numbers["data"][0], file_index=numbers["data"][1])] = numbers["data"]
            files[EPISODES_PATH.format(chunk_index=numbers["episodes"][0], file_index=numbers["episodes"][1])] = \
                numbers["episodes"]
            for name in self.spec.cameras if self.spec.image_storage == "video" else ():
                key = IMAGE_PREFIX + name
                video = (row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"])
                files[VIDEO_PATH.format(video_key=key, chunk_index=video[0], file_index=video[1])] = video
        return files

    def _remove_unreferenced(self, keep: set[str] = frozenset()) -> None:
        """Delete partial files and the data, episodes and video files no committed episode refers to
        (what an interrupted save left)."""
        managed = [path for folder in ("data", "meta/episodes", "videos") for path in (self.root / folder).rglob("file-*")]
        for path in sorted(managed) + sorted(self.root.rglob(f"*{PARTIAL}*")):
            if not path.exists():
                continue
            relative = str(path.relative_to(self.root))
            if PARTIAL not in path.name and relative in keep:
                continue
            path.unlink()
            self.recovered.append(relative)


def _row_stats(row: Mapping, spec: DatasetSpec) -> dict[str, dict[str, np.ndarray]]:
    shapes = {key: tuple(f["shape"]) for key, f in spec.features().items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for column, value in row.items():
        if not column.startswith("stats/"):
            continue
        key, stat = column[len("stats/"):].rsplit("/", 1)
        shape = (1,) if stat == "count" else ((3, 1, 1) if key.startswith(IMAGE_PREFIX) else shapes[key])
        out.setdefault(key, {})[stat] = np.asarray(value, dtype=np.float64).reshape(shape)
    return out


def committed_episode_rows(root: Path, committed: int) -> list[dict]:
    """The episodes-table rows of episodes ``0 .. committed - 1`` (those ``info.json`` counts), in order;
    rows an interrupted save left in files beyond them are left out."""
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((Path(root) / "meta" / "episodes").glob("*/*.parquet")):
        if PARTIAL not in path.name:
            rows += [r for r in pq.read_table(path).to_pylist() if r["episode_index"] < committed]
    rows.sort(key=lambda r: r["episode_index"])
    if [r["episode_index"] for r in rows] != list(range(committed)):
        raise DatasetError(f"{root}: info.json counts {committed} episodes, the episodes tables hold "
                           f"{sorted(r['episode_index'] for r in rows)[:10]}...")
    return rows
