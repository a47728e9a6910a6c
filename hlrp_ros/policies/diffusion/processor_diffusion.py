"""Turns observation histories into diffusion-policy inputs: images, states, instruction tokens, batching.

Images: RGB ``uint8`` ``(H, W, 3)`` -> float ``[0, 1]`` ``(3, H, W)``; an image whose size differs from
``config.image_size`` is resized with padding to it first (as the HLRP family does). Image, state and action
normalisation happen inside the model (its statistics are part of the checkpoint), not here.

Every observation carries its history (:attr:`Observation.history`, oldest first): a policy with
``n_obs_steps = n`` gets ``n`` time steps per sample, the current observation last. Only the current
observation's instruction (and abstract tokens) are used, so a new instruction takes effect at the next
chunk while the images and states of the history stay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from hlrp_ros.policies.base import Observation, ObservationHistoryError
from hlrp_ros.policies.diffusion.configuration_diffusion import DiffusionConfig
from hlrp_ros.policies.hlrp.processor_hlrp import TokenizedText, resize_with_pad

logger = logging.getLogger(__name__)


def observation_steps(observation: Observation, n_obs_steps: int) -> list[Observation]:
    """``observation.history + [observation]``, checked to hold exactly ``n_obs_steps`` observations.

    Raises:
        ObservationHistoryError: ``history_short`` / ``history_long`` naming the counts.
    """
    history = list(observation.history or [])
    if len(history) != n_obs_steps - 1:
        reason = "history_short" if len(history) < n_obs_steps - 1 else "history_long"
        raise ObservationHistoryError(
            reason, f"the policy conditions on {n_obs_steps} observations: it needs {n_obs_steps - 1} earlier "
                    f"one(s) in Observation.history, got {len(history)}")
    return [*history, observation]


class DiffusionProcessor:
    """Image, state and instruction preparation for a diffusion policy.

    Args:
        config: The policy config (cameras, image size, history length, tokenizer length).
        tokenizer: A transformers tokenizer for the language-conditioned form; None for the standard one.
    """

    def __init__(self, config: DiffusionConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        #: Number of times the tokenizer actually ran (cache misses).
        self.num_tokenizations = 0
        self._last: TokenizedText | None = None
        self._warned: set[str] = set()

    # --- language ---------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> TokenizedText:
        """Tokenises one instruction (cached for the last text); truncated to ``tokenizer_max_length``.

        Without a tokenizer (the standard, language-blind policy) the instruction is not used: the result has
        no tokens and ``truncated=False``.
        """
        if self._last is not None and self._last.text == text:
            return self._last
        if self.tokenizer is None:
            empty = torch.zeros((1, 0), dtype=torch.long)
            self._last = TokenizedText(text, empty, empty.bool(), False, 0)
            return self._last
        self.num_tokenizations += 1
        full = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        limit = self.config.tokenizer_max_length
        truncated = len(full) > limit
        if truncated and text not in self._warned:
            self._warned.add(text)
            logger.warning("instruction has %d tokens, truncated to %d: %r", len(full), limit, text)
        ids = list(full[:limit]) or [self.tokenizer.pad_token_id or 0]
        mask = [bool(full)] * len(ids)
        if max(ids) >= self.config.text_vocab_size or min(ids) < 0:
            raise ValueError(f"token ids {ids} outside the text encoder's vocabulary ({self.config.text_vocab_size})")
        self._last = TokenizedText(text, torch.tensor([ids]), torch.tensor([mask]), truncated, len(full))
        return self._last

    def tokenize_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Right-padded ``(B, L)`` ids and masks of several instructions."""
        rows = [self.tokenize(t) for t in texts]
        length = max(1, max(r.ids.shape[1] for r in rows))
        pad = (self.tokenizer.pad_token_id or 0) if self.tokenizer is not None else 0
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : r.ids.shape[1]] = r.ids[0]
            mask[i, : r.mask.shape[1]] = r.mask[0]
        return ids, mask

    # --- abstract tokens --------------------------------------------------------------------------------
    def prepare_abstract_tokens(self, tokens: Sequence[Sequence[int] | None]) -> tuple[Tensor, Tensor]:
        """Pads abstract token id lists to ``(B, L)`` ids and masks (all-False rows where absent)."""
        cfg = self.config
        lengths = [0 if t is None else len(t) for t in tokens]
        if max(lengths) > cfg.abstract_max_length:
            raise ValueError(f"{max(lengths)} abstract tokens exceed abstract_max_length={cfg.abstract_max_length}")
        ids = torch.zeros((len(tokens), max(1, max(lengths))), dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, t in enumerate(tokens):
            if t:
                row = torch.as_tensor(list(t), dtype=torch.long)
                if bool((row < 0).any()) or bool((row >= cfg.abstract_vocab_size).any()):
                    raise ValueError(f"abstract token ids must be in [0, {cfg.abstract_vocab_size}), got {list(t)}")
                ids[i, : len(t)] = row
                mask[i, : len(t)] = True
        return ids, mask

    # --- images and state -------------------------------------------------------------------------------
    def prepare_image(self, image: np.ndarray | Tensor) -> Tensor:
        """RGB ``(H, W, 3)`` uint8 (or float in [0, 1]) -> ``(3, h, w)`` float32 in ``[0, 1]``."""
        arr = torch.as_tensor(np.asarray(image))
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {tuple(arr.shape)}")
        img = arr.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
        if arr.dtype == torch.uint8:
            img = img / 255.0
        height, width = self.config.image_size
        if tuple(img.shape[1:]) != (height, width):
            img = resize_with_pad(img[None], width, height)[0]
        return img

    def _step_inputs(self, obs: Observation) -> tuple[Tensor, Tensor]:
        missing = [name for name in self.config.camera_names if name not in obs.images]
        if missing:
            raise ValueError(f"observation lacks camera(s) {missing}; has {sorted(obs.images)}")
        images = torch.stack([self.prepare_image(obs.images[name]) for name in self.config.camera_names])
        state = torch.as_tensor(np.asarray(obs.state, dtype=np.float32).reshape(-1))
        if state.shape[0] != self.config.state_dim:
            raise ValueError(f"state has {state.shape[0]} values, config.state_dim is {self.config.state_dim}")
        return images, state

    def collate(
        self, observations: Sequence[Observation], actions: np.ndarray | Tensor | None = None
    ) -> dict[str, Tensor]:
        """Batches observations (each with its history) and optional action trajectories.

        Returns:
            ``images`` ``(B, S, N, 3, h, w)`` in [0, 1], ``state`` ``(B, S, state_dim)`` (raw units), with
            ``S = n_obs_steps`` and ``N`` cameras; for the language-conditioned form ``lang_tokens`` /
            ``lang_masks`` ``(B, L)``; with abstract tokens ``abstract_tokens`` / ``abstract_masks``; and
            ``actions`` ``(B, horizon, action_dim)`` (raw units) when given.
        """
        if not observations:
            raise ValueError("collate needs at least one observation")
        steps = [observation_steps(o, self.config.n_obs_steps) for o in observations]
        per_step = [[self._step_inputs(s) for s in row] for row in steps]
        batch = {
            "images": torch.stack([torch.stack([img for img, _ in row]) for row in per_step]),
            "state": torch.stack([torch.stack([st for _, st in row]) for row in per_step]),
        }
        if self.config.language_conditioned:
            batch["lang_tokens"], batch["lang_masks"] = self.tokenize_batch([o.instruction for o in observations])
        if self.config.abstract_tokens_enabled:
            batch["abstract_tokens"], batch["abstract_masks"] = self.prepare_abstract_tokens(
                [o.abstract_tokens for o in observations])
        if actions is not None:
            act = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
            expected = (len(observations), self.config.horizon, self.config.action_dim)
            if tuple(act.shape) != expected:
                raise ValueError(f"actions must have shape {expected}, got {tuple(act.shape)}")
            batch["actions"] = act
        return batch
