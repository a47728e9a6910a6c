"""Launch the HLRP policy node and controller node, and optionally the demo world.

    ros2 launch hlrp_ros hlrp.launch.py                         # policy + controller, shipped demo checkpoint
    ros2 launch hlrp_ros hlrp.launch.py use_sim:=true           # + demo world (planar arm), config/demo.yaml
    ros2 launch hlrp_ros hlrp.launch.py params_file:=<share>/config/gazebo.yaml checkpoint:=/path/to/ckpt

Parameter files are applied in order: ``params_file`` (default config/hlrp.yaml), then
config/demo.yaml when ``use_sim`` is true and ``params_file`` is the default (a parameter file of
your own is never overridden by the demo's; the demo world then runs with your settings, said in
the launch log), then the ``checkpoint``/``device`` arguments, then ``cameras``. Several cameras:
``cameras:=/front/image_raw=top,/wrist/image_raw/compressed=wrist`` (topic=model camera name, comma
separated; sets policy_node's ``camera_topics`` and ``camera_names``), or list them in your parameter
file; ``camera_topic`` only remaps the default single camera topic /camera/image_raw.
The remapping arguments rename the nodes' topics /camera/image_raw, /joint_states and
/joint_command (e.g. to a simulator's names). ``fastdds_profile`` (default: the shipped
config/fastdds_shm.xml, a 32 MiB shared-memory segment so that camera frames arrive whole) is
exported as FASTDDS_DEFAULT_PROFILES_FILE for the nodes; ``fastdds_profile:=''`` keeps Fast DDS's
defaults. The camera driver must use the same profile.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node, PushRosNamespace

from hlrp_ros.launch_args import camera_parameters

PACKAGE = "hlrp_ros"
#: Executables started by this file (the same ones `make demo` and the evaluation start).
EXECUTABLES = ("policy_node", "controller_node", "demo_sim")


def _nodes(param_files: list, with_sim: bool) -> list:
    """The nodes, built when the launch runs: the ``cameras`` argument is parsed then (an error names it)."""
    return [OpaqueFunction(function=lambda context: _node_actions(context, param_files, with_sim))]


def _node_actions(context, param_files: list, with_sim: bool) -> list:
    remappings = [
        ("/camera/image_raw", LaunchConfiguration("camera_topic")),
        ("/joint_states", LaunchConfiguration("joint_states_topic")),
        ("/joint_command", LaunchConfiguration("command_topic")),
    ]
    policy_overrides = {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device"),
                        **camera_parameters(LaunchConfiguration("cameras").perform(context))}
    nodes = [
        PushRosNamespace(LaunchConfiguration("namespace")),
        Node(package=PACKAGE, executable="policy_node", name="policy_node", output="screen",
             parameters=[*param_files, policy_overrides], remappings=remappings),
        Node(package=PACKAGE, executable="controller_node", name="controller_node", output="screen",
             parameters=param_files, remappings=remappings),
    ]
    if with_sim:
        nodes.append(Node(package=PACKAGE, executable="demo_sim", name="demo_sim", output="screen",
                          parameters=param_files, remappings=remappings))
    return nodes


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration("params_file")
    use_sim = LaunchConfiguration("use_sim")
    demo_params = os.path.join(share, "config", "demo.yaml")
    default_params = os.path.join(share, "config", "hlrp.yaml")
    own_params = PythonExpression(["'", params_file, "' != '", default_params, "'"])
    sim = PythonExpression(["'", use_sim, "'.lower() in ('true', '1')"])
    sim_with_demo_params = PythonExpression([sim, " and not ", own_params])
    sim_with_own_params = PythonExpression([sim, " and ", own_params])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameter file of the nodes (config/hlrp.yaml, gazebo.yaml, "
                                          "isaac.yaml or your own)"),
        DeclareLaunchArgument("checkpoint", default_value=os.path.join(share, "models", "demo_arm"),
                              description="Policy checkpoint directory (default: the shipped demo checkpoint)"),
        DeclareLaunchArgument("device", default_value="cpu", description="Torch device: cpu, cuda, cuda:N"),
        DeclareLaunchArgument("use_sim", default_value="false",
                              description="Start the demo world (demo_sim) and apply config/demo.yaml"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of all nodes"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="Camera image topic (remaps /camera/image_raw)"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="Cameras as topic=model_name pairs, comma separated, e.g. "
                                          "/front/image_raw=top,/wrist/image_raw/compressed=wrist (empty: the "
                                          "parameter files' camera_topics and camera_names)"),
        DeclareLaunchArgument("joint_states_topic", default_value="/joint_states",
                              description="Joint state topic (remaps /joint_states)"),
        DeclareLaunchArgument("command_topic", default_value="/joint_command",
                              description="Controller command topic (remaps /joint_command)"),
        DeclareLaunchArgument("fastdds_profile", default_value=os.path.join(share, "config", "fastdds_shm.xml"),
                              description="Fast DDS XML profile exported to the nodes (empty: Fast DDS defaults)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile"),
                               condition=IfCondition(PythonExpression(
                                   ["'", LaunchConfiguration("fastdds_profile"), "' != ''"]))),
        GroupAction(_nodes([params_file], with_sim=False), condition=UnlessCondition(use_sim)),
        GroupAction(_nodes([params_file, demo_params], with_sim=True), condition=IfCondition(sim_with_demo_params)),
        LogInfo(msg=["use_sim with params_file ", params_file, ": config/demo.yaml is not applied over it"],
                condition=IfCondition(sim_with_own_params)),
        GroupAction(_nodes([params_file], with_sim=True), condition=IfCondition(sim_with_own_params)),
    ])
