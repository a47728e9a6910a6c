"""``load_policy``: opens a checkpoint directory whatever its format.

* native HLRP (``config.json`` with ``"type": "hlrp"``) -> :meth:`HLRPPolicy.from_pretrained`
* LeRobot SmolVLA (``config.json`` with ``"type": "smolvla"``) ->
  ``hlrp_ros.policies.lerobot_smolvla.load_lerobot_smolvla`` (imported lazily)
* native PI0 / PI0.5 (``"type": "hlrp_pi0"``) -> :meth:`PI0Policy.from_pretrained`
* LeRobot PI0 / PI0.5 (``"type": "pi0"`` / ``"pi05"``) -> ``hlrp_ros.policies.lerobot_pi0.load_lerobot_pi0``
* native diffusion (``"type": "hlrp_diffusion"``) -> :meth:`DiffusionPolicy.from_pretrained`
* LeRobot Diffusion Policy (``"type": "diffusion"``) -> ``lerobot_diffusion.load_lerobot_diffusion``
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from hlrp_ros.policies.base import ActionExpert

logger = logging.getLogger(__name__)


def checkpoint_type(path: str | Path) -> str:
    """Returns the ``"type"`` recorded in ``path/config.json`` ("hlrp" when the field is absent)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a policy checkpoint: no config.json")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
    return str(data.get("type", "hlrp"))


def load_policy(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    tokenizer_dir: str | Path | None = None,
    vision_position_ids: str = "auto",
) -> ActionExpert:
    """Loads a policy checkpoint, detecting its format.

    Args:
        path: Checkpoint directory.
        device: "cpu", "cuda", "cuda:0", ...
        dtype: "float32" or "bfloat16" (or a torch dtype).
        tokenizer_dir: Tokenizer directory overriding the checkpoint's own (LeRobot checkpoints carry none).
        vision_position_ids: LeRobot SmolVLA checkpoints only: "auto" (the rule of the LeRobot generation
            that wrote it), "transformers4" or "transformers5" (see ``lerobot_smolvla``).

    Returns:
        The policy, in eval mode, implementing :class:`ActionExpert`.
    """
    kind = checkpoint_type(path)
    logger.info("loading %s checkpoint from %s (device=%s, dtype=%s)", kind, path, device, dtype)
    if kind == "smolvla":
        from hlrp_ros.policies.lerobot_smolvla import load_lerobot_smolvla

        return load_lerobot_smolvla(path, device, dtype, tokenizer_dir=tokenizer_dir,
                                    vision_position_ids=vision_position_ids)
    if vision_position_ids != "auto":
        raise ValueError(f"vision_position_ids={vision_position_ids!r} applies to LeRobot SmolVLA checkpoints only; "
                         f"{path} is a {kind!r} checkpoint (its own config decides)")
    if kind in ("pi0", "pi05"):
        from hlrp_ros.policies.lerobot_pi0 import load_lerobot_pi0

        return load_lerobot_pi0(path, device, dtype, tokenizer_dir=tokenizer_dir)
    if kind == "hlrp_pi0":
        from hlrp_ros.policies.pi0.modeling_pi0 import PI0Policy

        return PI0Policy.from_pretrained(path, device=device, dtype=dtype, tokenizer_dir=tokenizer_dir)
    if kind == "hlrp":
        from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy

        return HLRPPolicy.from_pretrained(path, device=device, dtype=dtype, tokenizer_dir=tokenizer_dir)
    if kind == "diffusion":
        from hlrp_ros.policies.lerobot_diffusion import load_lerobot_diffusion

        return load_lerobot_diffusion(path, device, dtype)
    if kind == "hlrp_diffusion":
        from hlrp_ros.policies.diffusion.modeling_diffusion import DiffusionPolicy

        return DiffusionPolicy.from_pretrained(path, device=device, dtype=dtype, tokenizer_dir=tokenizer_dir)
    known = "'hlrp', 'hlrp_pi0', 'hlrp_diffusion' or LeRobot's 'smolvla', 'pi0', 'pi05', 'diffusion'"
    raise ValueError(f"unsupported checkpoint type {kind!r} in {path}/config.json (expected {known})")
