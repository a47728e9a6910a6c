"""Reading a LeRobot v3.0 dataset from a local directory (ours or any other), without LeRobot.

Episodes may share data and video files (LeRobot packs many per file; so does our writer with
``episodes_per_file``) or have their own (our writer's default); either way an episode's rows are found
by ``episode_index`` and its video frames by the episode's ``from_timestamp``/``to_timestamp`` in the
camera's file. Cameras stored as images (``dtype "image"``) are PNG bytes in the data rows. Only the
episodes ``info.json`` counts are read (files an interrupted save left are ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from hlrp_ros.datasets.lerobot_v3 import (
    ACTION,
    CODEBASE_VERSION,
    IMAGE_STORAGES,
    INFO_PATH,
    PARTIAL,
    STANDARD_FEATURES,
    STATE,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    column_values,
    decode_png,
)


@dataclass
class EpisodeData:
    """One episode's frames.

    Attributes:
        index: Episode index.
        task: Its (first) task.
        states: (T, n_joints) float32.
        actions: (T, n_actions) float32.
        timestamps: (T,) seconds from the episode start.
        frame_index: (T,) int64.
        index_range: (dataset_from_index, dataset_to_index).
        extras: Further per-frame features (``DatasetReader.extra_keys``): key -> (T, *shape) array.
    """

    index: int
    task: str
    states: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray
    frame_index: np.ndarray
    index_range: tuple[int, int]
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class DatasetReader:
    """A LeRobot v3.0 dataset on disk.

    Args:
        root: The dataset directory (holding ``meta/info.json``).
    """

    def __init__(self, root: str | Path) -> None:
        import pyarrow.parquet as pq

        self.root = Path(root)
        info_path = self.root / INFO_PATH
        if not info_path.exists():
            raise DatasetError(f"{self.root}: no {INFO_PATH}; not a LeRobot dataset")
        self.info = json.loads(info_path.read_text())
        if self.info.get("codebase_version") != CODEBASE_VERSION:
            raise DatasetError(f"{self.root}: format {self.info.get('codebase_version')}, not {CODEBASE_VERSION} "
                               f"(convert older datasets with LeRobot's convert_dataset_v21_to_v30)")
        self.fps = int(self.info["fps"])
        self.features = self.info["features"]
        self.tasks = _tasks_by_index(pq.read_table(self.root / TASKS_PATH))
        rows = []
        committed = int(self.info["total_episodes"])
        for path in sorted((self.root / "meta" / "episodes").glob("*/*.parquet")):
            if PARTIAL in path.name:
                continue
            table = pq.read_table(path)
            keep = [c for c in table.column_names if not c.startswith("stats/")]
            rows += [r for r in table.select(keep).to_pylist() if r["episode_index"] < committed]
        self.episodes = sorted(rows, key=lambda r: r["episode_index"])
        stats_path = self.root / STATS_PATH
        self.stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}

    @property
    def camera_keys(self) -> list[str]:
        """Camera features, stored as videos or as images."""
        return [k for k, f in self.features.items() if f["dtype"] in IMAGE_STORAGES]

    @property
    def extra_keys(self) -> list[str]:
        """Per-frame features other than the cameras, state, action and LeRobot's bookkeeping columns."""
        return [k for k, f in self.features.items()
                if k not in STANDARD_FEATURES and f["dtype"] not in (*IMAGE_STORAGES, "string")]

    @property
    def joint_names(self) -> list[str]:
        return list(self.features[STATE]["names"] or [])

    @property
    def action_names(self) -> list[str]:
        return list(self.features[ACTION]["names"] or [])

    def __len__(self) -> int:
        return len(self.episodes)

    def episode(self, index: int) -> EpisodeData:
        row = self._row(index)
        table = self._episode_table(index)

        def values(key: str, dtype) -> np.ndarray:
            shape = self.features[key]["shape"]
            return column_values(table[key], shape).astype(dtype, copy=False)

        extras = {key: values(key, self.features[key]["dtype"]) for key in self.extra_keys}
        return EpisodeData(index=index, task=row["tasks"][0], states=values(STATE, np.float32),
                           actions=values(ACTION, np.float32),
                           timestamps=table["timestamp"].to_numpy().astype(np.float64),
                           frame_index=table["frame_index"].to_numpy(),
                           index_range=(int(row["dataset_from_index"]), int(row["dataset_to_index"])), extras=extras)

    def frames(self, index: int, camera_key: str) -> np.ndarray:
        """The episode's frames of one camera, (T, H, W, 3) uint8 RGB (videos decoded with PyAV)."""
        return np.stack(list(self.iter_frames(index, camera_key)))

    def iter_frames(self, index: int, camera_key: str) -> Iterator[np.ndarray]:
        if self.features[camera_key]["dtype"] == "image":
            for image in self._episode_table(index)[camera_key].to_pylist():
                yield decode_png(image["bytes"])
            return
        import av

        row = self._row(index)
        path = self.root / self.info["video_path"].format(
            video_key=camera_key, chunk_index=row[f"videos/{camera_key}/chunk_index"],
            file_index=row[f"videos/{camera_key}/file_index"])
        start, end = row[f"videos/{camera_key}/from_timestamp"], row[f"videos/{camera_key}/to_timestamp"]
        half = 0.5 / self.fps
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if start > half:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base)
                if t < start - half:
                    continue
                if t >= end - half:
                    break
                yield frame.to_ndarray(format="rgb24")

    def validate(self) -> None:
        """Check that the totals, index ranges, frame numbering, timestamps and video lengths agree.

        Raises:
            DatasetError: naming the first inconsistency.
        """
        info, n = self.info, len(self.episodes)
        if [r["episode_index"] for r in self.episodes] != list(range(n)):
            raise DatasetError(f"episode indices are not 0..{n - 1}")
        if info["total_episodes"] != n:
            raise DatasetError(f"info.json counts {info['total_episodes']} episodes, the episodes table {n}")
        expected_start = 0
        for row in self.episodes:
            ep = self.episode(row["episode_index"])
            length = int(row["length"])
            if ep.index_range != (expected_start, expected_start + length) or len(ep.states) != length:
                raise DatasetError(f"episode {ep.index}: index range {ep.index_range} with {len(ep.states)} rows, "
                                   f"expected {length} from {expected_start}")
            if not np.array_equal(ep.frame_index, np.arange(length)):
                raise DatasetError(f"episode {ep.index}: frame_index is not 0..{length - 1}")
            if not np.allclose(ep.timestamps, ep.frame_index / self.fps, atol=1e-4):
                raise DatasetError(f"episode {ep.index}: timestamps are not frame_index / fps")
            if row["tasks"][0] not in self.tasks:
                raise DatasetError(f"episode {ep.index}: task {row['tasks'][0]!r} missing from tasks.parquet")
            for key in self.camera_keys:
                count = sum(1 for _ in self.iter_frames(ep.index, key))
                if count != length:
                    raise DatasetError(f"episode {ep.index}: {count} frames of {key} for {length} rows")
            expected_start += length
        if info["total_frames"] != expected_start:
            raise DatasetError(f"info.json counts {info['total_frames']} frames, the episodes {expected_start}")

    def _row(self, index: int) -> dict:
        if not 0 <= index < len(self.episodes) or self.episodes[index]["episode_index"] != index:
            raise DatasetError(f"{self.root}: no episode {index}")
        return self.episodes[index]

    def _episode_table(self, index: int):
        """The episode's data rows, ordered by frame_index."""
        import pyarrow.compute as pc

        row = self._row(index)
        table = self._data_file(row["data/chunk_index"], row["data/file_index"])
        start, length = int(row["dataset_from_index"]), int(row["length"])
        offset = start - int(table["index"][0].as_py()) if len(table) else -1
        # Writers (ours, LeRobot's) store an episode's rows contiguously in index order: slice them, and
        # search the file only where that does not hold.
        rows = table.slice(offset, length) if 0 <= offset else None
        if rows is None or len(rows) != length or not _holds_only(rows, index):
            rows = table.filter(pc.equal(table["episode_index"], index))
        order = np.argsort(rows["frame_index"].to_numpy(), kind="stable")
        return rows if np.array_equal(order, np.arange(len(rows))) else rows.take(order)

    def _data_file(self, chunk_index: int, file_index: int):
        path = self.root / self.info["data_path"].format(chunk_index=chunk_index, file_index=file_index)
        return _read_table(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _read_table(path: str, mtime_ns: int):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _holds_only(rows, index: int) -> bool:
    episodes = rows["episode_index"].to_numpy()
    return len(episodes) > 0 and bool((episodes == index).all())


def _tasks_by_index(table) -> list[str]:
    """Task strings ordered by task_index, from a tasks table (pandas index column or a plain one)."""
    names = table.column_names
    task_column = "task" if "task" in names else next(n for n in names if n.startswith("__index_level"))
    pairs = sorted(zip(table["task_index"].to_pylist(), table[task_column].to_pylist()))
    return [task for _, task in pairs]
