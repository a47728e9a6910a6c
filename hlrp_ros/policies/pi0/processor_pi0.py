"""Observations -> PI0 / PI0.5 model inputs.

Images: RGB ``uint8`` ``(H, W, 3)`` -> float ``[0, 1]`` -> bilinear resize keeping the aspect ratio (skipped
when already at the model size), clamped to ``[0, 1]``, padded *centred* with black (openpi's
``resize_with_pad``) -> ``[-1, 1]`` for SigLIP.

Language: PI0 tokenises the instruction with a trailing ``"\\n"``; PI0.5 tokenises the prompt
``"Task: <instruction>, State: <bins>;\\nAction: "`` where ``<bins>`` is the normalised state discretised into
``config.state_bins`` bins over ``[-1, 1]``. Both pad to ``tokenizer_max_length`` (``pad_language_to``).
Tokenisation, truncation and padding are :class:`~hlrp_ros.policies.hlrp.processor_hlrp.HLRPProcessor`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from hlrp_ros.policies.base import Observation, fitted_size
from hlrp_ros.policies.hlrp.processor_hlrp import HLRPProcessor
from hlrp_ros.policies.pi0.configuration_pi0 import PI0Config


def resize_with_center_pad(img: Tensor, height: int, width: int) -> Tensor:
    """``(B, C, H, W)`` in ``[0, 1]`` -> ``(B, C, height, width)``: aspect kept, clamped, black padding centred."""
    if tuple(img.shape[2:]) == (height, width):
        return img
    new_h, new_w = fitted_size(img.shape[2], img.shape[3], height, width)
    resized = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return F.pad(resized, (left, width - new_w - left, top, height - new_h - top), value=0.0)


def discretize_state(state: Tensor, bins: int = 256) -> np.ndarray:
    """Normalised state ``(B, D)`` -> bin indices ``(B, D)`` in ``[-1, bins - 1]`` over ``[-1, 1]`` (PI0.5 prompt)."""
    edges = np.linspace(-1, 1, bins + 1)[:-1]
    return np.digitize(state.detach().cpu().to(torch.float32).numpy(), bins=edges) - 1


def pi05_prompt(instruction: str, state_bins: Sequence[int]) -> str:
    """PI0.5's prompt: the instruction (stripped, ``_`` and newlines as spaces) and the discretised state."""
    text = instruction.strip().replace("_", " ").replace("\n", " ")
    return f"Task: {text}, State: {' '.join(str(int(b)) for b in state_bins)};\nAction: "


class PI0Processor(HLRPProcessor):
    """Tokeniser and image/batch preparation for a PI0 / PI0.5 policy.

    Args:
        config: The policy config.
        tokenizer: PaliGemma's tokenizer (or a tiny one for tests).
        normalize_state: Raw ``(B, state_dim)`` -> normalised state (PI0.5 writes it into the prompt).
    """

    def __init__(self, config: PI0Config, tokenizer: PreTrainedTokenizerBase,
                 normalize_state: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(config, tokenizer)  # type: ignore[arg-type] - duck-typed config fields
        self.normalize_state = normalize_state

    def prepare_image(self, image: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
        """RGB ``(H, W, 3)`` uint8 (or float in [0, 1]) -> ``(1, 3, h, w)`` float32 in ``[-1, 1]`` (on ``device``:
        see :meth:`HLRPProcessor.prepare_image`)."""
        arr = torch.as_tensor(np.asarray(image))
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {tuple(arr.shape)}")
        if device is not None:
            arr = arr.to(device)
        img = arr.permute(2, 0, 1)[None].to(torch.float32)
        if arr.dtype == torch.uint8:
            img = img / 255.0
        height, width = self.config.image_size
        return resize_with_center_pad(img, height, width) * 2.0 - 1.0

    def prompts(self, observations: Sequence[Observation], state: Tensor) -> list[str]:
        """The texts that are tokenised: instructions (PI0) or PI0.5 prompts with the discretised state."""
        if not self.config.is_pi05:
            return [o.instruction for o in observations]
        if self.normalize_state is None:
            raise ValueError("a PI0.5 processor needs normalize_state to write the state into the prompt")
        bins = discretize_state(self.normalize_state(state), self.config.state_bins)
        return [pi05_prompt(o.instruction, row) for o, row in zip(observations, bins, strict=True)]

    def collate(
        self, observations: Sequence[Observation], actions: np.ndarray | Tensor | None = None,
        image_device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Batches observations (and optional action chunks ``(B, chunk_size, action_dim)``, raw units); images
        prepared on ``image_device`` (see :meth:`HLRPProcessor.prepare_image`).

        Returns:
            ``images`` ``(B, n_cams, 3, h, w)``, ``image_masks`` ``(B, n_cams)``, ``lang_tokens`` /
            ``lang_masks`` ``(B, L)``, ``lang_truncated`` ``(B,)``, ``state`` ``(B, state_dim)`` (raw), and
            ``actions`` when given.
        """
        if not observations:
            raise ValueError("collate needs at least one observation")
        images = torch.stack([torch.cat(self.prepare_images(o.images, image_device), dim=0) for o in observations],
                             dim=0)
        states = np.stack([np.asarray(o.state, dtype=np.float32).reshape(-1) for o in observations])
        if states.shape[1] != self.config.state_dim:
            raise ValueError(f"state has {states.shape[1]} values, config.state_dim is {self.config.state_dim}")
        state = torch.from_numpy(states)
        lang_tokens, lang_masks, truncated = self.tokenize_batch(self.prompts(observations, state))
        batch = {
            "images": images,
            "image_masks": torch.ones(images.shape[:2], dtype=torch.bool),
            "lang_tokens": lang_tokens,
            "lang_masks": lang_masks,
            "lang_truncated": truncated,
            "state": state,
        }
        if actions is not None:
            act = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
            expected = (len(observations), self.config.chunk_size, self.config.action_dim)
            if tuple(act.shape) != expected:
                raise ValueError(f"actions must have shape {expected}, got {tuple(act.shape)}")
            batch["actions"] = act
        return batch
