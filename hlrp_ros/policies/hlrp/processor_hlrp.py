"""Turns observations into model inputs: tokenisation, image resize-with-padding and scaling, batching.

Images: RGB ``uint8`` ``(H, W, 3)`` of any size -> float ``[0, 1]`` -> bilinear resize keeping the aspect
ratio so that it fits ``config.image_size`` -> padded on the left/top with ``image_pad_value`` -> scaled to
``[-1, 1]`` (SmolVLA / SigLIP convention). State and actions are normalised inside the model, not here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hlrp_ros.policies.base import Observation, fitted_size
from hlrp_ros.policies.hlrp.configuration_hlrp import HLRPConfig

logger = logging.getLogger(__name__)

#: Special tokens of the tiny tokenizer, at ids 0..3 (presets.TINY_* rely on this order).
TINY_SPECIAL_TOKENS = ["<pad>", "<unk>", "<fake_token_around_image>", "<global-img>"]
#: Default vocabulary of the tiny word-level tokenizer (tabletop / planar-arm instructions).
DEFAULT_TINY_WORDS = (
    "a an the to of and then on in at into onto from with near next by up down left right top bottom "
    "front back middle center centre corner side above below between far close "
    "move push pull pick place put go reach touch grasp grab drop lift lower rotate turn slide point "
    "stop open close follow avoid return home start target goal position "
    "red green blue yellow orange purple pink black white gray grey cyan brown "
    "cube block box ball sphere circle square triangle object marker dot cup bowl plate "
    "arm gripper hand tool slowly quickly first second third one two three four "
    "0 1 2 3 4 5 6 7 8 9 . , \n"
).split(" ")


def build_tiny_tokenizer(
    words: Iterable[str] | None = None,
    *,
    kind: str = "wordlevel",
    corpus: Iterable[str] | None = None,
    vocab_size: int = 128,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Builds a small tokenizer offline (no hub), wrapped as a savable ``PreTrainedTokenizerFast``.

    Ids 0..3 are ``<pad>``, ``<unk>``, ``<fake_token_around_image>``, ``<global-img>``.

    Args:
        words: Word-level vocabulary (lower-cased); None -> ``DEFAULT_TINY_WORDS``.
        kind: "wordlevel" (one id per known word, others -> ``<unk>``) or "bpe" (byte-level BPE trained on
            ``corpus``; never produces ``<unk>``).
        corpus: Training sentences for "bpe" (None -> the default words).
        vocab_size: Upper bound of the vocabulary size (must fit the model's text vocabulary).
        model_max_length: Recorded maximum length.

    Returns:
        The tokenizer; ``save_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)`` round-trip it.
    """
    if kind == "wordlevel":
        vocab: dict[str, int] = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
        for word in words if words is not None else DEFAULT_TINY_WORDS:
            word = word.lower() if word != "\n" else word
            if word and word not in vocab:
                vocab[word] = len(vocab)
        if len(vocab) > vocab_size:
            raise ValueError(f"{len(vocab)} words do not fit vocab_size={vocab_size}")
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        # Split on spaces and punctuation; "\n" (SmolVLA appends one) is its own token.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split("\n", behavior="isolated"),
             pre_tokenizers.Split(Regex(r"[ \t\r]+"), behavior="removed"),
             pre_tokenizers.Punctuation()]
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        from tokenizers import decoders

        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(TINY_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(list(corpus) if corpus is not None else [" ".join(DEFAULT_TINY_WORDS)], trainer)
        if tok.get_vocab_size() > vocab_size:
            raise ValueError(f"BPE vocabulary ({tok.get_vocab_size()}) exceeds vocab_size={vocab_size}")
    else:
        raise ValueError(f"kind must be 'wordlevel' or 'bpe', got {kind!r}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=TINY_SPECIAL_TOKENS[2:],
        model_max_length=model_max_length,
    )


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """Loads a tokenizer saved with ``save_pretrained`` from a local directory (never the hub)."""
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


@dataclass
class TokenizedText:
    """An instruction after tokenisation.

    Attributes:
        text: The text that was tokenised (newline appended when the config asks for it).
        ids: ``(1, L)`` int64 token ids.
        mask: ``(1, L)`` bool, True for real tokens.
        truncated: True when the text had more than ``tokenizer_max_length`` tokens.
        num_tokens: Token count before truncation.
    """

    text: str
    ids: Tensor
    mask: Tensor
    truncated: bool
    num_tokens: int


def resize_with_pad(img: Tensor, width: int, height: int, pad_value: float = 0.0) -> Tensor:
    """Resizes ``(B, C, H, W)`` keeping the aspect ratio, then pads left/top to ``(height, width)`` (SmolVLA)."""
    if img.ndim != 4:
        raise ValueError(f"(b, c, h, w) expected, got {tuple(img.shape)}")
    if tuple(img.shape[2:]) == (height, width):  # a bilinear resize to the same size is the identity, bit for bit
        return img
    resized_height, resized_width = fitted_size(img.shape[2], img.shape[3], height, width)
    resized = F.interpolate(img, size=(resized_height, resized_width), mode="bilinear", align_corners=False)
    pad_height, pad_width = max(0, int(height - resized_height)), max(0, int(width - resized_width))
    return F.pad(resized, (pad_width, 0, pad_height, 0), value=pad_value)


class HLRPProcessor:
    """Tokeniser and image/batch preparation for an HLRP policy.

    Args:
        config: The policy config (image size, cameras, tokenizer length, padding mode).
        tokenizer: A transformers tokenizer (e.g. from :func:`build_tiny_tokenizer` or SmolVLM's).
    """

    def __init__(self, config: HLRPConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        self.config = config
        self.tokenizer = tokenizer
        #: Number of times the tokenizer actually ran (cache misses).
        self.num_tokenizations = 0
        self._last: TokenizedText | None = None
        self._warned_truncation: set[str] = set()

    # --- language ---------------------------------------------------------------------------------------
    def _prepare_text(self, text: str) -> str:
        if self.config.append_newline and not text.endswith("\n"):
            return text + "\n"
        return text

    def tokenize(self, text: str) -> TokenizedText:
        """Tokenises one instruction; the result for the last text is cached (same text -> no tokenizer call).

        Longer instructions are truncated to ``tokenizer_max_length`` (``truncated=True``, logged once per text).
        With ``pad_language_to="max_length"`` the ids are right-padded to that length (mask False).
        """
        if self._last is not None and self._last.text == self._prepare_text(text):
            return self._last
        prepared = self._prepare_text(text)
        self.num_tokenizations += 1
        full = self.tokenizer(prepared, add_special_tokens=True)["input_ids"]
        max_len = self.config.tokenizer_max_length
        truncated = len(full) > max_len
        if truncated and prepared not in self._warned_truncation:
            self._warned_truncation.add(prepared)
            logger.warning("instruction has %d tokens, truncated to %d: %r", len(full), max_len, text)
        ids = list(full[:max_len])
        mask = [True] * len(ids)
        if self.config.pad_language_to == "max_length" and len(ids) < max_len:
            pad_id = self.tokenizer.pad_token_id or 0
            mask += [False] * (max_len - len(ids))
            ids += [pad_id] * (max_len - len(ids))
        self._last = TokenizedText(
            text=prepared,
            ids=torch.tensor([ids], dtype=torch.long),
            mask=torch.tensor([mask], dtype=torch.bool),
            truncated=truncated,
            num_tokens=len(full),
        )
        return self._last

    def tokenize_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Tokenises several instructions, right-padded (to the longest or to ``tokenizer_max_length``).

        Returns:
            ``(ids, mask, truncated)``: ``(B, L)`` int64, ``(B, L)`` bool and ``(B,)`` bool.
        """
        rows = [self.tokenize(t) for t in texts]
        max_len = max(r.ids.shape[1] for r in rows)
        pad_id = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), max_len), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max_len), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : r.ids.shape[1]] = r.ids[0]
            mask[i, : r.mask.shape[1]] = r.mask[0]
        return ids, mask, torch.tensor([r.truncated for r in rows], dtype=torch.bool)

    # --- images -----------------------------------------------------------------------------------------
    def prepare_image(self, image: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
        """RGB ``(H, W, 3)`` uint8 (or float in [0, 1]) -> ``(1, 3, h, w)`` float32 in ``[-1, 1]``.

        ``device``: where the conversion and resize run (the policy's): the image travels as it came (uint8: a
        quarter of the float bytes) and a GPU does the per-pixel work. None: where the image is (the host).
        """
        arr = torch.as_tensor(np.asarray(image))
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {tuple(arr.shape)}")
        if device is not None:
            arr = arr.to(device)
        img = arr.permute(2, 0, 1)[None].to(torch.float32)
        if arr.dtype == torch.uint8:
            img = img / 255.0
        height, width = self.config.image_size
        img = resize_with_pad(img, width, height, pad_value=self.config.image_pad_value)
        return img * 2.0 - 1.0

    def prepare_images(self, images: dict[str, np.ndarray], device: torch.device | str | None = None) -> list[Tensor]:
        """One ``(1, 3, h, w)`` tensor per configured camera, in ``camera_names`` order (on ``device``)."""
        missing = [name for name in self.config.camera_names if name not in images]
        if missing:
            raise ValueError(f"observation lacks camera(s) {missing}; has {sorted(images)}")
        return [self.prepare_image(images[name], device) for name in self.config.camera_names]

    # --- abstract tokens --------------------------------------------------------------------------------
    def prepare_abstract_tokens(self, tokens: Sequence[Sequence[int] | None]) -> tuple[Tensor, Tensor] | None:
        """Pads abstract token id lists to a ``(B, L)`` batch; None when disabled or absent everywhere."""
        cfg = self.config
        if not cfg.abstract_tokens_enabled or all(t is None or len(t) == 0 for t in tokens):
            return None
        lengths = [0 if t is None else len(t) for t in tokens]
        if max(lengths) > cfg.abstract_max_length:
            raise ValueError(f"{max(lengths)} abstract tokens exceed abstract_max_length={cfg.abstract_max_length}")
        ids = torch.zeros((len(tokens), max(lengths)), dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, t in enumerate(tokens):
            if t:
                row = torch.as_tensor(list(t), dtype=torch.long)
                if bool((row < 0).any()) or bool((row >= cfg.abstract_vocab_size).any()):
                    raise ValueError(f"abstract token ids must be in [0, {cfg.abstract_vocab_size}), got {list(t)}")
                ids[i, : len(t)] = row
                mask[i, : len(t)] = True
        return ids, mask

    # --- whole observations -----------------------------------------------------------------------------
    def collate(
        self, observations: Sequence[Observation], actions: np.ndarray | Tensor | None = None,
        image_device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Batches observations (and optional action chunks) into model inputs.

        ``image_device``: prepare the images there (see :meth:`prepare_image`); the rest stays on the host.

        Returns:
            Dict with ``images`` ``(B, n_cams, 3, h, w)``, ``image_masks`` ``(B, n_cams)``, ``lang_tokens`` and
            ``lang_masks`` ``(B, L)``, ``lang_truncated`` ``(B,)``, ``state`` ``(B, state_dim)`` (raw units), optionally ``abstract_tokens`` /
            ``abstract_masks`` ``(B, La)`` and ``actions`` ``(B, chunk_size, action_dim)`` (raw units).
        """
        if not observations:
            raise ValueError("collate needs at least one observation")
        images = torch.stack(
            [torch.cat(self.prepare_images(o.images, image_device), dim=0) for o in observations], dim=0
        )
        lang_tokens, lang_masks, truncated = self.tokenize_batch([o.instruction for o in observations])
        states = np.stack([np.asarray(o.state, dtype=np.float32).reshape(-1) for o in observations])
        if states.shape[1] != self.config.state_dim:
            raise ValueError(f"state has {states.shape[1]} values, config.state_dim is {self.config.state_dim}")
        batch = {
            "images": images,
            "image_masks": torch.ones(images.shape[:2], dtype=torch.bool),
            "lang_tokens": lang_tokens,
            "lang_masks": lang_masks,
            "lang_truncated": truncated,
            "state": torch.from_numpy(states),
        }
        abstract = self.prepare_abstract_tokens([o.abstract_tokens for o in observations])
        if abstract is not None:
            batch["abstract_tokens"], batch["abstract_masks"] = abstract
        if actions is not None:
            act = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
            expected = (len(observations), self.config.chunk_size, self.config.action_dim)
            if tuple(act.shape) != expected:
                raise ValueError(f"actions must have shape {expected}, got {tuple(act.shape)}")
            batch["actions"] = act
        return batch
