#!/usr/bin/env python3
"""Side-by-side check that HLRP reproduces LeRobot SmolVLA beyond the committed fixtures (issue 6).

Two processes, two venvs, exchanging safetensors files:

1. for each variant below, the LeRobot venv runs ``scripts/make_lerobot_fixtures.py --spec`` which builds a
   random-weight SmolVLA checkpoint with LeRobot 0.4.x, runs observation cases through LeRobot's
   preprocessor -> ``predict_action_chunk(noise)`` -> postprocessor and writes inputs, noise and actions;
2. this process (the project venv, no LeRobot) loads the checkpoint with ``load_lerobot_smolvla`` and
   prints the max abs difference of every case x step count.

Usage (from the repository root)::

    .venv/bin/python scripts/compare_lerobot.py [--lerobot-python /work/lerobot-venv/bin/python]
        [--variants fixture-arch-new-seeds deep-quantiles ...] [--keep DIR]

Exit status 1 when any difference exceeds ``--tol`` (1e-4).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.lerobot_smolvla import load_lerobot_smolvla

REPO = Path(__file__).resolve().parents[1]
FIXTURE_SCRIPT = REPO / "scripts" / "make_lerobot_fixtures.py"
DEFAULT_LEROBOT_PYTHON = "/work/lerobot-venv/bin/python"

_BASE_POLICY = dict(
    chunk_size=10, n_action_steps=10, max_state_dim=32, max_action_dim=32, resize_imgs_with_padding=[32, 32],
    tokenizer_max_length=16, num_vlm_layers=4, num_expert_layers=-1, self_attn_every_n_layers=2,
    expert_width_multiplier=0.75, num_steps=10,
)
TASKS = ["Pick the RED cube!", "déplace le bloc bleu", "push the yellow button\n", "go", "Stack  the cubes,  then stop.",
         "grasp the handle and pull the drawer all the way open before you close it again slowly"]

#: name -> Spec fields (see make_lerobot_fixtures.Spec). Sizes are (H, W); resize_imgs_with_padding is (W, H).
VARIANTS: dict[str, dict] = {
    # The fixture's architecture with other weights, seeds, image sizes, batch sizes and step counts.
    "fixture-arch-new-seeds": dict(
        policy=_BASE_POLICY, seed=11,
        norm_map={"VISUAL": "IDENTITY", "STATE": "MIN_MAX", "ACTION": "MEAN_STD"},
        cameras={"top": [48, 64], "wrist": [40, 40]}, state_dim=7, action_dim=6,
        cases=[[200, 1, {"top": [480, 640], "wrist": [240, 320]}, TASKS[:1]],
               [201, 3, {"top": [31, 97], "wrist": [200, 50]}, TASKS[1:4]],
               [202, 2, {"top": [32, 32], "wrist": [5, 7]}, TASKS[4:6]]],
        step_counts=[1, 2, 5, 20],
    ),
    # Wider/deeper VLM truncated to 6 of 8 layers, self-attention every 3rd layer, scale factor 3, image
    # special tokens, max_length padding, padded prefix, quantile / min-max normalisation, state/action at
    # exactly max dims, non-default time periods.
    "deep-quantiles-special-tokens": dict(
        policy=dict(chunk_size=7, n_action_steps=5, max_state_dim=12, max_action_dim=10,
                    resize_imgs_with_padding=[48, 48], tokenizer_max_length=24, pad_language_to="max_length",
                    add_image_special_tokens=True, prefix_length=80, num_vlm_layers=6,
                    num_expert_layers=-1, self_attn_every_n_layers=3, expert_width_multiplier=0.5,
                    min_period=0.01, max_period=2.0, num_steps=4),
        vlm=dict(text_layers=8, hidden=96, heads=6, kv_heads=2, vision_layers=3, vision_hidden=48, vision_heads=3,
                 image_size=48, patch_size=8, scale_factor=3),
        seed=12, norm_map={"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "MIN_MAX"},
        cameras={"front": [96, 128], "side": [64, 64]}, state_dim=12, action_dim=10,
        cases=[[300, 2, {"front": [96, 128], "side": [50, 70]}, TASKS[0:2]],
               [301, 1, {"front": [48, 48], "side": [120, 30]}, TASKS[5:6]]],
        step_counts=[4, 10],
    ),
    # All expert layers cross-attend (self_attn_every_n_layers=-1), half as many expert layers as VLM layers,
    # expert as wide as the VLM, one camera with large inputs plus an empty camera, QUANTILE10 state.
    "all-cross-attn": dict(
        policy=dict(_BASE_POLICY, resize_imgs_with_padding=[64, 64], num_expert_layers=2,
                    self_attn_every_n_layers=-1, expert_width_multiplier=1.0, chunk_size=12, n_action_steps=12,
                    empty_cameras=1),
        vlm=dict(image_size=64, patch_size=16, scale_factor=2),
        seed=13, norm_map={"VISUAL": "IDENTITY", "STATE": "QUANTILE10", "ACTION": "MEAN_STD"},
        cameras={"cam": [480, 640]}, state_dim=3, action_dim=2,
        cases=[[400, 1, {"cam": [480, 640]}, TASKS[2:3]], [401, 2, {"cam": [100, 30]}, TASKS[3:5]]],
        step_counts=[3, 10],
    ),
    # SmolVLM2-500M's shape ratios scaled down: 15 query / 5 key-value heads (3 groups), 16 of 32 layers kept,
    # patch 16 and pixel-shuffle 4, expert width 0.75, chunk 50 with SmolVLA's default processor settings.
    "smolvlm2-shaped": dict(
        policy=dict(chunk_size=50, n_action_steps=50, max_state_dim=32, max_action_dim=32,
                    resize_imgs_with_padding=[128, 128], tokenizer_max_length=48, num_vlm_layers=16,
                    num_expert_layers=-1, self_attn_every_n_layers=2, expert_width_multiplier=0.75, num_steps=10),
        vlm=dict(text_layers=32, hidden=120, heads=15, kv_heads=5, vision_layers=2, vision_hidden=48,
                 vision_heads=3, image_size=128, patch_size=16, scale_factor=4),
        seed=15, norm_map={"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        cameras={"up": [480, 640], "side": [480, 640], "wrist": [480, 640]}, state_dim=6, action_dim=6,
        cases=[[600, 1, {"up": [480, 640], "side": [240, 320], "wrist": [720, 1280]}, TASKS[0:1]]],
        step_counts=[10],
    ),
    # Every layer self-attention (self_attn_every_n_layers=1), identity state normalisation.
    "all-self-attn": dict(
        policy=dict(_BASE_POLICY, self_attn_every_n_layers=1, max_state_dim=8, max_action_dim=8),
        seed=14, norm_map={"VISUAL": "IDENTITY", "STATE": "IDENTITY", "ACTION": "MEAN_STD"},
        cameras={"top": [48, 64]}, state_dim=5, action_dim=8,
        cases=[[500, 2, {"top": [60, 80]}, TASKS[0:2]]],
        step_counts=[10, 7],
    ),
}


def run_lerobot_side(lerobot_python: str, spec: dict, out: Path) -> None:
    """Runs the LeRobot venv: checkpoint + cases for ``spec`` written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out.parent / f"{out.name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([lerobot_python, str(FIXTURE_SCRIPT), "--spec", str(spec_file), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"LeRobot side failed for {out.name}:\n{proc.stdout}\n{proc.stderr}")


def compare_dir(directory: Path) -> list[tuple[int, int, int, float]]:
    """Loads ``directory/checkpoint`` with our loader; ``(case, row, steps, max abs diff)`` per chunk."""
    policy = load_lerobot_smolvla(directory / "checkpoint", tokenizer_dir=directory / "vlm")
    meta = json.loads((directory / "cases.json").read_text())
    tensors = load_file(str(directory / "cases.safetensors"))
    rows = []
    for c, case in enumerate(meta["cases"]):
        for r, task in enumerate(case["tasks"]):
            obs = Observation(
                images={k.removeprefix("observation.images."): tensors[f"case{c}.{k}"][r].numpy()
                        for k in case["image_keys"]},
                state=tensors[f"case{c}.state"][r].numpy(), instruction=task)
            prefix = policy.encode_prefix(obs)
            for n in meta["step_counts"]:
                ours = policy.sample_chunk(prefix, num_steps=n, noise=tensors[f"case{c}.noise"][r])
                ref = tensors[f"case{c}.actions.steps{n}"][r]
                rows.append((c, r, n, (ours - ref).abs().max().item()))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", default=DEFAULT_LEROBOT_PYTHON, help="python of the LeRobot venv")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--keep", type=Path, default=None, help="keep the exchanged files in this directory")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for name in args.variants:
            out = root / name
            run_lerobot_side(args.lerobot_python, VARIANTS[name], out)
            rows = compare_dir(out)
            vmax = max(d for *_, d in rows)
            worst = max(worst, vmax)
            print(f"{name}: {len(rows)} chunks, max abs diff {vmax:.3g}")
            for c, r, n, d in rows:
                print(f"    case {c} row {r} steps {n:>2}: {d:.3g}")
    status = "OK" if worst <= args.tol else "FAIL"
    print(f"{status}: worst max abs diff {worst:.3g} (tolerance {args.tol:g}) over {len(args.variants)} variants")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
