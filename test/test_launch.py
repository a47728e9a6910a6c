"""launch/hlrp.launch.py and the parameter files it uses.

Where `launch`/`launch_ros` are installed (a ROS distro) the file is imported and its
description built; everywhere, its executables, arguments and parameter files are checked
statically, and every key of the simulator parameter files is a parameter its node declares.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from hlrp_ros.graph import EXECUTABLES

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "hlrp.launch.py"
ARGUMENTS = {"params_file", "checkpoint", "device", "use_sim", "namespace", "camera_topic", "cameras",
             "joint_states_topic", "command_topic", "fastdds_profile"}


def _calls(name: str) -> list[ast.Call]:
    tree = ast.parse(LAUNCH.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _kw(call: ast.Call, key: str):
    for kw in call.keywords:
        if kw.arg == key and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def declared_parameters() -> dict[str, set[str]]:
    from hlrp_ros.nodes import controller_node, policy_node

    sim_source = (ROOT / "hlrp_ros" / "nodes" / "demo_sim.py").read_text()
    common = {"use_sim_time"}
    return {
        "policy_node": {s.name for s in policy_node.PARAMS} | common,
        "controller_node": {s.name for s in controller_node.PARAMS} | common,
        "demo_sim": set(re.findall(r'^\s+p\("(\w+)"', sim_source, re.M)) | common,
    }


def test_launch_file_starts_the_package_executables():
    nodes = _calls("Node")
    executables = {_kw(c, "executable") for c in nodes}
    assert executables == {"policy_node", "controller_node", "demo_sim"}
    for exe in executables:
        assert exe in EXECUTABLES
        assert (ROOT / "scripts" / exe).is_file()
    assert {_kw(c, "package") for c in nodes} == {None}  # package=PACKAGE constant
    assert 'PACKAGE = "hlrp_ros"' in LAUNCH.read_text()


def test_launch_file_declares_its_arguments_with_descriptions():
    args = {}
    for call in _calls("DeclareLaunchArgument"):
        name = call.args[0].value
        args[name] = _kw(call, "description") or "".join(
            v.value for kw in call.keywords if kw.arg == "description"
            for v in ast.walk(kw.value) if isinstance(v, ast.Constant) and isinstance(v.value, str))
    assert set(args) == ARGUMENTS
    assert all(args.values()), args
    text = LAUNCH.read_text()
    for rel in ('"config", "hlrp.yaml"', '"config", "demo.yaml"', '"models", "demo_arm"'):
        assert rel in text


@pytest.mark.parametrize("name", ["hlrp.yaml", "demo.yaml", "gazebo.yaml", "isaac.yaml"])
def test_parameter_files_only_set_declared_parameters(name):
    data = yaml.safe_load((ROOT / "config" / name).read_text())
    declared = declared_parameters()
    assert set(data) <= set(declared), set(data) - set(declared)
    for node, section in data.items():
        params = section["ros__parameters"]
        unknown = set(params) - declared[node]
        assert not unknown, f"{name}: {node} does not declare {sorted(unknown)}"


def test_simulator_files_use_their_bridges_topics():
    gazebo = yaml.safe_load((ROOT / "config" / "gazebo.yaml").read_text())
    isaac = yaml.safe_load((ROOT / "config" / "isaac.yaml").read_text())
    g = gazebo["controller_node"]["ros__parameters"]
    assert (g["output_mode"], g["output_topic"]) == ("float64_array", "/forward_position_controller/commands")
    i = isaac["controller_node"]["ros__parameters"]
    assert (i["output_mode"], i["output_topic"]) == ("joint_state", "/joint_command")
    assert isaac["policy_node"]["ros__parameters"]["camera_topics"] == ["/rgb"]
    for data in (gazebo, isaac):
        assert data["policy_node"]["ros__parameters"]["use_sim_time"] is True


def test_demo_controller_limits_match_the_world():
    from hlrp_ros.sim.world import ArmSpec

    arm = ArmSpec()
    ctrl = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["controller_node"]["ros__parameters"]
    assert ctrl["joint_names"] == list(arm.joint_names)
    assert ctrl["velocity_limits"] == pytest.approx(arm.velocity_limits)
    assert ctrl["position_limits_lower"] == pytest.approx(arm.lower, abs=1e-3)
    assert ctrl["position_limits_upper"] == pytest.approx(arm.upper, abs=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="launch_ros is not installed here (pip wheels); checked statically above")
def test_launch_description_builds():  # pragma: no cover - runs on a ROS distro
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location("hlrp_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert names == ARGUMENTS


def test_the_cameras_argument_maps_topics_to_model_camera_names():
    from hlrp_ros.launch_args import camera_parameters

    assert camera_parameters("") == {} and camera_parameters("  ") == {}
    assert camera_parameters("/front/image_raw=top, /wrist/image_raw/compressed=wrist") == {
        "camera_topics": ["/front/image_raw", "/wrist/image_raw/compressed"], "camera_names": ["top", "wrist"]}
    for bad, message in (("/front/image_raw", "is not topic=name"), ("=top", "is not topic=name"),
                         ("/a=top,/b=top", "camera name 'top' given twice"), ("/a=x,/a=y", "topic '/a' given twice")):
        with pytest.raises(ValueError, match=message):
            camera_parameters(bad)
