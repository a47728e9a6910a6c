"""package.xml declares what the code uses, and CMake installs what ROS tools look for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parent.parent
# Python modules that come from ROS packages of the same name.
ROS_MODULES = {"rclpy", "std_msgs", "sensor_msgs", "trajectory_msgs", "diagnostic_msgs", "builtin_interfaces",
               "lifecycle_msgs", "cv_bridge", "launch", "launch_ros", "ament_index_python"}
# Third-party Python modules and their rosdep keys.
PYTHON_MODULES = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml",
                  "torch": "python3-torch"}


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in list((ROOT / "hlrp_ros").rglob("*.py")) + list((ROOT / "launch").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


def declared_dependencies() -> set[str]:
    package = parse_package(str(ROOT / "package.xml"))
    deps = (package.build_depends + package.exec_depends + package.buildtool_depends
            + package.test_depends)
    return {dep.name for dep in deps}


def test_manifest_is_format_3_and_valid():
    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.package_format == 3
    assert package.name == "hlrp_ros"
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [group.name for group in package.member_of_groups]


def test_every_ros_and_system_module_the_code_imports_is_declared():
    declared = declared_dependencies()
    wanted = {**{module: module for module in ROS_MODULES}, **PYTHON_MODULES}
    missing = {module: wanted[module] for module in imported_top_level_modules() & wanted.keys()
               if wanted[module] not in declared}
    assert not missing, f"imported but not declared in package.xml: {missing}"


def test_pytest_is_a_test_dependency():
    package = parse_package(str(ROOT / "package.xml"))
    assert "python3-pytest" in {dep.name for dep in package.test_depends}


def test_cmake_installs_every_executable_the_graph_knows():
    from hlrp_ros.graph import EXECUTABLES

    cmake = (ROOT / "CMakeLists.txt").read_text()
    programs = re.search(r"install\(\s*PROGRAMS(.*?)DESTINATION lib/\$\{PROJECT_NAME\}", cmake, re.S)
    assert programs, "CMakeLists.txt installs no node executables to lib/hlrp_ros"
    installed = {Path(p).name for p in programs.group(1).split()}
    assert installed == set(EXECUTABLES)
    for name, module in EXECUTABLES.items():
        script = (ROOT / "scripts" / name).read_text()
        assert f"from {module} import main" in script


def test_cmake_installs_launch_config_and_the_shipped_checkpoint_to_share():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    share = re.search(r"install\(\s*DIRECTORY ([^\n]*)\n\s*DESTINATION share/\$\{PROJECT_NAME\}", cmake)
    assert share, "CMakeLists.txt installs nothing to share/hlrp_ros"
    assert set(share.group(1).split()) >= {"launch", "config", "models"}
    assert (ROOT / "models" / "demo_arm" / "model.safetensors").is_file()


def test_readme_parameter_tables_match_the_nodes():
    from hlrp_ros.nodes import controller_node, describe_parameters, policy_node

    readme = (ROOT / "README.md").read_text()
    for node in (policy_node, controller_node):
        assert describe_parameters(node.PARAMS) in readme, f"README's {node.__name__} parameter table is out of date"
