#!/usr/bin/env python3
"""Generate the LeRobot SmolVLA parity fixtures (issue 6), for LeRobot 0.4.x or 0.6.x.

Runs ONLY in a separate venv where LeRobot is installed, e.g.::

    python3 -m venv /work/lerobot-venv
    /work/lerobot-venv/bin/pip install torch==2.9.1 torchvision==0.24.1 "lerobot[smolvla]==0.4.4"
    /work/lerobot-venv/bin/python scripts/make_lerobot_fixtures.py            # (re)write the fixtures
    /work/lerobot-venv/bin/python scripts/make_lerobot_fixtures.py --check    # regenerate in a temp dir, compare

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/lerobot061          # LeRobot 0.6 needs Python >= 3.12
    /work/lerobot061/bin/pip install "lerobot[smolvla]==0.6.1"
    /work/lerobot061/bin/python scripts/make_lerobot_fixtures.py [--check]

The installed LeRobot picks the directory: 0.4.x writes ``test/fixtures/lerobot_smolvla/`` (transformers 4),
0.6.x ``test/fixtures/lerobot06_smolvla/`` (transformers 5, whose SmolVLM vision position ids differ and whose
checkpoints carry ``pretrained_revision``), both from the same spec.

Everything is offline: the VLM backbone is a tiny SmolVLM config written here (random, seeded weights)
with a byte-level BPE tokenizer built with the `tokenizers` library and a SmolVLM processor around it.

Layout written under ``test/fixtures/lerobot_smolvla/``::

    checkpoint/    exactly what LeRobot saves: config.json, model.safetensors,
                   policy_preprocessor.json + ..._normalizer_processor.safetensors,
                   policy_postprocessor.json + ..._unnormalizer_processor.safetensors
    vlm/           the local VLM config + tokenizer/processor files (``vlm_model_name`` points here)
    cases.json     per batch: task strings, image keys/sizes, denoising step counts
    cases.safetensors   per batch: uint8 images, state, noise, LeRobot action chunks per step count

LeRobot is never a runtime dependency of hlrp_ros; this script only produces reference data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import lerobot  # noqa: F401
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
except ImportError as exc:  # pragma: no cover - depends on the venv
    sys.exit(
        f"make_lerobot_fixtures.py needs LeRobot 0.4.x with the smolvla extra ({exc}).\n"
        "Run it with the separate LeRobot venv, e.g. /work/lerobot-venv/bin/python "
        "scripts/make_lerobot_fixtures.py (see the module docstring)."
    )

import numpy as np
from safetensors.torch import load_file, save_file

LOG = logging.getLogger("make_lerobot_fixtures")
REPO = Path(__file__).resolve().parents[1]
#: Fixture directory per LeRobot generation (major.minor of the installed LeRobot).
FIXTURE_DIRS = {"0.4": "lerobot_smolvla", "0.6": "lerobot06_smolvla"}


def default_out() -> Path:
    """The fixture directory of the installed LeRobot's generation."""
    generation = ".".join(lerobot.__version__.split(".")[:2])
    if generation not in FIXTURE_DIRS:
        sys.exit(f"LeRobot {lerobot.__version__}: no fixture directory for this generation "
                 f"(known: {sorted(FIXTURE_DIRS)}); pass --out")
    return REPO / "test" / "fixtures" / FIXTURE_DIRS[generation]


VLM_DIRNAME = "vlm"
CKPT_DIRNAME = "checkpoint"

# SmolVLM2's special tokens (names as its tokenizer_config.json "extra_special_tokens" spell them).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    "<video>",
] + [f"<row_{r}_col_{c}>" for r in range(1, 4) for c in range(1, 4)]
EXTRA_SPECIAL = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
    "video_token": "<video>",
}
CORPUS = [
    "pick the red cube and place it in the box",
    "pick up the blue block",
    "put the green cup on the plate",
    "open the drawer then close it",
    "move the arm to the left",
    "push the yellow button",
    "stack the cubes on top of each other",
    "grasp the handle and pull",
    "Pick Place Put Move Open Close Push Stack Grasp the object",
    "\n",
]


# --------------------------------------------------------------------------------------------------
# Tiny local VLM (config + tokenizer + processor), written offline.
# --------------------------------------------------------------------------------------------------
def write_tiny_vlm(vlm_dir: Path, vocab_size: int = 320, text_layers: int = 4, hidden: int = 64,
                   heads: int = 4, kv_heads: int = 2, vision_layers: int = 2, vision_hidden: int = 32,
                   vision_heads: int = 2, image_size: int = 32, patch_size: int = 8,
                   scale_factor: int = 2, intermediate: int | None = None,
                   vision_intermediate: int | None = None) -> None:
    """Write a SmolVLM config (tiny by default) and a SmolVLM processor (BPE tokenizer) into ``vlm_dir``.

    ``intermediate`` / ``vision_intermediate`` default to twice the hidden sizes; the tokenizer is always the
    tiny one (the vocabulary size changes no compute of a policy, only its embedding table).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
    )
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    vlm_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=EXTRA_SPECIAL,
        model_max_length=8192,
    )
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(
            do_image_splitting=False,
            size={"longest_edge": image_size},
            max_image_size={"longest_edge": image_size},
        ),
        tokenizer=fast,
        video_processor=SmolVLMVideoProcessor(
            size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}
        ),
        image_seq_len=image_seq_len,
    )
    processor.save_pretrained(vlm_dir)
    cfg = SmolVLMConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": len(fast),
            "hidden_size": hidden,
            "intermediate_size": intermediate or 2 * hidden,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": hidden // heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "max_position_embeddings": 512,
            "pad_token_id": fast.pad_token_id,
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": vision_hidden,
            "intermediate_size": vision_intermediate or 2 * vision_hidden,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "image_size": image_size,
            "patch_size": patch_size,
            "layer_norm_eps": 1e-6,
        },
        scale_factor=scale_factor,
        image_token_id=fast.convert_tokens_to_ids("<image>"),
        vocab_size=len(fast),
        tie_word_embeddings=False,
    )
    cfg.save_pretrained(vlm_dir)


# --------------------------------------------------------------------------------------------------
# LeRobot checkpoint with seeded random weights and non-trivial normalisation statistics.
# --------------------------------------------------------------------------------------------------
def make_stats(name: str, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Dataset-like stats (every stat LeRobot datasets carry) for one vector feature."""
    mean = torch.randn(dim, generator=gen) * 0.5
    std = torch.rand(dim, generator=gen) * 0.8 + 0.2
    lo = mean - 2.0 * std - torch.rand(dim, generator=gen) * 0.1
    hi = mean + 2.0 * std + torch.rand(dim, generator=gen) * 0.1
    return {
        "mean": mean, "std": std, "min": lo, "max": hi,
        "q01": lo + 0.1 * std, "q99": hi - 0.1 * std, "q10": mean - 1.2 * std, "q90": mean + 1.2 * std,
        "count": torch.tensor([1000]),
    }


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with seeded noise (norm weights around 1) so parity is meaningful."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and p.ndim == 1 and "bias" not in name:
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim >= 2:
                p.copy_(noise * (1.0 / max(1, p.shape[-1])) ** 0.5)
            else:
                p.copy_(0.05 * noise)


def build_checkpoint(ckpt_dir: Path, vlm_name: str, *, seed: int, state_dim: int, action_dim: int,
                     cameras: dict[str, tuple[int, int]], policy_kwargs: dict,
                     norm_map: dict[str, str] | None = None) -> None:
    """Build a SmolVLA policy with random weights and save it + its processors the LeRobot way."""
    torch.manual_seed(seed)
    input_features = {
        f"observation.images.{cam}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, h, w))
        for cam, (h, w) in cameras.items()
    }
    input_features["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))
    output_features = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    kwargs = dict(policy_kwargs)
    if norm_map is not None:
        kwargs["normalization_mapping"] = {k: NormalizationMode(v) for k, v in norm_map.items()}
    cfg = SmolVLAConfig(
        input_features=input_features,
        output_features=output_features,
        vlm_model_name=vlm_name,
        load_vlm_weights=False,
        device="cpu",
        push_to_hub=False,
        **kwargs,
    )
    policy = SmolVLAPolicy(cfg)
    randomize_(policy, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    stats = {"observation.state": make_stats("state", state_dim, gen),
             "action": make_stats("action", action_dim, gen)}
    for key in input_features:
        if key.startswith("observation.images."):
            stats[key] = {
                "mean": torch.rand(3, 1, 1, generator=gen) * 0.2 + 0.4,
                "std": torch.rand(3, 1, 1, generator=gen) * 0.1 + 0.2,
                "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1),
            }
    pre, post = make_smolvla_pre_post_processors(cfg, dataset_stats=stats)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(ckpt_dir)
    pre.save_pretrained(ckpt_dir)
    post.save_pretrained(ckpt_dir)


def load_lerobot(ckpt_dir: Path):
    """Load policy + processors from disk exactly as a LeRobot user would."""
    policy = SmolVLAPolicy.from_pretrained(str(ckpt_dir))
    policy.eval()
    pre = PolicyProcessorPipeline.from_pretrained(str(ckpt_dir), config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(
        str(ckpt_dir),
        config_filename="policy_postprocessor.json",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    return policy, pre, post


def lerobot_chunk(policy, pre, post, images_u8: dict[str, np.ndarray], state: np.ndarray,
                  tasks: list[str], noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Run LeRobot's preprocessor -> predict_action_chunk(noise) -> postprocessor.

    Args:
        images_u8: camera key -> uint8 (B, H, W, 3); converted like LeRobot's
            ``prepare_observation_for_inference`` (float / 255, CHW).
        state: (B, state_dim) float32.
        noise: (B, chunk_size, max_action_dim).

    Returns:
        (B, chunk_size, action_dim) un-normalised actions.
    """
    batch = {k: torch.from_numpy(v).float().div(255.0).permute(0, 3, 1, 2).contiguous()
             for k, v in images_u8.items()}
    batch["observation.state"] = torch.from_numpy(state).float()
    batch["task"] = list(tasks)
    policy.config.num_steps = int(num_steps)
    policy.reset()
    processed = pre(batch)
    with torch.no_grad():
        actions = policy.predict_action_chunk(processed, noise=noise.clone())
    return post(actions)


# --------------------------------------------------------------------------------------------------
# Fixture definition
# --------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One LeRobot SmolVLA checkpoint plus the observation cases run through it.

    ``cases`` rows are ``(seed, batch size, {camera: (H, W)}, tasks)``; each case is run for every entry
    of ``step_counts``. ``vlm`` holds ``write_tiny_vlm`` keyword arguments.
    """

    policy: dict
    norm_map: dict[str, str]
    cameras: dict[str, tuple[int, int]]
    state_dim: int
    action_dim: int
    cases: list[tuple[int, int, dict[str, tuple[int, int]], list[str]]]
    step_counts: list[int]
    vlm: dict = field(default_factory=dict)
    seed: int = 0


FIXTURE = Spec(
    policy=dict(
        chunk_size=10,
        n_action_steps=10,
        max_state_dim=32,
        max_action_dim=32,
        resize_imgs_with_padding=(32, 32),
        tokenizer_max_length=16,
        num_vlm_layers=4,
        num_expert_layers=-1,
        self_attn_every_n_layers=2,
        expert_width_multiplier=0.75,
        num_steps=10,
    ),
    norm_map={"VISUAL": "IDENTITY", "STATE": "MIN_MAX", "ACTION": "MEAN_STD"},
    cameras={"top": (48, 64), "wrist": (40, 40)},
    state_dim=7,
    action_dim=6,
    cases=[
        (100, 1, {"top": (48, 64), "wrist": (40, 40)}, ["pick up the blue block"]),
        (101, 2, {"top": (30, 50), "wrist": (64, 48)}, ["push the yellow button\n", "Open the drawer"]),
        # longer than tokenizer_max_length: truncated (the appended newline is cut off too)
        (102, 1, {"top": (32, 32), "wrist": (17, 23)},
         ["stack the cubes on top of each other then grasp the handle and pull it open slowly"]),
    ],
    step_counts=[10, 3, 1],
)


def spec_from_json(data: dict) -> Spec:
    """A :class:`Spec` from its JSON form (lists where the dataclass has tuples)."""
    data = dict(data)
    data["cameras"] = {k: tuple(v) for k, v in data["cameras"].items()}
    data["cases"] = [(int(seed), int(b), {k: tuple(v) for k, v in sizes.items()}, list(tasks))
                     for seed, b, sizes, tasks in data["cases"]]
    policy = dict(data["policy"])
    if "resize_imgs_with_padding" in policy and policy["resize_imgs_with_padding"] is not None:
        policy["resize_imgs_with_padding"] = tuple(policy["resize_imgs_with_padding"])
    data["policy"] = policy
    return Spec(**data)


def make_case_inputs(seed: int, bsize: int, sizes: dict[str, tuple[int, int]], chunk: int,
                     max_action_dim: int, state_dim: int) -> tuple[dict[str, np.ndarray], np.ndarray, torch.Tensor]:
    """Seeded uint8 images (smooth pattern + noise), state and flow-matching noise."""
    rng = np.random.default_rng(seed)
    images = {}
    for cam, (h, w) in sizes.items():
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        base = np.stack([yy, xx, 0.5 * (yy + xx)], axis=-1)[None] * 200.0
        img = base + rng.normal(0.0, 30.0, size=(bsize, h, w, 3))
        images[f"observation.images.{cam}"] = np.clip(img, 0, 255).astype(np.uint8)
    state = rng.normal(0.0, 1.0, size=(bsize, state_dim)).astype(np.float32)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(bsize, chunk, max_action_dim, generator=gen, dtype=torch.float32)
    return images, state, noise


def generate(out: Path, spec: Spec = FIXTURE) -> None:
    """Write checkpoint/, vlm/, cases.json and cases.safetensors for ``spec`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    # vlm_model_name is stored relative ("vlm") so that the checkpoint has no machine-specific path;
    # LeRobot resolves it against the working directory, hence the chdir while building/running.
    os.chdir(out)
    try:
        write_tiny_vlm(out / VLM_DIRNAME, **spec.vlm)
        build_checkpoint(out / CKPT_DIRNAME, VLM_DIRNAME, seed=spec.seed, state_dim=spec.state_dim,
                         action_dim=spec.action_dim, cameras=spec.cameras, policy_kwargs=spec.policy,
                         norm_map=spec.norm_map)
        policy, pre, post = load_lerobot(out / CKPT_DIRNAME)
        tensors: dict[str, torch.Tensor] = {}
        meta = {"lerobot_version": lerobot.__version__, "torch_version": torch.__version__,
                "step_counts": spec.step_counts, "state_dim": spec.state_dim, "action_dim": spec.action_dim,
                "cases": []}
        for i, (seed, bsize, sizes, tasks) in enumerate(spec.cases):
            images, state, noise = make_case_inputs(seed, bsize, sizes, policy.config.chunk_size,
                                                    policy.config.max_action_dim, spec.state_dim)
            for key, img in images.items():
                tensors[f"case{i}.{key}"] = torch.from_numpy(img)
            tensors[f"case{i}.state"] = torch.from_numpy(state)
            tensors[f"case{i}.noise"] = noise
            for n in spec.step_counts:
                tensors[f"case{i}.actions.steps{n}"] = lerobot_chunk(
                    policy, pre, post, images, state, tasks, noise, n).contiguous()
            meta["cases"].append({"seed": seed, "batch_size": bsize, "tasks": tasks,
                                  "image_keys": sorted(images),
                                  "image_sizes": {k: list(v) for k, v in sizes.items()}})
        save_file(tensors, str(out / "cases.safetensors"))
        (out / "cases.json").write_text(json.dumps(meta, indent=2) + "\n")
    finally:
        os.chdir(cwd)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    LOG.info("wrote %s (%.2f MB)", out, total / 1e6)


def compare_trees(ref: Path, new: Path, atol: float = 1e-6) -> list[str]:
    """Differences between two fixture trees (JSON exactly, tensors within ``atol``)."""
    problems = []
    ref_files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    new_files = sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    if ref_files != new_files:
        problems.append(f"file lists differ: only committed {sorted(set(ref_files) - set(new_files))}, "
                        f"only regenerated {sorted(set(new_files) - set(ref_files))}")
    for rel in sorted(set(ref_files) & set(new_files)):
        a, b = ref / rel, new / rel
        if rel.suffix == ".safetensors":
            ta, tb = load_file(str(a)), load_file(str(b))
            if ta.keys() != tb.keys():
                problems.append(f"{rel}: keys differ {sorted(set(ta) ^ set(tb))}")
                continue
            for k in sorted(ta):
                if ta[k].shape != tb[k].shape or ta[k].dtype != tb[k].dtype:
                    problems.append(f"{rel}:{k}: shape/dtype {ta[k].shape}/{ta[k].dtype} vs {tb[k].shape}/{tb[k].dtype}")
                    continue
                diff = (ta[k].double() - tb[k].double()).abs().max().item() if ta[k].numel() else 0.0
                if diff > atol:
                    problems.append(f"{rel}:{k}: max abs diff {diff:.3g} > {atol}")
        elif rel.suffix == ".json":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            for vkey in ("torch_version",):  # informative only
                if isinstance(ja, dict):
                    ja.pop(vkey, None), jb.pop(vkey, None)
            if ja != jb:
                problems.append(f"{rel}: JSON differs")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{rel}: bytes differ")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="fixture directory (default: the installed LeRobot generation's, see FIXTURE_DIRS)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temp dir and compare with the committed fixtures")
    parser.add_argument("--spec", type=Path, default=None,
                        help="JSON file with a Spec (fields of the Spec dataclass) instead of the fixture "
                             "spec; used by scripts/compare_lerobot.py")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    if args.out is None:
        args.out = default_out()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            new = Path(tmp) / "fixtures"
            generate(new)
            problems = compare_trees(args.out.resolve(), new)
        if problems:
            print("FIXTURE CHECK FAILED:\n  " + "\n  ".join(problems))
            return 1
        print(f"fixture check OK: regenerated fixtures match {args.out}")
        return 0
    out = args.out.resolve()
    if args.spec is not None:
        generate(out, spec_from_json(json.loads(args.spec.read_text())))
        print(f"spec {args.spec} generated into {out}")
        return 0
    if out.exists():
        shutil.rmtree(out)
    generate(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if total > 5e6:
        print(f"fixtures are {total / 1e6:.2f} MB, over the 5 MB budget")
        return 1
    print(f"fixtures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
