"""The demo's offline tools: dataset generation, resumable seeded training, in-process rollouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hlrp_ros.datasets.training_arrays import training_arrays
from hlrp_ros.sim.expert import expert_chunk, inverse_kinematics
from hlrp_ros.sim.render import Camera
from hlrp_ros.sim.rollout import collect_episode, run_policy_episode
from hlrp_ros.sim.world import COLOURS, World
from hlrp_ros.tools import evaluate, generate_dataset, train


def test_collected_episode_labels_are_expert_chunks_toward_the_instruction():
    world = World(seed=0)
    camera = Camera(world.spec)
    ep = collect_episode(world, camera, np.random.default_rng(3), steps=12, horizon=16)
    assert ep.images.shape == (12, 64, 64, 3) and ep.actions.shape == (12, 16, 3)
    assert ep.colour in ep.instruction
    goal = inverse_kinematics(world.spec.arm, world.target(ep.colour).position)
    assert np.allclose(ep.actions[5], expert_chunk(ep.states[5].astype(float), goal, 16, 0.1), atol=1e-5)


def test_in_process_episode_with_the_expert_succeeds_and_switches():
    world = World()
    camera = Camera(world.spec)
    world.reset(seed=7)
    colours = [t.colour for t in world.targets]
    goals = {c: inverse_kinematics(world.spec.arm, world.target(c).position) for c in colours}

    def chunk_fn(image, state, instruction):
        return expert_chunk(state.astype(float), goals[instruction], 16, 0.1)

    result = run_policy_episode(world, camera, chunk_fn, colours[0], colours[0])
    assert result.success and result.final_nearest == colours[0]
    world.reset(seed=8)
    goals = {c: inverse_kinematics(world.spec.arm, world.target(c).position) for c in colours}
    result = run_policy_episode(world, camera, chunk_fn, colours[0], colours[0], switch=(0.5, colours[1], colours[1]))
    assert result.success and result.final_nearest == colours[1]


def test_hold_tells_staying_on_the_target_from_passing_it():
    world = World(seed=0)
    camera = Camera(world.spec)
    world.reset(seed=7)
    first, other = (t.colour for t in world.targets[:2])
    goals = {c: inverse_kinematics(world.spec.arm, world.target(c).position) for c in (first, other)}
    stays = run_policy_episode(world, camera, lambda image, state, instruction: expert_chunk(
        state.astype(float), goals[first], 16, 0.1), first, first, hold=2.0)
    assert stays.success and stays.final_on_target and stays.success_time is not None

    def leaves_after_success(image, state, instruction):
        goal = goals[first] if world.time < stays.success_time else goals[other]
        return expert_chunk(state.astype(float), goal, 16, 0.1)

    world.reset(seed=7)
    passes = run_policy_episode(world, camera, leaves_after_success, first, first, hold=2.0, n_action_steps=1)
    assert passes.success and not passes.final_on_target and passes.final_nearest == other


def test_evaluation_plans_are_deterministic_and_conditions_differ():
    a = evaluate.plan_episode("switch", 1000, 3, 1.0)
    assert a == evaluate.plan_episode("switch", 1000, 3, 1.0)
    assert a["switch"][2] != a["colour"] and a["switch"][2] in a["switch"][1]
    wrong = evaluate.plan_episode("wrong", 1000, 3, 1.0)
    assert wrong["colour"] != wrong["task"] and wrong["colour"] in wrong["instruction"]
    held = evaluate.plan_episode("heldout", 1000, 3, 1.0)
    from hlrp_ros.sim.language import HELDOUT_TEMPLATES

    assert any(held["instruction"] == t.format(c=held["colour"]) for t in HELDOUT_TEMPLATES)
    assert evaluate.plan_episode("blind", 1000, 3, 1.0)["instruction"] == train.BLIND_INSTRUCTION


def test_generate_train_resume(tmp_path):
    data = tmp_path / "ds"
    assert generate_dataset.main(["--episodes", "3", "--steps", "6", "--keep", "0", "--out", str(data), "--seed", "1"]) == 0
    arrays = training_arrays(data, horizon=16)
    assert arrays["images"].shape == (18, 64, 64, 3) and arrays["actions"].shape == (18, 16, 3)
    out = tmp_path / "run"
    common = ["--dataset", str(data), "--out", str(out), "--batch-size", "4", "--save-every", "2", "--seed", "5",
              "--warmup", "2", "--threads", "1"]
    assert train.main([*common, "--steps", "2"]) == 0
    assert json.loads((out / "last" / "training.json").read_text())["step"] == 2
    assert train.main([*common, "--steps", "4", "--resume"]) == 0
    info = json.loads((out / "final" / "training.json").read_text())
    assert info["seed"] == 5 and info["steps"] == 4 and "--resume" in info["command"]
    assert json.loads((out / "last" / "training.json").read_text())["step"] == 4
    from hlrp_ros.policies.factory import load_policy

    policy = load_policy(out / "final")
    assert policy.config.joint_names == ["joint_1", "joint_2", "joint_3"] and policy.config.chunk_size == 16


def test_weight_averaged_fine_tune_resumes_exactly(tmp_path, monkeypatch):
    """--init-from + --ema: an interrupted and resumed run ends with the same averaged weights as an uninterrupted one."""
    from safetensors.torch import load_file

    data = tmp_path / "ds"
    assert generate_dataset.main(["--episodes", "2", "--steps", "6", "--keep", "0", "--out", str(data), "--seed", "2"]) == 0
    common = ["--dataset", str(data), "--batch-size", "4", "--seed", "5", "--warmup", "2", "--threads", "1"]
    assert train.main([*common, "--out", str(tmp_path / "base"), "--steps", "2"]) == 0
    fine = [*common, "--steps", "6", "--save-every", "3", "--init-from", str(tmp_path / "base" / "final"), "--ema", "0.9"]
    assert train.main([*fine, "--out", str(tmp_path / "whole")]) == 0

    real_save = train.save

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        if args[2] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.main([*fine, "--out", str(tmp_path / "split")])
    monkeypatch.undo()
    assert train.main([*fine, "--out", str(tmp_path / "split"), "--resume"]) == 0
    # --stop-after: a planned stop on the same schedule; --resume finishes the run.
    assert train.main([*fine, "--out", str(tmp_path / "staged"), "--stop-after", "4"]) == 0
    assert json.loads((tmp_path / "staged" / "last" / "training.json").read_text())["step"] == 4
    assert train.main([*fine, "--out", str(tmp_path / "staged"), "--resume"]) == 0
    staged = load_file(tmp_path / "staged" / "final" / "model.safetensors")

    whole = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    split = load_file(tmp_path / "split" / "final" / "model.safetensors")
    base = load_file(tmp_path / "base" / "final" / "model.safetensors")
    assert all(torch.equal(whole[k], split[k]) and torch.equal(whole[k], staged[k]) for k in whole)
    assert any(not torch.equal(whole[k], base[k]) for k in whole)  # it did train
    # The checkpoint is the average, not the live weights (kept for resuming in the train state).
    live = torch.load(tmp_path / "whole" / "last" / train.TRAIN_STATE, weights_only=True)["live"]
    assert any(not torch.equal(live[k], whole[k]) for k in live)
    info = json.loads((tmp_path / "whole" / "final" / "training.json").read_text())
    assert info["ema"] == 0.9 and info["init_from"].endswith("base/final")


def test_word_dropout_and_random_words_never_touch_the_colour_and_are_seeded():
    policy = train.build_policy(16, 8, 64)
    texts = ["reach the blue target", "go to the red disc", "move the arm to the green one"]
    data = {"images": np.zeros((3, 64, 64, 3), np.uint8), "states": np.zeros((3, 3)), "actions": np.zeros((3, 16, 3)),
            "instruction_ids": np.arange(3), "instructions": np.array(texts)}
    batcher = train.Batcher(data, policy, blind=False, word_dropout=0.5, random_words=0.5)
    tokenizer = policy.processor.tokenizer
    seen_unk = seen_other = False
    for seed in range(20):
        out = batcher.batch(np.arange(3), np.random.default_rng(seed))
        again = batcher.batch(np.arange(3), np.random.default_rng(seed))
        assert torch.equal(out["lang_tokens"], again["lang_tokens"])
        for text, ids, mask in zip(texts, out["lang_tokens"], out["lang_masks"], strict=True):
            words = tokenizer.convert_ids_to_tokens(ids[mask].tolist())
            colour = text.split()[-2]
            # The colour stays, exactly once and no other colour appears; the newline stays last;
            # words are replaced or added, never removed.
            assert [w for w in words if w in COLOURS] == [colour] and words[-1] == "\n"
            assert len(words) >= len(text.split()) + 1
            seen_unk |= "<unk>" in words
            seen_other |= any(w not in text.split() and w not in ("<unk>", "\n") for w in words)
    assert seen_unk and seen_other
    plain = train.Batcher(data, policy, blind=False)  # off: the tokenised instructions as they are
    clean = plain.batch(np.arange(3), np.random.default_rng(0))
    assert torch.equal(clean["lang_tokens"], plain.lang[:, : clean["lang_tokens"].shape[1]])


def test_keep_records_a_random_subset_of_steps():
    world = World(seed=0)
    ep = collect_episode(world, Camera(world.spec), np.random.default_rng(1), steps=20, horizon=16, keep=4)
    assert ep.images.shape[0] == ep.states.shape[0] == ep.actions.shape[0] == 4
