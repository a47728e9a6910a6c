"""CI closed-loop check of the shipped demo checkpoint over ROS 2, and `make demo`'s tool.

World + policy_node + controller_node run as processes (the launch file's executables and
parameter files) on this test run's private DDS domain.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hlrp_ros.graph import python_process, stop_process_group
from hlrp_ros.tools.closed_loop import default_checkpoint

MAX_CHECKPOINT_BYTES = 20 * 1024 * 1024
# The shipped model succeeds in ~99% of ROS episodes (docs/demo.md), so 5 of 6 fails about once
# in 300 runs; a broken pipeline or a language-blind model (5% success) gets 0-1.
EPISODES, MIN_SUCCESSES = 6, 5


def test_shipped_checkpoint_is_complete_and_small():
    ckpt = default_checkpoint()
    for name in ("config.json", "model.safetensors", "tokenizer", "training.json"):
        assert (ckpt / name).exists(), name
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    assert size <= MAX_CHECKPOINT_BYTES
    info = json.loads((ckpt / "training.json").read_text())
    assert info["command"].startswith("python -m hlrp_ros.tools.train") and "seed" in info
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("normalize_state.") for k in keys) and any(k.startswith("normalize_action.") for k in keys)


@pytest.mark.ros
def test_closed_loop_episodes(tmp_path):
    from hlrp_ros.tools import evaluate

    out = tmp_path / "eval.json"
    evaluate.main(["--episodes", str(EPISODES), "--conditions", "train", "--json", str(out), "--timeout", "10",
                   "--seed", "7"])
    episodes = json.loads(out.read_text())["episodes"]["train"]
    successes = sum(e["success"] for e in episodes)
    assert successes >= MIN_SUCCESSES, [(e["instruction"], e["success"], e["final_distance"]) for e in episodes]


@pytest.mark.ros
def test_demo_tool_runs_bounded_and_saves_frames(ros_env, tmp_path):
    # --duration counts from when the nodes are ready: start-up (model load) alone takes longer than
    # 1 s, so a duration that included it would end before the first episode
    proc = python_process(["-m", "hlrp_ros.tools.demo", "--duration", "1", "--out", str(tmp_path)], env=ros_env)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        stop_process_group(proc)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "chunks/s" in text and "inference" in text and "nodes ready after" in text, text[-3000:]
    assert re.search(r"summary: \d+/[1-9]\d* episodes succeeded", text), text[-3000:]
    assert (Path(tmp_path) / "demo_strip.png").is_file()


@pytest.mark.parametrize("model", ["demo_arm_pi0", "demo_arm_diffusion"])
def test_the_shipped_family_models_follow_held_out_paraphrases_in_closed_loop(tmp_path, model):
    # PI0: 98 % on held-out paraphrases over ROS 2 (docs/families.md), the language-conditioned diffusion
    # policy likewise (docs/diffusion.md): 4 of 6 fails about once in thousands of runs; a model that ignores
    # the instruction reaches the named colour about one time in four.
    from hlrp_ros.tools import evaluate

    out = tmp_path / "eval.json"
    models = Path(__file__).resolve().parents[1] / "models"
    evaluate.main(["--backend", "inprocess", "--checkpoint", str(models / model), "--episodes", "6",
                   "--conditions", "heldout", "--json", str(out), "--seed", "7"])
    episodes = json.loads(out.read_text())["episodes"]["heldout"]
    assert sum(e["success"] for e in episodes) >= 4, [(e["instruction"], e["success"]) for e in episodes]
