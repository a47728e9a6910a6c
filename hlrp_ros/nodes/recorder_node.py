"""recorder_node: records cameras, joint states, the commanded action and the instruction into a LeRobot v3.0 dataset.

Frames are taken on a fixed ``fps`` timer (ROS time) by the rule of ``hlrp_ros.datasets.alignment``:
each input contributes its latest message stamped at or before the tick (header stamp; the arrival
time for a message without one); a frame whose camera, state or action is older than ``max_age`` is
dropped and counted, never filled with stale data. The episode's task is the latest instruction when
it starts.

Episodes are controlled with ``std_srvs/Trigger`` services under the node's name: ``~/start``
(refused without an instruction or while recording), ``~/save`` (stop and write the episode) and
``~/discard`` (stop and forget it). Each saved episode is committed to disk before ``save``
answers; killed at any time, the dataset keeps every saved episode and the next start removes what
the interrupted one left.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from hlrp_ros import diagnostics as diag
from hlrp_ros.chunk_codec import time_to_ns
from hlrp_ros.datasets.alignment import FrameAligner
from hlrp_ros.datasets.lerobot_v3 import DatasetError, DatasetSpec, DatasetWriter
from hlrp_ros.nodes import (
    ParameterError,
    ParamSpec,
    QosMismatches,
    declare_parameters,
    init_ros,
    shutdown_ros,
    spin_until_shutdown,
    steady_timer,
)
from hlrp_ros.ros_image import ImageConverter, ImageError

PARAMS = [
    ParamSpec("output_dir", "", "Dataset directory (created, or continued when it holds a dataset). REQUIRED."),
    ParamSpec("fps", 10, "Frames per second of the recording clock (ROS time).", minimum=1, maximum=1000),
    ParamSpec("camera_topics", ["/camera/image_raw"], "sensor_msgs/Image topics (a name ending in /compressed: "
              "CompressedImage).", item_type=str),
    ParamSpec("camera_names", ["front"], "Camera names in the dataset (observation.images.<name>), one per topic.",
              item_type=str),
    ParamSpec("joint_states_topic", "/joint_states", "sensor_msgs/JointState: observation.state (positions)."),
    ParamSpec("joint_names", [], "State and action dimensions in order; unset: the first joint state's names.",
              item_type=str),
    ParamSpec("action_topic", "/joint_command", "The action recorded: commanded positions."),
    ParamSpec("action_type", "joint_state", "Message type of action_topic.",
              choices=("joint_state", "float64_array")),
    ParamSpec("instruction_topic", "/instruction", "std_msgs/String: the task of the next episode."),
    ParamSpec("max_age", 0.25, "s, oldest camera/state/action sample a frame may use; older: frame dropped.",
              minimum=0.001, maximum=60.0),
    ParamSpec("robot_type", "unknown", "info.json robot_type."),
    ParamSpec("unit", "rad", "Unit of state and action values, written to the dataset's features."),
    ParamSpec("video_codec", "libx264", "PyAV encoder of the videos.", choices=("libx264", "libsvtav1")),
    ParamSpec("status_period", 2.0, "s between status lines and diagnostics (steady clock).",
              minimum=0.1, maximum=60.0),
]


class RecorderNode(Node):
    """Subscribes to the inputs, samples them at ``fps`` while an episode runs, writes the dataset."""

    def __init__(self) -> None:
        super().__init__("recorder_node")
        self.params = p = declare_parameters(self, PARAMS)
        if not p["output_dir"]:
            raise ParameterError("output_dir", "must name the dataset directory")
        if len(p["camera_names"]) != len(p["camera_topics"]):
            raise ParameterError("camera_names", f"{len(p['camera_names'])} names for "
                                                 f"{len(p['camera_topics'])} camera_topics")
        self.converter = ImageConverter("auto")
        self.qos_mismatches = QosMismatches(self)
        self.throttle = diag.ReasonThrottle(self.get_logger().warning)
        max_age_ns = int(p["max_age"] * 1e9)
        streams = {f"camera:{n}": max_age_ns for n in p["camera_names"]}
        self.aligner = FrameAligner({**streams, "state": max_age_ns, "action": max_age_ns})
        self.joint_names: list[str] = list(p["joint_names"])
        self.instruction: str = ""
        self.writer: DatasetWriter | None = None
        self.saved_frames = 0
        self.rejected: dict[str, int] = {}
        if _has_dataset(p["output_dir"]):
            self._open_writer(None)
        self._subscribe()
        self._diag_pub = self.create_publisher(_diag_type(), "/diagnostics", 10)
        from std_srvs.srv import Trigger

        for name, handler in (("start", self._on_start), ("save", self._on_save), ("discard", self._on_discard)):
            self.create_service(Trigger, f"~/{name}", _trigger(handler))
        self._tick_timer = self.create_timer(1.0 / p["fps"], self._on_tick)
        self._status_timer = steady_timer(self, p["status_period"], self._on_status)
        self.get_logger().info(f"ready: {p['fps']} fps into {p['output_dir']}; cameras {p['camera_names']}, "
                               f"state {p['joint_states_topic']}, action {p['action_topic']} "
                               f"({p['action_type']}); services ~/start ~/save ~/discard")

    # --- inputs ---

    def _subscribe(self) -> None:
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import Float64MultiArray, String

        p = self.params
        advice = "Any publisher should match: check its deadline and liveliness settings."
        for topic, name in zip(p["camera_topics"], p["camera_names"]):
            kind = CompressedImage if topic.endswith("/compressed") else Image
            self.create_subscription(kind, topic, self._keeper(f"camera:{name}", self._image), qos_profile_sensor_data,
                                     event_callbacks=self.qos_mismatches.callbacks(topic, "best effort", advice))
        self.create_subscription(JointState, p["joint_states_topic"], self._keeper("state", self._positions),
                                 qos_profile_sensor_data, event_callbacks=self.qos_mismatches.callbacks(
                                     p["joint_states_topic"], "best effort", advice))
        action_kind = JointState if p["action_type"] == "joint_state" else Float64MultiArray
        action_value = self._positions if p["action_type"] == "joint_state" else self._array
        self.create_subscription(action_kind, p["action_topic"], self._keeper("action", action_value),
                                 qos_profile_sensor_data, event_callbacks=self.qos_mismatches.callbacks(
                                     p["action_topic"], "best effort", advice))
        for durability in (DurabilityPolicy.TRANSIENT_LOCAL, DurabilityPolicy.VOLATILE):
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=durability)
            self.create_subscription(String, p["instruction_topic"], self._on_instruction, qos)

    def _keeper(self, stream: str, convert: Callable) -> Callable:
        def keep(msg) -> None:
            header = getattr(msg, "header", None)
            stamp = time_to_ns(header.stamp) if header is not None else 0
            if stamp == 0:
                stamp = self.get_clock().now().nanoseconds
            try:
                value = convert(msg)
            except (ImageError, ValueError) as exc:
                self._reject(f"{stream}:{getattr(exc, 'reason', 'value')}", f"{stream}: {exc}")
                return
            self.aligner.add(stream, stamp, value)
        return keep

    def _image(self, msg) -> np.ndarray:
        return self.converter.to_rgb(msg)

    def _positions(self, msg) -> np.ndarray:
        if not self.joint_names:
            if not msg.name:
                raise ValueError("a JointState without names and no joint_names parameter")
            self.joint_names = list(msg.name)
            self.get_logger().info(f"joint names from the first joint state: {self.joint_names}")
        if msg.name:
            index = {n: i for i, n in enumerate(msg.name)}
            missing = [n for n in self.joint_names if n not in index]
            if missing or len(msg.position) != len(msg.name):
                raise ValueError(f"joint state without {missing or 'one position per name'}")
            return np.array([msg.position[index[n]] for n in self.joint_names], dtype=np.float32)
        return self._array(msg.position)

    def _array(self, msg) -> np.ndarray:
        data = np.asarray(getattr(msg, "data", msg), dtype=np.float32)
        if self.joint_names and data.shape != (len(self.joint_names),):
            raise ValueError(f"{data.size} values for {len(self.joint_names)} joints")
        return data

    def _on_instruction(self, msg) -> None:
        if msg.data != self.instruction:
            self.instruction = msg.data
            self.get_logger().info(f"instruction: {msg.data!r}")

    def _reject(self, reason: str, message: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.throttle(reason, message)

    # --- episodes ---

    def _open_writer(self, first_images: dict[str, np.ndarray] | None) -> None:
        p = self.params
        if first_images is None:  # an existing dataset: its spec, checked against the parameters
            info = json.loads((Path(p["output_dir"]) / "meta" / "info.json").read_text())
            spec = DatasetSpec.from_info(info)
            if self.joint_names and tuple(self.joint_names) != spec.joint_names:
                raise ParameterError("joint_names", f"{self.joint_names} differ from the dataset's {spec.joint_names}")
            self.joint_names = list(spec.joint_names)
        else:
            spec = DatasetSpec(fps=p["fps"], joint_names=tuple(self.joint_names), robot_type=p["robot_type"],
                               cameras={n: img.shape[:2] for n, img in first_images.items()}, unit=p["unit"],
                               codec=p["video_codec"])
        self.writer = DatasetWriter(p["output_dir"], spec)
        if self.writer.recovered:
            self.get_logger().warning(f"removed {len(self.writer.recovered)} files an interrupted episode left "
                                      f"in {p['output_dir']}")
        self.saved_frames = self.writer.total_frames
        self.get_logger().info(f"dataset {p['output_dir']}: {self.writer.total_episodes} episodes, "
                               f"{self.writer.total_frames} frames")

    def _on_start(self) -> tuple[bool, str]:
        if self.writer is not None and self.writer.episode is not None:
            return False, f"episode {self.writer.episode.index} is being recorded; save or discard it first"
        if not self.instruction:
            return False, f"no instruction yet on {self.params['instruction_topic']}"
        if self.writer is None:
            now = self.get_clock().now().nanoseconds
            frame = self.aligner.sample(now)
            if not frame.kept:
                return False, f"waiting for {', '.join(frame.dropped)} (none younger than max_age)"
            self._open_writer({k.split(":", 1)[1]: v for k, v in frame.values.items() if k.startswith("camera:")})
        episode = self.writer.start_episode(self.instruction)
        self.aligner.reset_counts()
        self.get_logger().info(f"episode {episode.index} started: {self.instruction!r}")
        return True, f"episode {episode.index} started: {self.instruction!r}"

    def _on_save(self) -> tuple[bool, str]:
        if self.writer is None or self.writer.episode is None:
            return False, "no episode is being recorded"
        episode = self.writer.episode
        if len(episode) == 0:
            self.writer.discard_episode()
            return False, "the episode had no frames; discarded"
        row = self.writer.save_episode()
        self.saved_frames = self.writer.total_frames
        message = (f"episode {row['episode_index']} saved: {row['length']} frames, "
                   f"{self.aligner.dropped_frames} dropped")
        self.get_logger().info(message)
        return True, message

    def _on_discard(self) -> tuple[bool, str]:
        if self.writer is None or self.writer.episode is None:
            return False, "no episode is being recorded"
        index = self.writer.episode.index
        frames = self.writer.discard_episode()
        self.get_logger().info(f"episode {index} discarded ({frames} frames)")
        return True, f"episode {index} discarded ({frames} frames)"

    def _on_tick(self) -> None:
        if self.writer is None or self.writer.episode is None:
            return
        frame = self.aligner.sample(self.get_clock().now().nanoseconds)
        if not frame.kept:
            return
        images = {k.split(":", 1)[1]: v for k, v in frame.values.items() if k.startswith("camera:")}
        try:
            self.writer.episode.add_frame(frame.values["state"], frame.values["action"], images)
        except DatasetError as exc:
            self._reject("frame", f"frame not recorded: {exc}")

    # --- status ---

    def status(self) -> tuple[int, str, dict]:
        episode = self.writer.episode if self.writer is not None else None
        values = {"output_dir": self.params["output_dir"], "fps": self.params["fps"],
                  "episodes_saved": self.writer.total_episodes if self.writer else 0,
                  "frames_saved": self.saved_frames, "recording": episode is not None,
                  "frames_in_episode": len(episode) if episode else 0,
                  "frames_dropped": self.aligner.dropped_frames,
                  **{f"dropped.{k}": v for k, v in self.aligner.drops.items()},
                  **{f"rejected.{k}": v for k, v in sorted(self.rejected.items())},
                  **self.qos_mismatches.diagnostics()}
        if episode is not None:
            message = (f"recording episode {episode.index} ({episode.task!r}): {len(episode)} frames, "
                       f"{self.aligner.dropped_frames} dropped")
            level = diag.WARN if self.aligner.dropped_frames > self.aligner.kept else diag.OK
        else:
            message = f"idle; {values['episodes_saved']} episodes, {self.saved_frames} frames saved"
            level = diag.OK
        drops = {k: v for k, v in self.aligner.drops.items() if v}
        if drops:
            message += " (" + ", ".join(f"{k} too old {v}" for k, v in drops.items()) + ")"
        return level, message, values

    def _on_status(self) -> None:
        level, message, values = self.status()
        self.get_logger().info(f"status: {message}")
        status = diag.make_status(f"{self.get_name()}: recording", self.get_name(), level, message, values)
        self._diag_pub.publish(diag.make_array(self.get_clock().now().to_msg(), [status]))

    def close(self) -> None:
        """Discard an unsaved episode (Ctrl-C does not save: only ``~/save`` does)."""
        if self.writer is not None and self.writer.episode is not None:
            index, frames = self.writer.episode.index, self.writer.discard_episode()
            self.get_logger().warning(f"stopping: episode {index} ({frames} frames) was not saved; discarded")


def _has_dataset(root: str) -> bool:
    return (Path(root) / "meta" / "info.json").exists()


def _diag_type():
    from diagnostic_msgs.msg import DiagnosticArray

    return DiagnosticArray


def _trigger(handler: Callable[[], tuple[bool, str]]) -> Callable:
    def serve(request, response):
        try:
            response.success, response.message = handler()
        except (DatasetError, ParameterError, OSError) as exc:
            response.success, response.message = False, str(exc)
        return response
    return serve


def main(args=None) -> int:
    """Run the recorder; exit code 1 when the configuration is invalid."""
    init_ros(args)
    node = None
    code = 0
    try:
        node = RecorderNode()
        spin_until_shutdown(node)
    except (ParameterError, DatasetError) as exc:
        print(f"recorder_node: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:  # during start-up
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        shutdown_ros()
    return code


if __name__ == "__main__":
    sys.exit(main())
