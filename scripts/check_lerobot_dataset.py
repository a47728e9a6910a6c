#!/usr/bin/env python3
"""Load a dataset written by hlrp_ros with LeRobot's own ``LeRobotDataset`` and compare every frame.

Runs ONLY where LeRobot is installed (a separate venv; LeRobot is never a dependency of hlrp_ros)::

    python3.12 -m venv /work/lerobot061
    /work/lerobot061/bin/pip install "lerobot[dataset]==0.6.1"
    /work/lerobot061/bin/python scripts/check_lerobot_dataset.py DIR              # any dataset we wrote
    /work/lerobot061/bin/python scripts/check_lerobot_dataset.py --fixture       # rewrite + check the fixture

For every frame LeRobot returns, the state, action, task, episode and frame index must equal what
hlrp_ros's reader reads from the same files, the episode boundaries must equal our episodes table,
and each camera image must match the frame our reader decodes (max difference ``--pixel-tol`` of
255; 0 for PNG image features), every further feature (e.g. ``action.expert_chunk``) must equal ours; against the recorded synthetic frames, a mean difference of at most 6, the yuv420p video codec's loss). With ``--fixture`` the synthetic dataset under ``test/fixtures/lerobot_dataset/`` is written
anew, compared also with the synthetic values it was made from, and ``lerobot_check.json`` records
the outcome; ``make test`` reads that fixture with our reader.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "test" / "fixtures" / "lerobot_dataset"


def check(root: Path, pixel_tol: int, synthetic: bool) -> dict:
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hlrp_ros.datasets.reader import DatasetReader
    from hlrp_ros.datasets.synthetic import synthetic_frame

    ours = DatasetReader(root)
    ours.validate()
    theirs = LeRobotDataset("local/" + root.name, root=root, video_backend="pyav")
    assert theirs.num_episodes == len(ours), (theirs.num_episodes, len(ours))
    assert theirs.num_frames == ours.info["total_frames"], (theirs.num_frames, ours.info["total_frames"])
    assert theirs.fps == ours.fps
    worst_pixel, worst_recorded, frames = 0, 0, 0
    for row in ours.episodes:
        e = row["episode_index"]
        ep = ours.episode(e)
        start, end = ep.index_range
        meta = theirs.meta.episodes[e]
        assert (meta["dataset_from_index"], meta["dataset_to_index"]) == (start, end), (e, meta)
        images = {key: ours.frames(e, key) for key in ours.camera_keys}
        for i in range(end - start):
            item = theirs[start + i]
            assert int(item["episode_index"]) == e and int(item["frame_index"]) == i, (e, i)
            assert int(item["index"]) == start + i
            assert item["task"] == ep.task, (item["task"], ep.task)
            np.testing.assert_array_equal(item["observation.state"].numpy(), ep.states[i])
            np.testing.assert_array_equal(item["action"].numpy(), ep.actions[i])
            for key in ours.extra_keys:  # further per-frame features (any shape)
                np.testing.assert_array_equal(item[key].numpy().reshape(ep.extras[key][i].shape), ep.extras[key][i])
            if synthetic:
                state, action, raw = synthetic_frame(e, i)
                np.testing.assert_array_equal(ep.states[i], state)
                np.testing.assert_array_equal(ep.actions[i], action)
            for key in ours.camera_keys:
                image = (item[key].numpy().transpose(1, 2, 0) * 255).round()
                worst_pixel = max(worst_pixel, int(np.abs(image - images[key][i]).max()))
                if synthetic:
                    recorded = raw[key[len("observation.images."):]]
                    worst_recorded = max(worst_recorded, float(np.abs(image - recorded).mean()))
            frames += 1
    assert worst_pixel <= pixel_tol, f"LeRobot's image differs from ours by {worst_pixel} > {pixel_tol} grey levels"
    assert worst_recorded <= 6.0, f"a decoded image differs from the recorded one by {worst_recorded:.2f} on average"
    stats = theirs.meta.stats
    assert np.allclose(stats["observation.state"]["mean"], ours.stats["observation.state"]["mean"])
    return {"lerobot": lerobot.__version__, "episodes": len(ours), "frames": frames,
            "tasks": ours.tasks, "cameras": ours.camera_keys, "max_pixel_difference_lerobot_vs_ours": worst_pixel,
            "max_mean_pixel_difference_vs_recorded": round(worst_recorded, 3) if synthetic else None,
            "extra_features": ours.extra_keys,
            "checked": "state, action, extra features, task, episode_index, frame_index, index, episode boundaries, "
                       "images, stats"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, help="dataset directory (meta/info.json inside)")
    parser.add_argument("--fixture", action="store_true", help="rewrite and check test/fixtures/lerobot_dataset")
    parser.add_argument("--pixel-tol", type=int, default=2, help="largest accepted difference between LeRobot's and our decoded images (0-255)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # hlrp_ros from this checkout (the LeRobot venv does not install it)
    if args.fixture:
        from hlrp_ros.datasets.synthetic import write_synthetic

        dataset = FIXTURE / "dataset"
        shutil.rmtree(dataset, ignore_errors=True)
        write_synthetic(dataset)
        result = check(dataset, args.pixel_tol, synthetic=True)
        (FIXTURE / "lerobot_check.json").write_text(json.dumps(result, indent=2) + "\n")
    elif args.root is None:
        parser.error("give a dataset directory or --fixture")
    else:
        result = check(args.root.resolve(), args.pixel_tol, synthetic=False)
    print(json.dumps(result, indent=2))
    print("OK: LeRobotDataset loads it and every frame matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
