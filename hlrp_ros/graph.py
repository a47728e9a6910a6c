"""Start hlrp_ros node executables as processes, the way a launch file would.

Tests, ``make demo`` and the evaluation tool bring up the same nodes with the same
parameter files as ``launch/hlrp.launch.py``; ``launch_ros`` is not installable
everywhere we run, so this module does the small part of it we need: resolve the
executable, pass ``--ros-args`` (parameter file, parameters, remappings), run it in its
own process group, and tear the whole group down again (SIGINT, then SIGTERM, then
SIGKILL) without touching any other process.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PACKAGE = "hlrp_ros"
# Executable name -> module that provides its main().
EXECUTABLES = {
    "policy_node": "hlrp_ros.nodes.policy_node",
    "controller_node": "hlrp_ros.nodes.controller_node",
    "demo_sim": "hlrp_ros.nodes.demo_sim",
    "metaworld_sim": "hlrp_ros.nodes.metaworld_sim",
    "recorder_node": "hlrp_ros.nodes.recorder_node",
}


FASTDDS_PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"


def fastdds_profile() -> Path:
    """The shipped Fast DDS profile for camera-sized messages (``config/fastdds_shm.xml``)."""
    return package_share() / "config" / "fastdds_shm.xml"


def isolated_ros_env(domain_id: int | None = None, base: dict[str, str] | None = None,
                     large_messages: bool = True) -> dict[str, str]:
    """Environment for a private DDS graph: a random domain, discovery on localhost only.

    Args:
        domain_id: ROS_DOMAIN_ID to use; random in [1, 100] when None.
        base: environment to start from (default: this process's).
        large_messages: Use the shipped Fast DDS shared-memory profile (camera frames arrive whole)
            unless the environment already names a profile.
    """
    env = dict(os.environ if base is None else base)
    if large_messages:
        env.setdefault(FASTDDS_PROFILE_ENV, str(fastdds_profile()))
    # SystemRandom: a tool that seeded `random` must not hand two concurrent runs the same domain.
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.SystemRandom().randint(1, 100))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
    return env


def executable_command(executable: str) -> list[str]:
    """Command that runs a node executable of this package.

    Prefers the installed ``lib/hlrp_ros/<executable>`` (what ``ros2 run`` uses); falls
    back to ``python -m <module>`` when the package is not installed with colcon.
    """
    if executable not in EXECUTABLES:
        raise ValueError(f"unknown executable {executable!r}; known: {sorted(EXECUTABLES)}")
    try:
        from ament_index_python.packages import get_package_prefix

        installed = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / executable
        if installed.exists():
            return [sys.executable, str(installed)]
    except Exception:  # ament index missing or package not installed: use the module
        pass
    return [sys.executable, "-m", EXECUTABLES[executable]]


def write_params_file(node_name: str, params: dict, directory: Path) -> Path:
    """Write ``params`` as a ROS 2 parameter file for ``node_name``."""
    path = directory / f"{node_name}_params.yaml"
    path.write_text(yaml.safe_dump({node_name: {"ros__parameters": params}}, sort_keys=True))
    return path


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit`` in this (main-thread) process, unless it already handles SIGTERM.

    Nodes run in their own process groups, so a tool stopped by SIGTERM would otherwise leave them running,
    orphaned; as an exception, it runs the ``finally`` blocks that stop them.
    """
    import signal
    import sys
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@dataclass
class NodeProcess:
    """One node executable running in its own process group.

    Attributes:
        executable: name from ``EXECUTABLES``.
        name: node name (``__node:=``); defaults to the executable name.
        params_files: parameter files passed in order (later ones override).
        params: parameters applied after the files.
        remaps: topic remappings ``{from: to}``.
        env: process environment (use ``isolated_ros_env``).
        log_dir: where stdout/stderr go (a temporary directory when None).
    """

    executable: str
    name: str | None = None
    params_files: list[Path] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    remaps: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] | None = None
    log_dir: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log_path: Path | None = field(default=None, init=False, repr=False)

    @property
    def node_name(self) -> str:
        return self.name or self.executable

    def command(self) -> list[str]:
        """The full command line, ``--ros-args`` included."""
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix=f"hlrp_{self.node_name}_"))
        args = ["--ros-args", "-r", f"__node:={self.node_name}"]
        for path in self.params_files:
            args += ["--params-file", str(path)]
        if self.params:
            args += ["--params-file", str(write_params_file(self.node_name, self.params, self.log_dir))]
        for source, target in self.remaps.items():
            args += ["-r", f"{source}:={target}"]
        return executable_command(self.executable) + args

    def start(self) -> NodeProcess:
        exit_cleanly_on_sigterm()
        cmd = self.command()
        self._log_path = self.log_dir / f"{self.node_name}.log"
        log = open(self._log_path, "wb")
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def returncode(self) -> int | None:
        """Exit code, or None while running."""
        return self._proc.poll() if self._proc else None

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match | None:
        """Wait until ``pattern`` (a regex) appears in the output; None on timeout or exit."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.output())
            if match:
                return match
            if self.returncode() is not None:
                return regex.search(self.output())
            time.sleep(0.05)
        return None

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; its exit code, or None on timeout."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the process group: SIGINT (a clean rclpy shutdown), then SIGTERM, then SIGKILL."""
        if self._proc is None:
            return None
        for sig, grace in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self._proc.poll() is not None:
                break
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        # Reap anything the node left behind in its group.
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self._proc.returncode


def python_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python args...`` in its own process group, output piped (for tests)."""
    return subprocess.Popen([sys.executable, *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_process_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its group."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue


def package_share() -> Path:
    """The package's share directory (installed), or the source tree when not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:
        return Path(__file__).resolve().parent.parent

