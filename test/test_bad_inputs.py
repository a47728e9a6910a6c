"""Bad input gets a clear, specific log message, the node keeps running, and nothing unsafe is published.

The nodes run in this process (nothing here depends on timing): inputs go through the nodes'
own subscription callbacks, then one inference / control tick runs, and the test checks the
log line (captured from the process's stderr, where rclpy logs) and the publish counters.
"""

from __future__ import annotations

import numpy as np
import pytest
from ros_testing import camera_image, compressed_image, joint_state, make_tiny_checkpoint

from hlrp_ros.chunk_codec import encode_chunk

pytestmark = pytest.mark.ros

JOINTS = ["shoulder", "elbow"]
TOP, WRIST = "/bad/top/image_raw", "/bad/wrist/image_raw/compressed"
JS, INSTR = "/bad/joint_states", "/bad/instruction"


@pytest.fixture(scope="module")
def context():
    import rclpy

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("bad_ckpt"), camera_names=["top", "wrist"])


def make_policy_node(context, checkpoint, name: str, **overrides):
    from rclpy.parameter import Parameter

    from hlrp_ros.nodes.policy_node import PolicyNode

    params = {"checkpoint": str(checkpoint), "camera_topics": [TOP, WRIST], "camera_names": ["top", "wrist"],
              "joint_states_topic": JS, "instruction_topic": INSTR, "output_topic": "/bad/action_chunk",
              "inference_period": 1000.0, "max_observation_age": 5.0, "torch_threads": 1, "seed": 0}
    params.update(overrides)
    return PolicyNode(name, context=context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


@pytest.fixture(scope="module")
def policy(context, checkpoint):
    node = make_policy_node(context, checkpoint, "bad_input_policy")
    yield node
    node.destroy_node()


def feed(node, *, top=None, wrist=None, names=("shoulder", "elbow"), positions=(0.1, 0.2),
         instruction="pick up the cube", age: float = 0.0) -> None:
    """Deliver one message per input through the node's subscription callbacks (counters reset)."""
    from std_msgs.msg import String

    from hlrp_ros.diagnostics import ReasonThrottle

    node.reject = ReasonThrottle(node.get_logger().warning)
    node.published = 0
    node.latest.clear()  # each case starts from nothing received (kept inputs are never replaced by older ones)
    stamp = node.get_clock().now().nanoseconds - int(age * 1e9)
    node._keeper(TOP)(top if top is not None else camera_image(stamp))
    node._keeper(WRIST)(wrist if wrist is not None else compressed_image(stamp))
    node._keeper(JS)(joint_state(stamp, names, positions))
    node._keeper(INSTR)(String(data=instruction))


def assert_rejected(node, capfd, expected: str) -> None:
    assert node.infer_once() is False
    err = capfd.readouterr().err
    assert expected in err, err
    assert node.published == 0


def test_good_inputs_publish(policy, capfd):
    feed(policy)
    assert policy.infer_once() is True and policy.published == 1


def test_unsupported_encoding(policy, capfd):
    image = camera_image(0)
    image.encoding = "yuv422"
    feed(policy, top=image)
    image.header.stamp = policy.get_clock().now().to_msg()
    assert_rejected(policy, capfd, f"camera 'top' ({TOP}): unsupported encoding 'yuv422'")


def test_undecodable_compressed_image(policy, capfd):
    broken = compressed_image(0)
    broken.data = bytes(16)
    broken.header.stamp = policy.get_clock().now().to_msg()
    feed(policy, wrist=broken)
    assert_rejected(policy, capfd, f"camera 'wrist' ({WRIST}): cannot decode compressed image")


def test_image_size_mismatch_rejected_when_configured(context, checkpoint, capfd):
    node = make_policy_node(context, checkpoint, "bad_input_reject_size", image_size_mismatch="reject")
    try:
        feed(node, top=camera_image(node.get_clock().now().nanoseconds, size=(48, 32)))
        assert_rejected(node, capfd, "image size 32x48 differs from the model's 64x64 (image_size_mismatch: reject)")
    finally:
        node.destroy_node()


def test_image_size_mismatch_resized_with_warning_by_default(policy, capfd):
    feed(policy, top=camera_image(policy.get_clock().now().nanoseconds, size=(480, 640)))
    assert policy.infer_once() is True
    assert "image size 640x480 differs from the model's 64x64; resizing with padding" in capfd.readouterr().err


def test_extremely_elongated_image_is_rejected_before_the_model(policy, capfd):
    feed(policy, top=camera_image(policy.get_clock().now().nanoseconds, size=(1, 2000)))
    assert_rejected(policy, capfd, f"camera 'top' ({TOP}): a 2000x1 image (aspect 2000:1) shrinks to 64x0 when "
                                   f"fitted into 64x64: too elongated to use")
    assert policy.reject.counts == {f"image_aspect_{TOP}": 1}


def test_rejections_of_different_encodings_are_counted_apart(policy, capfd):
    now = policy.get_clock().now().nanoseconds
    mono16, depth = camera_image(now), camera_image(now + 1)
    mono16.encoding, depth.encoding = "mono16", "16UC1"
    feed(policy, top=mono16)
    for _ in range(3):
        assert policy.infer_once() is False
    policy._keeper(TOP)(depth)
    assert policy.infer_once() is False
    err = capfd.readouterr().err
    assert "unsupported encoding '16UC1'" in err and "times so far" not in err, err
    assert policy.reject.counts == {f"image_encoding_mono16_{TOP}": 3, f"image_encoding_16UC1_{TOP}": 1}


@pytest.mark.parametrize("topic", [JS, TOP])
def test_an_older_input_arriving_late_does_not_replace_the_newer_one(policy, capfd, topic):
    now = policy.get_clock().now().nanoseconds
    feed(policy)
    late = joint_state(now - 900_000_000, ["shoulder", "elbow"], [9.0, 9.0]) if topic == JS else \
        camera_image(now - 900_000_000, seed=7)
    kept = policy.latest[topic][0]
    policy._keeper(topic)(late)
    assert policy.latest[topic][0] is kept
    assert policy.reject.counts == {f"out_of_order_{topic}": 1}
    assert f"dropped a message on {topic} stamped 0.9" in capfd.readouterr().err
    assert policy.infer_once() is True


def test_nan_joint_state(policy, capfd):
    feed(policy, positions=(0.1, float("nan")))
    assert_rejected(policy, capfd, "non-finite positions for ['elbow']")


def test_inf_joint_state(policy, capfd):
    feed(policy, positions=(float("inf"), 0.0))
    assert_rejected(policy, capfd, "non-finite positions for ['shoulder']")


def test_missing_joint(policy, capfd):
    feed(policy, names=("shoulder", "wrist"))
    assert_rejected(policy, capfd, "lacks configured joint(s) ['elbow']")


def test_duplicate_joint_names(policy, capfd):
    feed(policy, names=("shoulder", "elbow", "shoulder"), positions=(0.1, 0.2, 0.3))
    assert_rejected(policy, capfd, "duplicate joint names ['shoulder']")


def test_empty_instruction(policy, capfd):
    feed(policy, instruction="   ")
    assert_rejected(policy, capfd, f"instruction on {INSTR} is empty")


def test_stale_observation(policy, capfd):
    feed(policy, age=30.0)
    assert_rejected(policy, capfd, "s old (max_observation_age 5 s)")


def test_observation_stamped_in_the_future(policy, capfd):
    feed(policy, age=-30.0)
    assert_rejected(policy, capfd, "s in the future (more than max_observation_age 5 s): are the clocks synchronised")


def test_an_input_arriving_during_a_tick_waits_for_the_next_one(policy, monkeypatch):
    """The subscriptions run on the executor thread while the inference thread gathers its inputs.
    Inputs that land just after the tick read the clock must not become this chunk's observation:
    the chunk would be stamped after its first action is due."""
    from hlrp_ros.chunk_codec import time_to_ns

    feed(policy, age=0.01)
    clock = policy.get_clock()

    class ClockWithLateArrival:
        def now(self):
            monkeypatch.setattr(policy, "get_clock", lambda: clock)  # one late arrival is enough
            read = clock.now()
            late = read.nanoseconds + 1_000_000
            policy._keeper(TOP)(camera_image(late))
            policy._keeper(WRIST)(compressed_image(late))
            policy._keeper(JS)(joint_state(late, list(JOINTS), [0.3, 0.4]))
            return read

    sent = []
    monkeypatch.setattr(policy, "get_clock", ClockWithLateArrival)
    monkeypatch.setattr(policy.chunk_pub, "publish", sent.append)
    assert policy.infer_once() is True
    stamp, due = time_to_ns(sent[0].header.stamp), time_to_ns(sent[0].first_action_time)
    assert stamp <= due


def test_huge_instruction_truncated_with_warning(policy, capfd):
    from hlrp_ros.msg import ActionChunk

    sent: list[ActionChunk] = []
    publish = policy.chunk_pub.publish
    policy.chunk_pub.publish = sent.append
    try:
        huge = " ".join(["pick up the red cube and"] * 2000)
        feed(policy, instruction=huge)
        assert policy.infer_once() is True
    finally:
        policy.chunk_pub.publish = publish
    err = capfd.readouterr().err
    assert "cut to max_instruction_chars=4096" in err, err
    assert "instruction truncated to the tokenizer limit of 16 tokens" in err, err
    assert 0 < len(sent[0].instruction) < 200 and huge.startswith(sent[0].instruction)


# --------------------------------------------------------------------------------------------- controller
@pytest.fixture
def controller(context):
    from rclpy.parameter import Parameter

    from hlrp_ros.nodes.controller_node import ControllerNode

    params = {"joint_names": JOINTS, "input_topic": "/bad/chunk", "output_topic": "/bad/command",
              "joint_states_topic": "", "require_joint_state": False, "max_chunk_age": 1.0,
              "control_thread": False}  # ticks are driven by hand
    node = ControllerNode("bad_input_controller", context=context,
                          parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    node.trigger_configure()
    node.trigger_activate()
    yield node
    node.destroy_node()


def chunk_msg(node, chunk_id=1, names=JOINTS, actions=None, age=0.0, start_offset=0.0, **fields):
    now = node.get_clock().now().nanoseconds
    actions = np.tile(np.array([[0.1, 0.2]], dtype=np.float32), (5, 1)) if actions is None else actions
    msg = encode_chunk(actions, names, chunk_id=chunk_id, stamp_ns=now - int(age * 1e9),
                       first_action_ns=now - int(age * 1e9) + int(start_offset * 1e9), dt=0.1)
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def assert_chunk_rejected(node, capfd, msg, expected: str) -> None:
    node.on_chunk(msg)
    node.on_tick()
    err = capfd.readouterr().err
    assert expected in err, err
    assert node.accepted == 0 and node.published == 0


def test_controller_accepts_a_good_chunk(controller):
    controller.on_chunk(chunk_msg(controller))
    controller.on_tick()
    assert controller.accepted == 1 and controller.published == 1


def test_chunk_wrong_dimensions(controller, capfd):
    msg = chunk_msg(controller, horizon=4)
    assert_chunk_rejected(controller, capfd, msg, "rejected ActionChunk 1 (unnamed run): 10 action values for horizon 4")


def test_chunk_wrong_joint_count(controller, capfd):
    msg = chunk_msg(controller, names=["shoulder", "elbow", "wrist"], actions=np.zeros((5, 3), dtype=np.float32))
    assert_chunk_rejected(controller, capfd, msg, "chunk has 3 joints")


def test_chunk_wrong_names(controller, capfd):
    msg = chunk_msg(controller, names=["shoulder", "knee"])
    assert_chunk_rejected(controller, capfd, msg, "missing ['elbow'], unexpected ['knee']")


def test_chunk_nan_values(controller, capfd):
    actions = np.zeros((5, 2), dtype=np.float32)
    actions[3, 0] = np.nan
    msg = chunk_msg(controller, actions=actions)
    assert_chunk_rejected(controller, capfd, msg, "non-finite action values (first: step 3, joint 'shoulder'")


def test_chunk_stale_on_arrival(controller, capfd):
    msg = chunk_msg(controller, age=5.0, start_offset=5.0)
    assert_chunk_rejected(controller, capfd, msg, "rejected ActionChunk 1 (unnamed run): stale: observation 5.0")


def test_chunk_stamped_in_the_future(controller, capfd):
    msg = chunk_msg(controller, age=-30.0)
    assert_chunk_rejected(controller, capfd, msg, "s in the future (more than max_chunk_age 1 s): are the clocks")


def test_chunk_already_run_out_on_arrival(controller, capfd):
    msg = chunk_msg(controller, age=0.9)  # fresh enough, but its 5 actions (0.5 s) are all past
    assert_chunk_rejected(controller, capfd, msg, "rejected ActionChunk 1 (unnamed run): stale")


def test_chunk_replayed(controller, capfd):
    msg = chunk_msg(controller, chunk_id=5)
    controller.on_chunk(msg)
    controller.on_chunk(msg)
    err = capfd.readouterr().err
    assert "rejected ActionChunk 5 (unnamed run): the same chunk (id 5, observation" in err, err
    assert controller.accepted == 1


def test_repeated_bad_input_is_logged_once_per_period_and_counted(policy, capfd):
    feed(policy, positions=(0.1, float("nan")))
    for _ in range(5):
        assert policy.infer_once() is False
    err = capfd.readouterr().err
    assert err.count("non-finite positions for ['elbow']") == 1, err
    assert policy.reject.counts["joint_nonfinite"] == 5 and policy.published == 0


def test_abstract_tokens_are_passed_and_bad_ids_rejected(context, tmp_path, capfd):
    from std_msgs.msg import Int32MultiArray

    ckpt = make_tiny_checkpoint(tmp_path / "abstract", camera_names=["top", "wrist"], abstract_tokens_enabled=True,
                                abstract_vocab_size=8, abstract_max_length=4)
    node = make_policy_node(context, ckpt, "bad_input_abstract", abstract_tokens_topic="/bad/abstract")
    try:
        feed(node)
        node._keeper("/bad/abstract")(Int32MultiArray(data=[1, 2, 3]))
        assert node.infer_once() is True and node.published == 1
        node.published = 0
        node._keeper("/bad/abstract")(Int32MultiArray(data=[42]))
        assert_rejected(node, capfd, "inference failed: ValueError: abstract token ids must be in [0, 8)")
    finally:
        node.destroy_node()


