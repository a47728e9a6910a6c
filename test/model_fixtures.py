"""Helpers shared by the model tests (tiny, seeded policies and observations)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy
from hlrp_ros.policies.hlrp.presets import make_config

LEROBOT_DIFFUSION_FIXTURES = Path(__file__).parent / "fixtures" / "lerobot_diffusion"


def unpack_lerobot_diffusion(name: str, dest: Path) -> Path:
    """The LeRobot diffusion fixture checkpoint ``name`` as LeRobot wrote it (model.safetensors decompressed)."""
    ckpt = dest / name
    shutil.copytree(LEROBOT_DIFFUSION_FIXTURES / name / "checkpoint", ckpt)
    (ckpt / "model.safetensors").write_bytes(gzip.decompress((ckpt / "model.safetensors.gz").read_bytes()))
    (ckpt / "model.safetensors.gz").unlink()
    return ckpt


def tiny_policy(seed: int = 0, **overrides: Any) -> HLRPPolicy:
    """A tiny HLRP policy with seeded random weights (``overrides`` go to the config)."""
    torch.manual_seed(seed)
    return HLRPPolicy(make_config("tiny", **overrides)).eval()


def make_observation(
    seed: int = 0,
    instruction: str = "push the red cube to the left",
    abstract_tokens: list[int] | None = None,
    image_hw: tuple[int, int] = (48, 64),
    state_dim: int = 2,
    cameras: tuple[str, ...] = ("top",),
) -> Observation:
    """A seeded observation with random uint8 images."""
    rng = np.random.default_rng(seed)
    images = {cam: rng.integers(0, 256, size=(*image_hw, 3), dtype=np.uint8) for cam in cameras}
    return Observation(
        images=images,
        state=rng.normal(size=state_dim).astype(np.float32),
        instruction=instruction,
        abstract_tokens=abstract_tokens,
    )


def fixed_noise(policy: HLRPPolicy, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    """Seeded noise ``(C, max_action_dim)`` (or ``(B, C, max_action_dim)``) for ``policy``."""
    cfg = policy.config
    shape = (cfg.chunk_size, cfg.max_action_dim) if batch is None else (batch, cfg.chunk_size, cfg.max_action_dim)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class CallCounter:
    """Counts forward calls of modules through forward hooks (use as a context manager)."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.modules = modules
        self.counts = [0] * len(modules)
        self._handles: list[Any] = []

    def __enter__(self) -> CallCounter:
        for i, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(i)))
        return self

    def _hook(self, i: int):
        def hook(*_: Any) -> None:
            self.counts[i] += 1

        return hook

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.fixture(autouse=True, scope="module")
def torch_single_thread():
    """Runs a test module on one intra-op thread (tiny models; robust on a shared, loaded CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
