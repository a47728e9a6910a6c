"""The Meta-World wrapper: tasks, seeds, absolute commands, success, image orientation, the tuned renderer."""

from __future__ import annotations

import numpy as np
import pytest

metaworld_env = pytest.importorskip("hlrp_ros.sim.metaworld_env")
pytest.importorskip("metaworld", reason="metaworld is in requirements.txt; run `make setup`")

from hlrp_ros.sim.metaworld_env import (  # noqa: E402
    HELDOUT_INSTRUCTIONS,
    INSTRUCTIONS,
    MT10_TASKS,
    MetaWorldConfig,
    MetaWorldEnv,
    ScriptedExpert,
    gl_problem,
    instruction_for,
)

needs_gl = pytest.mark.skipif(gl_problem() is not None, reason=str(gl_problem()))


@pytest.fixture(scope="module")
def world():
    env = MetaWorldEnv(MetaWorldConfig(image_size=64))
    yield env
    env.close()


def run_expert(env: MetaWorldEnv, task: str, seed: int) -> bool:
    env.reset(task, seed)
    expert = ScriptedExpert(task)
    while not env.done and not env.success:
        env.step_target(expert.command(env))
    return env.success


def test_every_mt10_task_has_one_instruction_and_distinct_held_out_paraphrases():
    assert set(INSTRUCTIONS) == set(MT10_TASKS) == set(HELDOUT_INSTRUCTIONS)
    assert len(set(INSTRUCTIONS.values())) == len(MT10_TASKS)
    for task in MT10_TASKS:
        assert INSTRUCTIONS[task] not in HELDOUT_INSTRUCTIONS[task]
        assert instruction_for(task, "heldout", 1) == HELDOUT_INSTRUCTIONS[task][1]
    with pytest.raises(ValueError, match="unknown Meta-World task 'reach-v2'"):
        instruction_for("reach-v2")


def test_a_seed_fixes_the_layout_and_different_seeds_give_different_layouts(world):
    first = world.reset("pick-place-v3", 3).copy()
    again = world.reset("pick-place-v3", 3).copy()
    other = world.reset("pick-place-v3", 4).copy()
    np.testing.assert_array_equal(first, again)
    # Object position (obs[4:7]) and goal (obs[-3:]) move with the seed.
    assert np.linalg.norm(first[4:7] - other[4:7]) > 1e-3
    assert np.linalg.norm(first[-3:] - other[-3:]) > 1e-3


def test_the_scripted_expert_succeeds_through_absolute_commands(world):
    for task in ("reach-v3", "drawer-close-v3"):
        assert run_expert(world, task, seed=0), task
        assert world.success_step is not None and world.success_step < 200


def test_holding_the_start_pose_does_not_succeed(world):
    world.reset("push-v3", 0)
    hold = np.append(world.target(), -1.0)
    for _ in range(40):
        assert not world.step_target(hold)
    # Holding the target keeps the end effector where it was (within a few mm of settling).
    np.testing.assert_allclose(world.state()[:3], hold[:3], atol=0.02)


def test_a_target_one_step_away_reproduces_meta_worlds_delta_action(world):
    world.reset("reach-v3", 1)
    delta = np.array([0.3, -0.5, 1.0, 0.2])
    command = np.append(world.target() + delta[:3] * world.env.action_scale, delta[3])
    np.testing.assert_allclose(world.action_for_target(command), delta, atol=1e-9)
    with pytest.raises(ValueError, match="4 finite numbers"):
        world.action_for_target(np.array([0.0, 0.6, np.nan, 0.0]))


@needs_gl
def test_corner_images_are_rotated_upright_and_others_are_not():
    import mujoco

    for camera, flipped in (("corner2", True), ("topview", False)):
        env = MetaWorldEnv(MetaWorldConfig(camera=camera, image_size=32))
        try:
            env.reset("reach-v3", 0)
            cam = env.env.model.camera(camera).id
            # A camera's image "up" is its frame's +y axis; the corner cameras' points down in the world.
            up_z = env.env.data.cam_xmat[cam].reshape(3, 3)[2, 1]
            assert (up_z < 0) == flipped, camera
            image = env.render()
            renderer = env._renderer()
            renderer.update_scene(env.env.data, camera=camera)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            raw = renderer.render()
            np.testing.assert_array_equal(image, raw[::-1, ::-1] if flipped else raw)
        finally:
            env.close()


@needs_gl
def test_the_renderer_is_tuned_for_the_cpu(world):
    import mujoco

    world.reset("window-open-v3", 0)
    image = world.render()
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 10
    assert world.env.model.vis.quality.offsamples == 0
    flags = world._renderer().scene.flags
    assert flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 0 and flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="camera must be one of"):
        MetaWorldConfig(camera="front")
    with pytest.raises(ValueError, match="max_steps"):
        MetaWorldConfig(max_steps=501)
