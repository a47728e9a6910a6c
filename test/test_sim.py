"""Tests of the ROS-free demo world (hlrp_ros.sim) and of the demo_sim node over real rclpy."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from hlrp_ros.sim.expert import EXPERT_SPEED, expert_chunk, expert_step, inverse_kinematics
from hlrp_ros.sim.language import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, make_instruction, parse_colour
from hlrp_ros.sim.render import COLOUR_RGB, Camera, render
from hlrp_ros.sim.world import COLOURS, ArmSpec, World, WorldSpec, forward_kinematics


def test_arm_has_three_limited_revolute_joints():
    arm = ArmSpec()
    assert arm.dof >= 3
    assert all(lo < hi for lo, hi in zip(arm.lower, arm.upper))
    with pytest.raises(ValueError):
        ArmSpec(joint_names=("a", "b"), link_lengths=(1, 1), lower=(0, 0), upper=(1, 1), velocity_limits=(1, 1))


def test_forward_kinematics_straight_arm():
    arm = ArmSpec()
    points = forward_kinematics(arm, np.zeros(3))
    assert np.allclose(points[-1], [arm.reach, 0.0])


def test_targets_random_per_episode_distinct_and_separated():
    world = World(seed=1)
    layouts = []
    for seed in range(20):
        world.reset(seed=seed)
        colours = [t.colour for t in world.targets]
        assert len(colours) == len(set(colours)) == world.spec.num_targets >= 3
        pos = np.array([t.position for t in world.targets])
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos)) * 9
        assert d.min() >= world.spec.min_target_separation
        layouts.append(pos)
    assert not np.allclose(layouts[0], layouts[1])
    world.reset(seed=5)
    a = [t.position.copy() for t in world.targets]
    world.reset(seed=5)
    assert all(np.allclose(x, t.position) for x, t in zip(a, world.targets))


def test_step_respects_velocity_and_position_limits():
    world = World(seed=0)
    arm = world.spec.arm
    q0 = world.q.copy()
    world.set_command(q0 + 10.0)
    world.step(0.1)
    assert np.allclose(np.abs(world.q - q0), np.minimum(np.asarray(arm.velocity_limits) * 0.1,
                                                        np.asarray(arm.upper) - q0))
    for _ in range(200):
        world.step(0.1)
    assert np.allclose(world.q, arm.upper)


def test_ik_reaches_every_sampled_target_within_limits():
    world = World(seed=0)
    arm = world.spec.arm
    for seed in range(300):
        world.reset(seed=seed)
        for t in world.targets:
            q = inverse_kinematics(arm, t.position)
            assert np.all(q >= arm.lower) and np.all(q <= arm.upper)
            assert np.allclose(forward_kinematics(arm, q)[-1], t.position, atol=1e-6)


def test_expert_reaches_the_instructed_target():
    world = World(seed=0)
    dt = 0.1
    for seed in range(50):
        world.reset(seed=seed)
        colour = world.targets[seed % len(world.targets)].colour
        goal = inverse_kinematics(world.spec.arm, world.target(colour).position)
        for _ in range(60):
            world.set_command(expert_step(world.q, goal, dt))
            world.step(dt)
        assert world.on_target(colour)
        assert world.nearest_target()[0] == colour


def test_expert_chunk_rows_follow_the_speed():
    q = np.zeros(3)
    goal = np.array([1.0, -0.5, 0.2])
    chunk = expert_chunk(q, goal, 16, 0.1)
    steps = np.abs(np.diff(np.vstack([q, chunk]), axis=0)).max(axis=1)
    assert np.all(steps <= EXPERT_SPEED * 0.1 + 1e-9)
    assert np.allclose(chunk[-1], goal)


def test_render_shows_targets_in_their_colours():
    world = World(seed=2)
    img = render(world, 64, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    cam = Camera(world.spec, 64, 64)
    for t in world.targets:
        u, v = cam.to_pixel(t.position).astype(int)
        patch = img[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2].reshape(-1, 3).astype(int)
        dist = np.abs(patch - np.array(COLOUR_RGB[t.colour])).sum(axis=1)
        assert dist.min() < 60, t.colour
    big = render(world, 200, 160)
    assert big.shape == (160, 200, 3)
    # The arm moves -> the image changes.
    world.q = world.q + 0.5
    assert not np.array_equal(render(world, 64, 64), img)


def test_instructions_name_their_colour_and_splits_are_disjoint():
    rng = np.random.default_rng(0)
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    for colour in COLOURS:
        for split in ("train", "heldout"):
            for _ in range(10):
                assert parse_colour(make_instruction(colour, rng, split)) == colour
    assert parse_colour("go somewhere") is None
    assert parse_colour("not red but BLUE") == "blue"


def test_world_spec_validation():
    with pytest.raises(ValueError):
        WorldSpec(num_targets=9)


# --- the node, over real rclpy -------------------------------------------------------------------

def _spin_until(node, executor, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
        if predicate():
            return True
    return False


@pytest.mark.ros
def test_demo_sim_node_camera_joints_commands_reset_and_success(node_process, rclpy_context):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    sim = node_process("demo_sim", params={"camera_rate": 20.0, "seed": 3, "success_dwell": 0.2})
    node = Node("test_demo_sim", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    got: dict[str, list] = {"image": [], "joints": [], "status": []}
    node.create_subscription(Image, "camera/image_raw", got["image"].append, 10)
    node.create_subscription(JointState, "joint_states", got["joints"].append, 10)
    node.create_subscription(String, "demo_sim/episode", lambda m: got["status"].append(json.loads(m.data)), 10)
    cmd_pub = node.create_publisher(JointState, "joint_command", 10)
    reset_pub = node.create_publisher(String, "demo_sim/reset", 10)
    instr_pub = node.create_publisher(String, "instruction", 10)
    try:
        assert _spin_until(node, executor, lambda: got["image"] and got["joints"] and got["status"], 30.0), \
            sim.output()
        img = got["image"][-1]
        assert (img.height, img.width, img.encoding) == (64, 64, "rgb8") and len(img.data) == 64 * 64 * 3
        js = got["joints"][-1]
        assert list(js.name) == ["joint_1", "joint_2", "joint_3"]

        # Reset with a seed and a goal; command the expert's goal configuration.
        assert _spin_until(node, executor, lambda: reset_pub.get_subscription_count() > 0, 10.0)
        reset_pub.publish(String(data=json.dumps({"seed": 11, "target": "blue"})))
        instr_pub.publish(String(data="reach the blue target"))
        assert _spin_until(node, executor, lambda: got["status"][-1]["episode"] == 1, 10.0)
        status = got["status"][-1]
        assert status["goal"] == "blue" and not status["success"]
        world = World(seed=0)
        goal_q = inverse_kinematics(world.spec.arm, np.array(status["targets"]["blue"]))
        start = np.array(status["q"])
        t0 = time.monotonic()
        cmd = JointState(name=["joint_1", "joint_2", "joint_3"], position=goal_q.tolist())
        ok = _spin_until(node, executor, lambda: (cmd_pub.publish(cmd), got["status"][-1]["success"])[1], 30.0)
        assert ok, got["status"][-1]
        elapsed = time.monotonic() - t0
        # Velocity limit: the largest joint move cannot take less than distance / limit.
        min_time = np.max(np.abs(goal_q - start)) / max(world.spec.arm.velocity_limits)
        assert elapsed >= 0.8 * min_time
        assert got["status"][-1]["nearest"] == "blue"
        # A new instruction changes the goal and clears success.
        instr_pub.publish(String(data="go to the red disc"))
        assert _spin_until(node, executor, lambda: got["status"][-1]["goal"] == "red", 10.0)
        assert not got["status"][-1]["success"]
    finally:
        node.destroy_node()
    assert sim.stop() == 0, sim.output()


def test_success_is_staying_on_the_goal_for_the_dwell_time_and_is_latched():
    from hlrp_ros.sim.success import GoalDwell

    goal = GoalDwell(0.5)
    times = [round(0.1 * i, 10) for i in range(1, 20)]
    on = [False, True, True, False, True, True, True, True, True, True, False, False] + [False] * 7
    for t, o in zip(times, on):
        goal.update(o, t)
        if t < 0.5:
            assert goal.reached == any(on[: times.index(t) + 1]) and not goal.success
    # on at 0.2-0.3 (left), back at 0.5: 0.5 s later (1.0, summed from 0.1 steps) it counts; leaving keeps it
    assert goal.success and goal.success_time == times[9]
    summed, t = GoalDwell(0.5), 0.0
    for i in range(7):  # on from the 2nd step (t = 0.2); at the 7th, t - 0.2 = 0.49999999999999994
        t += 0.1
        summed.update(i >= 1, t)
    assert summed.success and summed.success_time == t
    arrival = GoalDwell(0.0)  # a dwell of 0 succeeds on arrival
    arrival.update(True, 3.0)
    assert arrival.success_time == 3.0
