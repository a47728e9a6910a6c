"""Recording demonstrations over ROS 2: demo_sim and recorder_node as processes, the expert in this one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hlrp_ros.tools import evaluate


@pytest.mark.ros
def test_recorded_episodes_carry_their_instructions_and_the_expert_commands(tmp_path, capsys):
    from hlrp_ros.datasets.reader import DatasetReader
    from hlrp_ros.tools import record_demo

    out = tmp_path / "dataset"
    assert record_demo.main(["--episodes", "3", "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.rindex("\n{") + 1:])  # the summary is printed last
    assert summary["episodes_saved"] == 3 and summary["episodes_discarded"] == 0
    reader = DatasetReader(out)
    reader.validate()
    plans = [evaluate.plan_episode("train", 3, i, 0.0) for i in range(3)]
    assert len(reader) == 3
    previous_last = None
    for i, plan in enumerate(plans):
        episode = reader.episode(i)
        assert episode.task == plan["instruction"]
        assert len(episode.states) >= 5 and reader.frames(i, "observation.images.top").shape[1:] == (64, 64, 3)
        steps = np.abs(np.diff(episode.actions, axis=0)).max(axis=1)
        # the expert's speed (1.8 rad/s): at most two commands apart between frames (one late), no jump
        assert steps.max() <= 2 * 1.8 * 0.1 + 0.05
        if previous_last is not None:  # no frame took the previous episode's last command
            assert not np.allclose(episode.actions[0], previous_last, atol=1e-4)
        previous_last = episode.actions[-1]
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["fps"] == 10 and info["robot_type"] == "hlrp_demo_arm"
    # continuing the dataset appends, the episode plans numbered on
    assert record_demo.main(["--episodes", "1", "--out", str(out), "--seed", "3"]) == 0
    reader = DatasetReader(out)
    assert len(reader) == 4 and reader.episode(3).task == evaluate.plan_episode("train", 3, 3, 0.0)["instruction"]


def test_policy_parameters_for_the_evaluation_are_yaml_values():
    assert evaluate.node_parameter("first_action_delay=0.0") == ("first_action_delay", 0.0)
    assert evaluate.node_parameter("camera_names=[top, wrist]") == ("camera_names", ["top", "wrist"])
    assert evaluate.node_parameter(" rtc_mode =guided") == ("rtc_mode", "guided")
    with pytest.raises(Exception, match="NAME=VALUE"):
        evaluate.node_parameter("first_action_delay")


@pytest.mark.ros
def test_end_to_end_records_trains_and_evaluates_in_one_command(tmp_path, capsys):
    from hlrp_ros.tools import end_to_end

    out = tmp_path / "e2e"
    assert end_to_end.main(["--out", str(out), "--episodes", "2", "--steps", "3", "--eval-episodes", "1"]) == 0
    report = json.loads((out / "scratch" / "end_to_end.json").read_text())
    assert report["record"]["episodes"] == 2 and report["train"]["steps"] == 3
    assert {"train", "heldout"} <= set(report["evaluate"]) and report["evaluate"]["train"]["episodes"] == 1
    assert all(report[stage]["seconds"] > 0 for stage in ("record", "train", "evaluate"))
    assert (out / "scratch" / "final" / "model.safetensors").exists()
    # run again: nothing is redone but the evaluation
    assert end_to_end.main(["--out", str(out), "--episodes", "2", "--steps", "3", "--eval-episodes", "1"]) == 0
    report = json.loads((out / "scratch" / "end_to_end.json").read_text())
    assert "skipped" in report["record"] and "skipped" in report["train"]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.ros
def test_a_tool_stopped_with_sigterm_stops_the_nodes_it_started(tmp_path):
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    from hlrp_ros.graph import isolated_ros_env

    tool = subprocess.Popen([sys.executable, "-m", "hlrp_ros.tools.record_demo", "--episodes", "100", "--out",
                             str(tmp_path / "dataset")], env=isolated_ros_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(_children(tool.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        nodes = _children(tool.pid)
        assert len(nodes) >= 2, "the tool did not start its nodes"
        tool.send_signal(signal.SIGTERM)
        assert tool.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while any(os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
                  for pid in nodes) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [pid for pid in nodes if os.path.exists(f"/proc/{pid}")]
        assert not alive, f"nodes {alive} outlived the tool"
    finally:
        for pid in [tool.pid, *nodes]:  # each in its own process group; only those this test started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
