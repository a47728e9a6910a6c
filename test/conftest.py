"""Shared pytest setup.

Every test run gets a private DDS graph: a random ROS_DOMAIN_ID and discovery limited
to localhost, set before anything imports rclpy, and inherited by the node processes
the tests start. Tests that start processes stop them by process group (never by name).
"""

from __future__ import annotations

import os
import tempfile

import pytest

from hlrp_ros.graph import NodeProcess, isolated_ros_env  # imports no rclpy

# Before any rclpy import: isolate this run's DDS traffic from other work on the machine.
os.environ.update(isolated_ros_env())
# ROS logs of the nodes the tests start go to a private directory (rcl also needs one when
# HOME is unset, as in some CI environments).
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="hlrp_test_ros_log_"))


@pytest.fixture
def ros_env() -> dict[str, str]:
    """Environment for node processes: this run's domain, localhost discovery."""
    return dict(os.environ)  # isolated at import, above


@pytest.fixture
def node_process(ros_env, tmp_path):
    """Factory starting node executables; every process is stopped at teardown."""
    started: list[NodeProcess] = []

    def start(executable: str, **kwargs) -> NodeProcess:
        kwargs.setdefault("env", ros_env)
        kwargs.setdefault("log_dir", tmp_path)
        proc = NodeProcess(executable, **kwargs).start()
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def rclpy_context():
    """A private rclpy context for nodes created inside the test process."""
    import rclpy

    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)
