"""LeRobot 0.6 SmolVLA checkpoints load and reproduce LeRobot 0.6.1's actions.

The fixtures under ``test/fixtures/lerobot06_smolvla`` were made by LeRobot 0.6.1 itself
(``scripts/make_lerobot_fixtures.py`` run with its venv; same spec as the 0.4.4 fixtures): its config.json
carries ``pretrained_revision`` (a key 0.4.x does not know), and LeRobot 0.6 runs transformers 5, whose
SmolVLM vision position ids are ``0..n-1`` where transformers 4 shared the first two buckets of an axis.
LeRobot is not needed to run these tests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.policies.lerobot_smolvla import load_lerobot_smolvla

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot06_smolvla"
OLD_FIXTURES = Path(__file__).parent / "fixtures" / "lerobot_smolvla"
CKPT = FIXTURES / "checkpoint"
VLM = FIXTURES / "vlm"
META = json.loads((FIXTURES / "cases.json").read_text())
TOL = 1e-4
ROWS = [(c, r) for c, meta in enumerate(META["cases"]) for r in range(meta["batch_size"])]


@pytest.fixture(scope="module")
def policy():
    return load_lerobot_smolvla(CKPT, tokenizer_dir=VLM)


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "cases.safetensors"))


def observation(cases: dict[str, torch.Tensor], case: int, row: int) -> Observation:
    meta = META["cases"][case]
    return Observation(
        images={key.removeprefix("observation.images."): cases[f"case{case}.{key}"][row].numpy()
                for key in meta["image_keys"]},
        state=cases[f"case{case}.state"][row].numpy(),
        instruction=meta["tasks"][row],
    )


def max_diff(policy, cases, case: int, row: int, num_steps: int) -> float:
    actions = policy.predict_action_chunk(observation(cases, case, row), num_steps=num_steps,
                                          noise=cases[f"case{case}.noise"][row])
    return (actions - cases[f"case{case}.actions.steps{num_steps}"][row]).abs().max().item()


def test_fixtures_were_made_by_lerobot_06_and_cover_the_matrix():
    assert META["lerobot_version"].startswith("0.6.")
    assert sorted(META["step_counts"]) == [1, 3, 10] and len(ROWS) >= 3
    assert "pretrained_revision" in json.loads((CKPT / "config.json").read_text())
    assert sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()) < 5e6


@pytest.mark.parametrize("num_steps", META["step_counts"])
@pytest.mark.parametrize(("case", "row"), ROWS)
def test_actions_match_lerobot_06(policy, cases, case, row, num_steps):
    diff = max_diff(policy, cases, case, row, num_steps)
    assert diff <= TOL, f"case {case} row {row}, {num_steps} steps: max abs diff {diff:.3g} > {TOL}"


def test_the_checkpoint_loads_without_warnings(caplog):
    with caplog.at_level(logging.WARNING, logger="hlrp_ros.policies.lerobot_smolvla"):
        load_lerobot_smolvla(CKPT, tokenizer_dir=VLM)
    assert "unknown" not in caplog.text


def test_vision_position_rule_is_detected_from_the_checkpoint(policy):
    assert policy.config.legacy_vision_position_ids is False
    assert load_lerobot_smolvla(OLD_FIXTURES / "checkpoint", tokenizer_dir=OLD_FIXTURES / "vlm").config.legacy_vision_position_ids


def test_the_transformers4_rule_would_not_match(cases):
    """Guards the detection: on these fixtures the rule changes the actions far beyond the tolerance."""
    forced = load_lerobot_smolvla(CKPT, tokenizer_dir=VLM, vision_position_ids="transformers4")
    assert forced.config.legacy_vision_position_ids is True
    assert max_diff(forced, cases, 0, 0, 3) > 1e-2


def test_the_rule_can_be_overridden_through_load_policy(cases):
    old = OLD_FIXTURES / "checkpoint"
    forced = load_policy(old, tokenizer_dir=OLD_FIXTURES / "vlm", vision_position_ids="transformers5")
    assert forced.config.legacy_vision_position_ids is False
    assert load_policy(CKPT, tokenizer_dir=VLM, vision_position_ids="transformers5").config.legacy_vision_position_ids is False


def test_an_unknown_rule_is_rejected_naming_the_choices():
    with pytest.raises(ValueError, match=r"vision_position_ids must be one of \('auto', 'transformers4', 'transformers5'\)"):
        load_lerobot_smolvla(CKPT, tokenizer_dir=VLM, vision_position_ids="4.57")
