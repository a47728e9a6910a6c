"""Train a policy (HLRP, PI0, PI0.5 or diffusion) on a LeRobot v3.0 dataset (CPU).

    # the demo world's dataset (hlrp_ros.tools.generate_dataset):
    python -m hlrp_ros.tools.train --dataset artifacts/demo_arm/dataset_v6 --out artifacts/demo_arm/run \
        --steps 4000 --seed 0
    # any other LeRobot v3.0 dataset (recorded by recorder_node, imported from bags, or LeRobot's own):
    python -m hlrp_ros.tools.train --dataset DIR --policy hlrp --horizon 16 --out RUN
    # the other families, through their own processors (hlrp_ros.tools.train_families):
    python -m hlrp_ros.tools.train --policy diffusion --out RUN      # or pi0, pi05; diffusion: --n-obs-steps
    # interrupted? the same command with --resume continues from <out>/last
    # language-blind baseline: add --blind (the colour is withheld: every instruction is "reach the target")
    # fine-tune: --init-from <checkpoint> starts from its weights and statistics (new optimiser and schedule)

``--ema D`` keeps an exponential moving average of the weights (decay ``D``, as diffusion policies do)
and saves the average as the checkpoint: it smooths the noisy flow-matching updates, which makes the
actions more precise.

Writes ``<out>/last`` (checkpoint + optimiser state, every ``--save-every`` steps) and
``<out>/final`` (the checkpoint: ``config.json``, ``model.safetensors`` with the
normalisation statistics, ``tokenizer/``, and ``training.json`` with the command and seed).
Batches and flow-matching noise/time are a pure function of (seed, step), so a resumed run
draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hlrp_ros.policies.common.weights import tensor_problems
from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy, read_safetensors
from hlrp_ros.policies.hlrp.presets import make_config
from hlrp_ros.policies.hlrp.processor_hlrp import build_tiny_tokenizer, resize_with_pad
from hlrp_ros.sim.world import COLOURS, ArmSpec
from hlrp_ros.tools.train_families import FAMILIES, ObservationBatcher, build_family_policy

logger = logging.getLogger(__name__)
TRAIN_STATE = "train_state.pt"
#: The only instruction a language-blind model ever sees (names no colour: the task is withheld).
BLIND_INSTRUCTION = "reach the target"


def build_policy(chunk_size: int, n_action_steps: int, image_size: int,
                 joint_names: list[str] | None = None, words: list[str] | None = None,
                 rtc_max_delay: int = 0, rtc_prefix_noise: float = 0.0, state_dim: int | None = None,
                 width: int | None = None) -> HLRPPolicy:
    """The demo model: the ``tiny`` preset sized for the 3-joint arm (or ``joint_names``), fixed 2D sin-cos
    vision positions; the tiny tokenizer's default vocabulary, or ``words``; ``rtc_max_delay``: trained to
    continue chunk prefixes of up to that many actions (real-time chunking by conditioning), bent in training
    by ``rtc_prefix_noise``. ``state_dim``: when the state is not the action's joints (default: as many as
    ``joint_names``). ``width``: the text model's hidden size instead of the preset's 64 (heads of 16, the
    MLP twice as wide; the action expert follows it by ``expert_width_multiplier``)."""
    joint_names = list(joint_names) if joint_names else list(ArmSpec().joint_names)
    overrides = {}
    if width is not None:
        if width <= 0 or width % 32:
            raise ValueError(f"width must be a positive multiple of 32, got {width}")
        vlm = make_config("tiny").vlm_config
        vlm["text_config"].update(hidden_size=width, intermediate_size=2 * width, num_attention_heads=width // 16,
                                  num_key_value_heads=width // 32, head_dim=16)
        overrides["vlm_config"] = vlm
    config = make_config(
        "tiny", state_dim=state_dim or len(joint_names), action_dim=len(joint_names), joint_names=joint_names,
        image_size=(image_size, image_size), chunk_size=chunk_size, n_action_steps=n_action_steps,
        num_steps=10, vision_sincos_pos_embed=True, freeze_vision_pos_embed=True, rtc_max_delay=rtc_max_delay,
        rtc_prefix_noise=rtc_prefix_noise, **overrides,
    )
    tokenizer = None
    if words is not None:
        tokenizer = build_tiny_tokenizer(words, vocab_size=int(config.vlm_config["text_config"]["vocab_size"]))
    return HLRPPolicy(config, tokenizer=tokenizer)


def instruction_words(instructions) -> list[str]:
    """The words of ``instructions`` (as the tiny tokenizer splits them) and the punctuation it keeps."""
    words = {w for text in instructions for w in re.findall(r"\w+|[^\w\s]", str(text).lower())}
    return sorted(words | {".", ",", "\n"})


class Batcher:
    """Model-ready batches from the dataset arrays (images scaled once per batch, texts tokenised once).

    ``word_dropout`` p: each word other than the colour becomes ``<unk>`` with probability p, and with
    probability p an ``<unk>`` is inserted at a random place. ``random_words`` p: the same with a random
    vocabulary word (colours excepted) instead of ``<unk>``. Instructions at run time contain words the
    training templates never used (``<unk>`` to the word-level tokenizer, or known words whose embeddings
    no template trained); both teach the model that such words carry no task information and the
    colour word does.
    """

    def __init__(self, data: dict[str, np.ndarray], policy: HLRPPolicy, blind: bool, word_dropout: float = 0.0,
                 random_words: float = 0.0) -> None:
        self.images = torch.from_numpy(data["images"])  # (N, H, W, 3) uint8
        self.states = torch.from_numpy(data["states"].astype(np.float32))
        self.actions = torch.from_numpy(data["actions"].astype(np.float32))
        self.instr = torch.from_numpy(data["instruction_ids"].astype(np.int64))
        texts = [BLIND_INSTRUCTION if blind else str(t) for t in data["instructions"]]
        toks = [policy.processor.tokenize(t) for t in texts]
        length = max(t.ids.shape[1] for t in toks)
        self.lang = torch.zeros((len(toks), length), dtype=torch.long)
        self.lang_mask = torch.zeros((len(toks), length), dtype=torch.bool)
        for i, t in enumerate(toks):
            self.lang[i, : t.ids.shape[1]] = t.ids[0]
            self.lang_mask[i, : t.ids.shape[1]] = t.mask[0]
        self.config = policy.config
        self.word_dropout, self.random_words = word_dropout, random_words
        tokenizer = policy.processor.tokenizer
        self.unk_id = tokenizer.unk_token_id
        # Never replaced: the colour words, the trailing newline, and special tokens (ids below the first word).
        self.protected = torch.tensor(tokenizer.convert_tokens_to_ids([*COLOURS, "\n"]), dtype=torch.long)
        self.first_word_id = len(tokenizer.all_special_ids)
        protected = set(self.protected.tolist())
        self.vocab_words = np.array([i for i in range(self.first_word_id, len(tokenizer)) if i not in protected])

    def __len__(self) -> int:
        return len(self.states)

    def replace_words(self, lang: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, p: float,
                      fillers: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Each non-colour word becomes a random ``fillers`` id with probability ``p``, and with probability
        ``p`` one is inserted at a random place; returns new ``(tokens, mask)`` one column wider."""
        def pick(k: int) -> np.ndarray:  # a single filler draws no random numbers
            return np.full(k, fillers[0]) if len(fillers) == 1 else rng.choice(fillers, size=k)

        lang = torch.cat([lang, torch.zeros_like(lang[:, :1])], dim=1)
        mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
        replaceable = mask & (lang >= self.first_word_id) & ~torch.isin(lang, self.protected)
        replace = torch.from_numpy(rng.random(tuple(lang.shape)) < p) & replaceable
        lang[replace] = torch.from_numpy(pick(int(replace.sum())))
        for row in np.flatnonzero(rng.random(len(lang)) < p):
            n = int(mask[row].sum())
            at = int(rng.integers(0, n))  # before the last token (the newline) at the latest
            lang[row, at + 1: n + 1] = lang[row, at:n].clone()
            lang[row, at], mask[row, n] = int(pick(1)[0]), True
        return lang, mask

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Samples ``index``; ``rng`` drives word dropout (when enabled)."""
        idx = torch.from_numpy(index)
        img = self.images[idx].permute(0, 3, 1, 2).to(torch.float32) / 255.0
        h, w = self.config.image_size
        img = resize_with_pad(img, w, h, pad_value=self.config.image_pad_value) * 2.0 - 1.0
        lang, mask = self.lang[self.instr[idx]], self.lang_mask[self.instr[idx]]
        if self.word_dropout > 0 and rng is not None:
            lang, mask = self.replace_words(lang, mask, rng, self.word_dropout, np.array([self.unk_id]))
        if self.random_words > 0 and rng is not None:
            lang, mask = self.replace_words(lang, mask, rng, self.random_words, self.vocab_words)
        keep = mask.any(dim=0)  # drop columns that are padding in every row
        return {
            "images": img[:, None], "image_masks": torch.ones(len(idx), 1, dtype=torch.bool),
            "lang_tokens": lang[:, keep], "lang_masks": mask[:, keep],
            "state": self.states[idx], "actions": self.actions[idx],
        }


def stats(x: np.ndarray, std_floor: float = 0.0) -> dict[str, np.ndarray]:
    """Mean, std (at least ``std_floor``: a dimension constant in the data, such as an absent second object's
    coordinates, would otherwise turn float noise at run time into huge normalised values), min, max."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return {"mean": flat.mean(0).astype(np.float32), "std": np.maximum(flat.std(0), std_floor).astype(np.float32),
            "min": flat.min(0).astype(np.float32), "max": flat.max(0).astype(np.float32)}


def image_stats(images: np.ndarray, chunk: int = 2048) -> dict[str, np.ndarray]:
    """Per-channel ``mean`` / ``std`` of ``(N, H, W, 3)`` uint8 frames in ``[0, 1]`` units (what the diffusion
    processor gives the model), accumulated in float64 ``chunk`` frames at a time (the whole array as floats
    would not fit in memory)."""
    total, sq, count = np.zeros(3), np.zeros(3), 0
    for start in range(0, len(images), chunk):
        part = images[start: start + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total += part.sum(0)
        sq += np.square(part).sum(0)
        count += len(part)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(sq / max(count, 1) - np.square(mean), 0.0))
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class WeightAverage:
    """Exponential moving average of the trainable weights: ``avg = d * avg + (1 - d) * w`` after each step."""

    def __init__(self, policy: HLRPPolicy, decay: float) -> None:
        self.decay = decay
        self.params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.average[name].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges the live and the averaged weights (a second call undoes it)."""
        for name, p in self.params.items():
            live = p.detach().clone()
            p.copy_(self.average[name])
            self.average[name].copy_(live)


def save(policy: HLRPPolicy, optimizer: torch.optim.Optimizer, step: int, directory: Path, info: dict,
         average: WeightAverage | None = None) -> None:
    """Writes the checkpoint (the averaged weights when averaging) and the state a resume needs."""
    tmp = directory.with_name(directory.name + ".tmp")
    state = {"optimizer": optimizer.state_dict(), "step": step}
    if average is not None:
        average.swap()
        state["live"] = {n: v.clone() for n, v in average.average.items()}
    policy.save_pretrained(tmp)
    if average is not None:
        average.swap()
    torch.save(state, tmp / TRAIN_STATE)
    (tmp / "training.json").write_text(json.dumps({**info, "step": step}, indent=2) + "\n")
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        directory.rename(old)
        tmp.rename(directory)
        for f in sorted(old.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        old.rmdir()
    else:
        tmp.rename(directory)


def load_initial_weights(policy, path: Path, keep_new: bool = False, matching_only: bool = False) -> None:
    """Loads a checkpoint to fine-tune from: strictly, or leaving some of the model's tensors as initialised.

    ``keep_new``: the tensors the checkpoint lacks keep their initialisation (a model that gained a module the
    checkpoint predates, initialised as the identity, like the diffusion policy's ``vision_film``); every
    other mismatch is still an error naming the tensors. ``matching_only``: only the tensors whose name and
    shape match load, for a changed architecture (the diffusion trunk cut after layer3 keeps conv1..layer3
    and the UNet); the rest keep their initialisation and the checkpoint's others are dropped, all named
    in the log.
    """
    if not (keep_new or matching_only):
        policy.load_weights(path)
        return
    tensors = read_safetensors(path)
    own = policy.state_dict()
    if matching_only:
        dropped = sorted(k for k, v in tensors.items() if k not in own or v.shape != own[k].shape)
        tensors = {k: v for k, v in tensors.items() if k not in dropped}
        logger.info("--init-from: %d checkpoint tensor(s) without a match dropped: %s", len(dropped), dropped)
    new = sorted(set(own) - set(tensors))
    problems = tensor_problems({k: v for k, v in own.items() if k in tensors}, tensors, check_finite=True)
    if problems:
        raise SystemExit(f"--init-from {path}: " + "; ".join(problems))
    policy.load_state_dict(tensors, strict=False)
    logger.info("--init-from: %d tensor(s) the checkpoint lacks keep their initialisation: %s", len(new), new)


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from hlrp_ros.datasets.training_arrays import training_arrays

    data = training_arrays(args.dataset, args.horizon, args.camera, args.image_size)
    horizon = data["actions"].shape[1]
    state_names = [str(n) for n in data["joint_names"]] if "joint_names" in data else None
    # The action's names are the checkpoint's joint_names; the state may be other values (state_dim from the
    # data; its names go to training.json, which policy_node's state_joint_names must then list).
    joint_names = [str(n) for n in data["action_names"]] if "action_names" in data else state_names
    state_dim = int(data["states"].shape[1])
    if args.policy == "hlrp":
        words = instruction_words(data["instructions"]) if args.vocabulary == "dataset" else None
        model_size = args.model_image_size or data["images"].shape[1]
        policy = build_policy(horizon, args.n_action_steps, model_size, joint_names, words,
                              args.rtc_max_delay, args.rtc_prefix_noise, state_dim=state_dim, width=args.width)
    else:
        if args.vocabulary != "default" or args.rtc_max_delay or args.width or args.model_image_size:
            raise SystemExit("--vocabulary / --rtc-max-delay / --width / --model-image-size act on the HLRP model: "
                             "--policy hlrp only")
        if state_names != joint_names:
            raise SystemExit(f"--policy {args.policy}: the dataset's state {state_names} is not its action's "
                             f"joints {joint_names}; only --policy hlrp trains such a state")
        policy = build_family_policy(args.policy, horizon, args.n_action_steps, data["images"].shape[1],
                                     joint_names or list(ArmSpec().joint_names), "top", args.n_obs_steps,
                                     language=not args.blind, vision_film=args.vision_film,
                                     backbone_stages=args.backbone_stages)
    policy.set_normalization_stats(state=stats(data["states"], args.state_std_floor), action=stats(data["actions"]))
    if args.policy == "diffusion":  # its ResNet sees the frames normalised per channel (image_norm_mode mean_std)
        policy.set_normalization_stats(image=image_stats(data["images"]))
    if args.init_from is not None:  # its statistics too: its weights were trained against them
        load_initial_weights(policy, args.init_from / "model.safetensors", args.init_new_tensors,
                             args.init_matching_tensors)
    last = args.out / "last"
    start = 0
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=1e-4)
    if args.resume and (last / TRAIN_STATE).is_file():
        policy.load_weights(last / "model.safetensors")
        state = torch.load(last / TRAIN_STATE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        logger.info("resumed from %s at step %d", last, start)
    average = WeightAverage(policy, args.ema) if args.ema else None
    if average is not None and start:  # ``last`` holds the average; the live weights are in the train state
        with torch.no_grad():
            for name, value in state["live"].items():
                average.params[name].copy_(value)
    n_params = sum(p.numel() for p in policy.parameters())
    logger.info("%d samples, %d parameters, blind=%s", len(data["states"]), n_params, args.blind)
    if args.policy == "hlrp":
        batcher = Batcher(data, policy, args.blind, args.word_dropout, args.random_words)
    else:
        batcher = ObservationBatcher(data, policy, [BLIND_INSTRUCTION if args.blind else str(t)
                                                    for t in data["instructions"]],
                                     args.word_dropout, args.random_words)
    command = "python -m hlrp_ros.tools.train " + " ".join(shlex.quote(a) for a in args.argv)
    history = []  # every command that contributed to this run (a resume may change --steps)
    if start and (last / "training.json").is_file():
        previous = json.loads((last / "training.json").read_text())
        history = previous.get("history", [previous["command"]]) + []
        history[-1] = f"{history[-1]}  # until step {start}"
    info = {"command": command, "history": [*history, command],
            "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "ema": args.ema,
            "word_dropout": args.word_dropout, "random_words": args.random_words, "rtc_max_delay": args.rtc_max_delay,
            "rtc_prefix_noise": args.rtc_prefix_noise,
            "init_from": None if args.init_from is None else str(args.init_from),
            "policy": args.policy, "n_obs_steps": args.n_obs_steps, "blind": args.blind, "dataset": str(args.dataset), "dataset_meta": str(data.get("meta", [""])[0]),
            "parameters": n_params, "width": args.width, "model_image_size": args.model_image_size, "state_std_floor": args.state_std_floor,
            # The checkpoint's config names the action's joints only: the state's names (policy_node
            # state_joint_names when they differ) are kept here.
            "state_names": state_names, "action_names": joint_names}
    policy.train()
    t0 = time.monotonic()
    ema = None
    stop = min(args.steps, args.stop_after) if args.stop_after else args.steps
    bar = tqdm(range(start, stop), initial=start, total=args.steps, desc="train", unit="step")
    for step in bar:
        rng = np.random.default_rng([args.seed, step])
        batch = batcher.batch(rng.integers(0, len(batcher), args.batch_size), rng)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        loss = policy.compute_loss(batch, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        if average is not None:
            average.update()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if (step + 1) % args.save_every == 0 or step + 1 == stop:
            policy.eval()
            save(policy, optimizer, step + 1, last, {**info, "loss_ema": ema}, average)
            policy.train()
    policy.eval()
    if average is not None:
        average.swap()  # the checkpoint is the averaged model
    final = args.out / "final"
    info.update({"stopped_at": stop, "loss_ema": ema, "train_seconds_this_run": round(time.monotonic() - t0, 1)})
    policy.save_pretrained(final)
    (final / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("saved %s (loss ema %.4f, %.0f s)", final, ema or float("nan"), time.monotonic() - t0)
    return final


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("artifacts/demo_arm/dataset_v6"),
                        help="a LeRobot v3.0 dataset directory")
    parser.add_argument("--policy", default="hlrp", choices=FAMILIES,
                        help="policy family trained (sizes: hlrp_ros.tools.train_families.build_family_policy)")
    parser.add_argument("--n-obs-steps", type=int, default=1,
                        help="diffusion: observations per input (> 1 needs whole recorded episodes: "
                             "consecutive frames, not the demo generator's keyframes)")
    parser.add_argument("--horizon", type=int, default=16, help="action chunk length")
    parser.add_argument("--camera", default=None, help="camera feature key (default: the first)")
    parser.add_argument("--image-size", type=int, default=64, help="square image size")
    parser.add_argument("--model-image-size", type=int, default=None,
                        help="hlrp: the model's input size when it differs from --image-size: each batch is resized "
                             "by the processor's own resize, as policy_node resizes camera frames (e.g. 64 px "
                             "frames, a 32 px model)")
    parser.add_argument("--vocabulary", choices=("default", "dataset"), default="default",
                        help="tokenizer words: the tiny default (tabletop words) or exactly the training "
                             "instructions' words (others become <unk>; pair with --word-dropout)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo_arm/run"))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--n-action-steps", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blind", action="store_true", help=f"withhold the instruction (language-blind baseline): every sample gets {BLIND_INSTRUCTION!r}")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last if it exists")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this step (the schedule still spans --steps; --resume continues)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from this checkpoint's weights and statistics (fine-tuning)")
    parser.add_argument("--init-new-tensors", action="store_true",
                        help="with --init-from: tensors the checkpoint lacks (a module added since) keep their "
                             "initialisation instead of being an error")
    parser.add_argument("--init-matching-tensors", action="store_true",
                        help="with --init-from: load only the tensors whose name and shape match (a changed "
                             "architecture); the others keep their initialisation, all named in the log")
    parser.add_argument("--backbone-stages", type=int, default=4, choices=(1, 2, 3, 4),
                        help="diffusion: ResNet stages run (3: stop after layer3, a 4x4 map for 64x64 frames; "
                             "DiffusionConfig.backbone_stages)")
    parser.add_argument("--vision-film", action=argparse.BooleanOptionalAction, default=True,
                        help="diffusion with language: FiLM the ResNet trunk's stages on the instruction "
                             "(DiffusionConfig.text_film_vision)")
    parser.add_argument("--word-dropout", type=float, default=0.0,
                        help="probability of replacing a non-colour word with <unk> / inserting one (see Batcher; other "
                             "families: an unseen random word, see train_families.augment_instruction)")
    parser.add_argument("--random-words", type=float, default=0.0,
                        help="probability of replacing a non-colour word with / inserting a random word (see Batcher)")
    parser.add_argument("--rtc-max-delay", type=int, default=0,
                        help="real-time chunking by conditioning: give the first d ~ U{0..N} actions of each "
                             "chunk clean and leave them out of the loss (policy_node rtc_mode: conditioned). 0: off")
    parser.add_argument("--rtc-prefix-noise", type=float, default=0.0,
                        help="with --rtc-max-delay: std (normalised action units) of the random bend of the given "
                             "prefix (0 at its last action), so the goal comes from the observation. 0: off")
    parser.add_argument("--width", type=int, default=None,
                        help="hlrp: hidden size of the text model (tiny preset: 64), a multiple of 32; the action "
                             "expert follows by expert_width_multiplier")
    parser.add_argument("--state-std-floor", type=float, default=0.0,
                        help="smallest state std of the normalisation (0: as measured); for states with constant "
                             "dimensions, e.g. 0.01 for Meta-World's full observation")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="weight-averaging decay (e.g. 0.999); the checkpoint is the average. 0: off")
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
