"""``ros2 param set`` on running nodes: safe parameters change (validated, logged), unsafe ones are
refused saying why. Requests go through the nodes' real SetParameters services from another node."""

from __future__ import annotations

import pytest
from ros_testing import STARTUP_TIMEOUT, SpinningNode, make_tiny_checkpoint, wait_for

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]


def set_parameter(spinner: SpinningNode, node_name: str, name: str, value):
    """One SetParameters request, as ``ros2 param set`` sends it; the result (successful, reason)."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(spinner.node, node_name)
    assert client.wait_for_services(timeout_sec=STARTUP_TIMEOUT)
    future = client.set_parameters([Parameter(name, value=value)])
    assert wait_for(future.done, 30.0)
    return future.result().results[0]


def test_controller_changes_its_timeouts_live_and_refuses_its_limits(node_process, rclpy_context):
    proc = node_process("controller_node", params={"joint_names": JOINTS, "joint_states_topic": "",
                                                   "require_joint_state": False, "velocity_limits": [1.0, 1.0]})
    with SpinningNode(rclpy_context) as spinner:
        assert proc.wait_for_output(r"active: waiting for action chunks", STARTUP_TIMEOUT), proc.output()
        result = set_parameter(spinner, "/controller_node", "watchdog_timeout", 2.5)
        assert result.successful, result.reason
        assert proc.wait_for_output(r"parameter watchdog_timeout changed from 1.0 to 2.5", 30.0), proc.output()

        result = set_parameter(spinner, "/controller_node", "velocity_limits", [9.0, 9.0])
        assert not result.successful
        assert result.reason.startswith("velocity_limits is fixed while the node runs: safety limits stay")

        result = set_parameter(spinner, "/controller_node", "max_chunk_age", -1.0)
        assert not result.successful and "max_chunk_age out of range Min: 0.0" in result.reason  # the descriptor's range
    assert proc.stop() == 0, proc.output()


def test_policy_takes_new_sampling_settings_at_the_next_chunk(tmp_path, rclpy_context, capfd):
    from rclpy.parameter import Parameter

    from hlrp_ros.nodes.policy_node import PolicyNode

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    params = {"checkpoint": str(ckpt), "camera_names": ["top"], "inference_period": 0.5, "torch_threads": 1}
    node = PolicyNode("live_policy", context=rclpy_context,
                      parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        results = node.set_parameters([Parameter("num_steps", value=3), Parameter("n_action_steps", value=4),
                                       Parameter("inference_period", value=0.25), Parameter("seed", value=7)])
        assert all(r.successful for r in results), [r.reason for r in results]
        assert (node.num_steps, node.n_action_steps, node.generator is not None) == (3, 4, True)
        assert node.timer.timer_period_ns == 250_000_000 and node.gate.period == 0.25
        assert "parameter inference_period changed from 0.5 to 0.25" in capfd.readouterr().err

        refused = node.set_parameters([Parameter("n_action_steps", value=9)])[0]  # the tiny model's chunk is 8
        assert not refused.successful and refused.reason == ("invalid parameter 'n_action_steps': 9 > the "
                                                             "model's chunk_size 8")
        assert node.n_action_steps == 4
        refused = node.set_parameters([Parameter("checkpoint", value="/elsewhere")])[0]
        assert not refused.successful and "the model is loaded once, at start-up" in refused.reason
    finally:
        node.destroy_node()
