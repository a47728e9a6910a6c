"""LeRobot Diffusion Policy checkpoints served by hlrp_ros reproduce LeRobot 0.6.1's actions.

The fixtures under ``test/fixtures/lerobot_diffusion`` were produced by LeRobot 0.6.1 itself
(``scripts/make_lerobot_diffusion_fixtures.py``, run in a separate venv): two tiny checkpoints saved the
LeRobot way (``model.safetensors`` stored gzip-compressed), batches of two ``n_obs_steps = 2`` histories
(uint8 images, states), the initial noise, and the actions of LeRobot's preprocessor ->
``predict_action_chunk`` -> postprocessor, for DDIM (deterministic from the noise) and DDPM (per-step noise
from torch's generator seeded with ``sampling_seed``; here from a ``torch.Generator`` with the same seed).
LeRobot is not needed to run these tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_fixtures import LEROBOT_DIFFUSION_FIXTURES, unpack_lerobot_diffusion
from safetensors.torch import load_file

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.diffusion import DiffusionPolicy
from hlrp_ros.policies.diffusion import modeling_diffusion as md
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.policies.lerobot_diffusion import LeRobotCheckpointError, load_lerobot_diffusion

FIXTURES = LEROBOT_DIFFUSION_FIXTURES
META = json.loads((FIXTURES / "cases.json").read_text())["fixtures"]
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lerobot_diffusion")
    return {name: unpack_lerobot_diffusion(name, root) for name in META}


@pytest.fixture(scope="module")
def policies(checkpoints) -> dict[str, DiffusionPolicy]:
    return {name: load_policy(path) for name, path in checkpoints.items()}


@pytest.fixture(scope="module")
def cases() -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(FIXTURES / name / "cases.safetensors")) for name in META}


def observation(name: str, case: dict[str, torch.Tensor], row: int) -> Observation:
    """Row ``row`` of a fixture batch: the newest step, the earlier ones as its history."""
    meta = META[name]
    steps = [Observation(images={c: case[f"images.{c}"][row, s].numpy() for c in meta["cameras"]},
                         state=case["state"][row, s].numpy(), instruction="ignored by the standard policy")
             for s in range(meta["n_obs_steps"])]
    steps[-1].history = steps[:-1]
    return steps[-1]


PARAMS = [(name, n) for name, meta in META.items() for n in meta["step_counts"]]


def test_fixtures_cover_the_acceptance_matrix():
    assert {m["scheduler"] for m in META.values()} == {"DDIM", "DDPM"}
    assert all(m["n_obs_steps"] == 2 and m["batch_size"] >= 2 for m in META.values())
    assert sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()) < 3e6


@pytest.mark.parametrize(("name", "num_steps"), PARAMS)
def test_actions_match_lerobot(policies, cases, name, num_steps):
    """The batch as LeRobot ran it (DDPM's per-step noise is drawn for the whole batch)."""
    meta, case = META[name], cases[name]
    policy = policies[name]
    batch = [observation(name, case, r) for r in range(meta["batch_size"])]
    generator = torch.Generator().manual_seed(meta["sampling_seed"])
    actions = policy.sample_chunk(policy.encode_prefix(batch), num_steps=num_steps, noise=case["noise"],
                                  generator=generator)
    expected = case[f"actions.steps{num_steps}"]
    assert actions.dtype == torch.float32 and actions.shape == expected.shape
    diff = (actions - expected).abs().max().item()
    assert diff <= TOL, f"{name}, {num_steps} steps: max abs diff {diff:.3g} > {TOL}"


def test_single_observations_match_lerobot_with_ddim(policies, cases):
    """DDIM is deterministic from the initial noise: each row alone (the policy node's path) matches."""
    case, policy = cases["ddim"], policies["ddim"]
    for row in range(META["ddim"]["batch_size"]):
        for n in META["ddim"]["step_counts"]:
            actions = policy.predict_action_chunk(observation("ddim", case, row), num_steps=n,
                                                  noise=case["noise"][row])
            assert (actions - case[f"actions.steps{n}"][row]).abs().max().item() <= TOL


def test_matmul_convolutions_match_lerobot(policies, cases, monkeypatch):
    """The fixtures' convolutions are small; forced onto the GEMM path (large models' path) they still match."""
    monkeypatch.setattr(md, "MATMUL_MIN_WEIGHT", 0)
    case, policy = cases["ddim"], policies["ddim"]
    batch = [observation("ddim", case, r) for r in range(META["ddim"]["batch_size"])]
    actions = policy.sample_chunk(policy.encode_prefix(batch), num_steps=10, noise=case["noise"])
    assert (actions - case["actions.steps10"]).abs().max().item() <= TOL


def test_every_input_changes_the_actions(policies, cases):
    """Guards the parity test against a model that ignores an input (parity would then prove little)."""
    case, policy = cases["ddim"], policies["ddim"]
    obs = observation("ddim", case, 0)
    noise = case["noise"][0]
    base = policy.predict_action_chunk(obs, noise=noise)
    older = obs.history[0]

    def changed(**kw) -> Observation:
        return Observation(**{"images": obs.images, "state": obs.state, "instruction": obs.instruction,
                              "history": obs.history, **kw})

    variants = {
        "top image": changed(images={**obs.images, "top": 255 - obs.images["top"]}),
        "wrist image": changed(images={**obs.images, "wrist": 255 - obs.images["wrist"]}),
        "state": changed(state=obs.state + 0.5),
        "older image": changed(history=[Observation({**older.images, "top": 255 - older.images["top"]},
                                                    older.state, "")]),
        "older state": changed(history=[Observation(older.images, older.state + 0.5, "")]),
    }
    for what, variant in variants.items():
        diff = (policy.predict_action_chunk(variant, noise=noise) - base).abs().max().item()
        assert diff > 1e-3, f"changing the {what} changed the actions by only {diff:.2g}"


def test_config_conversion(policies):
    ddim, ddpm = policies["ddim"].config, policies["ddpm"].config
    assert ddim.camera_names == ["top", "wrist"] and ddim.image_size == (40, 48)
    assert (ddim.resize_shape, ddim.crop_shape, ddim.use_group_norm) == ((36, 44), (32, 39), False)
    assert ddim.use_separate_rgb_encoder_per_camera and ddim.noise_scheduler_type == "DDIM"
    assert (ddim.image_norm_mode, ddim.state_norm_mode, ddim.action_norm_mode) == ("mean_std", "min_max", "min_max")
    assert (ddim.n_obs_steps, ddim.horizon, ddim.chunk_size, ddim.num_steps) == (2, 8, 4, 10)
    assert (ddpm.crop_shape, ddpm.use_group_norm, ddpm.prediction_type) == ((28, 28), True, "sample")
    assert (ddpm.noise_scheduler_type, ddpm.num_steps, ddpm.beta_schedule) == ("DDPM", 50, "linear")
    assert (ddpm.image_norm_mode, ddpm.state_norm_mode) == ("identity", "mean_std")


def test_unsupported_checkpoints_are_named(checkpoints, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoints["ddpm"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "colour_jitter": True}))
    with pytest.raises(LeRobotCheckpointError, match="colour_jitter"):
        load_lerobot_diffusion(bad)
    env = dict(cfg["input_features"], **{"observation.environment_state": {"type": "ENV", "shape": [4]}})
    (bad / "config.json").write_text(json.dumps({**cfg, "input_features": env}))
    with pytest.raises(LeRobotCheckpointError, match="environment state"):
        load_lerobot_diffusion(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "down_dims": [16, 32, 128]}))
    with pytest.raises(LeRobotCheckpointError, match="shape"):
        load_lerobot_diffusion(bad)
