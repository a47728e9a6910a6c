"""LeRobot 0.6 PI0 and PI0.5 checkpoints served by the native PI0 family reproduce LeRobot's actions.

The fixtures under ``test/fixtures/lerobot_pi0`` were produced by LeRobot 0.6.1 itself
(``scripts/make_lerobot_pi0_fixtures.py``, run in a separate venv): tiny ``pi0`` and ``pi05`` checkpoints
saved the LeRobot way (shrunk below the sizes their variant names stand for), the tokenizer they were made
with, observation batches (two cameras of sizes other than the model's and of each other, batch 2 with
prompts of different lengths, one longer than the tokenizer limit), the noise, and the un-normalised chunks
of LeRobot's preprocessor -> ``predict_action_chunk`` -> postprocessor for 10, 3 and 1 denoising steps.
LeRobot is not needed to run these tests.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.factory import load_policy
from hlrp_ros.policies.lerobot_pi0 import load_lerobot_pi0
from hlrp_ros.policies.lerobot_smolvla import LeRobotCheckpointError
from hlrp_ros.policies.pi0 import PI0Policy

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot_pi0"
TOKENIZER = FIXTURES / "tokenizer"
META = json.loads((FIXTURES / "cases.json").read_text())
KINDS = ["pi0", "pi05"]
TOL = 1e-4


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "cases.safetensors"))


@pytest.fixture(scope="module", params=KINDS)
def loaded(request) -> tuple[str, PI0Policy]:
    return request.param, load_policy(FIXTURES / request.param, tokenizer_dir=TOKENIZER)


def observations(cases, kind: str, case: int, **changes) -> list[Observation]:
    meta = META["checkpoints"][kind][case]
    out = []
    for row in range(meta["batch_size"]):
        obs = Observation(
            images={k.removeprefix("observation.images."): cases[f"{kind}.case{case}.{k}"][row].numpy()
                    for k in meta["image_keys"]},
            state=cases[f"{kind}.case{case}.state"][row].numpy(),
            instruction=meta["tasks"][row],
        )
        for key, value in changes.items():
            setattr(obs, key, value)
        out.append(obs)
    return out


def test_fixtures_cover_the_acceptance_matrix():
    assert META["lerobot_version"].startswith("0.6")
    assert sorted(META["checkpoints"]) == KINDS and sorted(META["step_counts"]) == [1, 3, 10]
    for kind in KINDS:
        metas = META["checkpoints"][kind]
        assert any(m["batch_size"] == 2 and len({len(t) for t in m["tasks"]}) == 2 for m in metas)
        assert all(len(m["image_sizes"]) == 2 and len({tuple(s) for s in m["image_sizes"].values()}) == 2
                   for m in metas)
    assert sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()) < 5e6


@pytest.mark.parametrize("case", range(len(META["checkpoints"]["pi0"])))
def test_actions_match_lerobot(loaded, cases, case):
    """Batched (as LeRobot ran them), through encode_prefix once and sample_chunk per step count."""
    kind, policy = loaded
    prefix = policy.encode_prefix(observations(cases, kind, case))
    for n in META["step_counts"]:
        expected = cases[f"{kind}.case{case}.actions.steps{n}"]
        actions = policy.sample_chunk(prefix, num_steps=n, noise=cases[f"{kind}.case{case}.noise"])
        assert actions.dtype == torch.float32 and actions.shape == expected.shape
        diff = (actions - expected).abs().max().item()
        assert diff <= TOL, f"{kind} case {case}, {n} steps: max abs diff {diff:.3g} > {TOL}"


def test_single_observation_matches_its_batch_row(loaded, cases):
    kind, policy = loaded
    obs = observations(cases, kind, 1)[1]
    actions = policy.predict_action_chunk(obs, num_steps=10, noise=cases[f"{kind}.case1.noise"][1])
    assert (actions - cases[f"{kind}.case1.actions.steps10"][1]).abs().max().item() <= TOL


def test_every_input_changes_the_actions(loaded, cases):
    """Guards parity against a model that ignores an input (PI0.5 sees the state only through its prompt)."""
    kind, policy = loaded
    noise = cases[f"{kind}.case0.noise"][0]
    obs = observations(cases, kind, 0)[0]
    base = policy.predict_action_chunk(obs, noise=noise, num_steps=2)
    variants = {
        "instruction": Observation(obs.images, obs.state, "open the drawer"),
        "state": Observation(obs.images, obs.state + 0.5, obs.instruction),
        "image top": Observation({**obs.images, "top": 255 - obs.images["top"]}, obs.state, obs.instruction),
        "image wrist": Observation({**obs.images, "wrist": 255 - obs.images["wrist"]}, obs.state, obs.instruction),
    }
    for name, changed in variants.items():
        diff = (policy.predict_action_chunk(changed, noise=noise, num_steps=2) - base).abs().max().item()
        assert diff > 1e-3, f"{kind}: changing the {name} changed the actions by only {diff:.2g}"


def test_config_conversion(loaded):
    kind, policy = loaded
    cfg = policy.config
    assert cfg.variant == kind and cfg.camera_names == ["top", "wrist"] and cfg.image_size == (32, 32)
    assert (cfg.state_dim, cfg.action_dim, cfg.max_state_dim, cfg.max_action_dim) == (7, 6, 32, 32)
    assert (cfg.chunk_size, cfg.num_steps, cfg.pad_language_to) == (10, 10, "max_length")
    # Shrunk checkpoints: sizes from the weights, the variant's 8 heads kept.
    assert cfg.paligemma == {"width": 64, "depth": 2, "mlp_dim": 128, "num_heads": 8, "num_kv_heads": 1, "head_dim": 16}
    assert cfg.expert["width"] == 32 and cfg.vision["hidden_size"] == 32 and cfg.vocab_size == 300
    if kind == "pi0":
        assert (cfg.state_norm_mode, cfg.action_norm_mode, cfg.append_newline) == ("mean_std", "mean_std", True)
    else:  # QUANTILES -> min_max over q01/q99
        assert (cfg.state_norm_mode, cfg.action_norm_mode, cfg.append_newline) == ("min_max", "min_max", False)
        stats = load_file(str(FIXTURES / "pi05" / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
        assert torch.equal(policy.normalize_state.min, stats["observation.state.q01"])
        assert torch.equal(policy.normalize_state.max, stats["observation.state.q99"])


# --- failures name what is wrong -------------------------------------------------------------------------
@pytest.fixture
def ckpt_copy(tmp_path) -> Path:
    dst = tmp_path / "pi0"
    shutil.copytree(FIXTURES / "pi0", dst)
    return dst


def _edit_config(path: Path, **changes) -> None:
    data = json.loads((path / "config.json").read_text())
    data.update(changes)
    (path / "config.json").write_text(json.dumps(data))


def test_unknown_config_key_is_a_warning_naming_it(ckpt_copy, caplog):
    _edit_config(ckpt_copy, some_future_option=True)
    with caplog.at_level(logging.WARNING, logger="hlrp_ros.policies.lerobot_pi0"):
        load_lerobot_pi0(ckpt_copy, tokenizer_dir=TOKENIZER)
    assert "some_future_option" in caplog.text


def test_unsupported_settings_fail_naming_them(ckpt_copy):
    _edit_config(ckpt_copy, use_relative_actions=True)
    with pytest.raises(LeRobotCheckpointError, match="use_relative_actions"):
        load_lerobot_pi0(ckpt_copy, tokenizer_dir=TOKENIZER)


def test_unknown_and_missing_tensors_fail_naming_them(ckpt_copy):
    weights = ckpt_copy / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.extra_head.weight"] = torch.zeros(2, 2)
    del tensors["model.state_proj.bias"]
    save_file(tensors, str(weights))
    with pytest.raises(LeRobotCheckpointError, match=r"model.state_proj.bias.*model.extra_head.weight"):
        load_lerobot_pi0(ckpt_copy, tokenizer_dir=TOKENIZER)


def test_embedding_taken_from_the_tied_head_when_absent(ckpt_copy, cases):
    weights = ckpt_copy / "model.safetensors"
    tensors = load_file(str(weights))
    key = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    tensors["model.paligemma_with_expert.paligemma.lm_head.weight"] = tensors.pop(key)
    save_file(tensors, str(weights))
    policy = load_lerobot_pi0(ckpt_copy, tokenizer_dir=TOKENIZER)
    actions = policy.sample_chunk(policy.encode_prefix(observations(cases, "pi0", 0)), noise=cases["pi0.case0.noise"])
    assert (actions - cases["pi0.case0.actions.steps10"]).abs().max().item() <= TOL


def test_missing_tokenizer_names_what_to_pass():
    with pytest.raises(FileNotFoundError, match="tokenizer_dir"):
        load_lerobot_pi0(FIXTURES / "pi0")
