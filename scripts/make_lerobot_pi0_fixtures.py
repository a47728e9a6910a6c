#!/usr/bin/env python3
"""Generate the LeRobot 0.6 PI0 / PI0.5 parity fixtures.

Runs ONLY in a separate venv with LeRobot 0.6.x (Python >= 3.12), e.g.::

    /work/lerobot061/bin/python scripts/make_lerobot_pi0_fixtures.py            # (re)write the fixtures
    /work/lerobot061/bin/python scripts/make_lerobot_pi0_fixtures.py --check    # regenerate in a temp dir, compare

Everything is offline and small. LeRobot fixes PaliGemma's sizes in code (``get_gemma_config`` by variant name,
the SigLIP tower and the 257152-token vocabulary in ``PaliGemmaWithExpertModel``) and reads the PaliGemma
tokenizer from the hub; this script replaces, at module level and only in this process, the Gemma-config
look-up with tiny sizes, the config mapping with one whose PaliGemma/Gemma configs keep tiny vision and
vocabulary sizes, and the tokenizer look-up with a local byte-level BPE tokenizer (``tokenizer/``) that
adds ``<bos>`` as PaliGemma's does. No LeRobot file is changed; the computation is LeRobot's own.

Layout under ``test/fixtures/lerobot_pi0/``::

    pi0/, pi05/    exactly what LeRobot saves (config.json, model.safetensors, processor JSON + statistics)
    tokenizer/     the tokenizer both checkpoints were made with (pass it as ``tokenizer_dir``)
    cases.json     per checkpoint and case: tasks, image keys and sizes, step counts
    cases.safetensors   per checkpoint and case: uint8 images, state, noise, LeRobot's actions per step count

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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import lerobot
    import torch
    import transformers
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi0.configuration_pi0 import PI0Config
    from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors
    from lerobot.policies.pi05 import modeling_pi05
    from lerobot.policies.pi05.configuration_pi05 import PI05Config
    from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors
    from lerobot.processor import PolicyProcessorPipeline, tokenizer_processor
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
except ImportError as exc:  # pragma: no cover - depends on the venv
    sys.exit(f"make_lerobot_pi0_fixtures.py needs LeRobot 0.6.x with the pi extra ({exc}); run it with that "
             "venv's python, e.g. /work/lerobot061/bin/python (see the module docstring).")

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_lerobot_fixtures import compare_trees, make_case_inputs, make_stats, randomize_  # noqa: E402

LOG = logging.getLogger("make_lerobot_pi0_fixtures")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "test" / "fixtures" / "lerobot_pi0"
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"

#: Tiny sizes standing in for LeRobot's named variants (8 heads: LeRobot's joint pass assumes 8).
TINY_GEMMA = {
    "gemma_2b": dict(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "gemma_300m": dict(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16),
}
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   patch_size=8, image_size=32, vision_use_head=False)
TOKENIZER_CORPUS = [
    "Task: pick up the blue block, State: 0 12 127 128 255 3 64;\nAction: ",
    "push the yellow button", "open the drawer then close it", "stack the cubes on top of each other",
    "grasp the handle and pull it open slowly", "put the green cup on the plate", "0 1 2 3 4 5 6 7 8 9 , ; :\n",
]
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]


# --------------------------------------------------------------------------------------------------
# Module-level replacements of LeRobot's size and tokenizer look-ups (this process only).
# --------------------------------------------------------------------------------------------------
def write_tokenizer(directory: Path):
    """A byte-level BPE tokenizer with Gemma's special-token layout that prepends ``<bos>`` (as PaliGemma's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TOKENIZER_CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>", model_max_length=8192)
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    return fast


class _TokenizerLookup:
    """Stands in for ``AutoTokenizer`` in LeRobot's tokenizer step: PaliGemma's name -> the local tokenizer."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def from_pretrained(self, name, *args, **kwargs):
        path = str(self.directory) if name == PALIGEMMA_TOKENIZER else name
        return transformers.AutoTokenizer.from_pretrained(path, *args, local_files_only=True, **kwargs)


def _pin(config, pins: dict) -> None:
    """Makes later assignments to the ``pins`` fields of ``config`` keep the pinned values."""
    base = type(config)

    def setattr_(self, key, value):
        base.__setattr__(self, key, pins.get(key, value))

    config.__class__ = type(f"Tiny{base.__name__}", (base,), {"__setattr__": setattr_, "_unpinned": base})
    for key, value in pins.items():
        base.__setattr__(config, key, value)


def _unpin(config):
    """Gives ``config`` (and its sub-configs) their transformers classes back once the sizes are set."""
    for sub in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if sub is not None and hasattr(type(sub), "_unpinned"):
            sub.__class__ = type(sub)._unpinned
    return config


class _TinyConfigMapping:
    """``CONFIG_MAPPING`` whose PaliGemma / Gemma configs keep the tiny vocabulary and SigLIP sizes."""

    def __init__(self, real, vocab_size: int, gemma: dict, vision: dict) -> None:
        self.real = real
        self.vocab_size = vocab_size
        self.gemma = gemma
        self.vision = vision

    def __getitem__(self, key):
        if key == "paligemma":
            return self._paligemma
        if key == "gemma":
            return lambda **kw: self.real["gemma"](**{**kw, "vocab_size": self.vocab_size})
        return self.real[key]

    def _paligemma(self, **kwargs):
        width = self.gemma["gemma_2b"]["width"]
        cfg = self.real["paligemma"](vision_config=dict(self.vision), projection_dim=width, hidden_size=width,
                                     vocab_size=self.vocab_size, **kwargs)
        _pin(cfg, {"_vocab_size": self.vocab_size, "vocab_size": self.vocab_size,
                   "image_token_index": self.vocab_size - 1})
        _pin(cfg.text_config, {"vocab_size": self.vocab_size})
        _pin(cfg.vision_config, {"intermediate_size": self.vision["intermediate_size"], "projection_dim": width})
        return cfg


def patch_lerobot(tokenizer_dir: Path, vocab_size: int, gemma: dict | None = None, vision: dict | None = None) -> None:
    """Replaces LeRobot's size and tokenizer look-ups (sizes: ``gemma`` per variant name, SigLIP ``vision``)."""
    gemma = gemma or TINY_GEMMA
    vision = vision or TINY_VISION
    for module in (modeling_pi0, modeling_pi05):
        module.get_gemma_config = lambda variant, _m=module: _m.GemmaConfig(**gemma[variant])
        module.CONFIG_MAPPING = _TinyConfigMapping(transformers.models.auto.CONFIG_MAPPING, vocab_size, gemma, vision)
        real_vlm = module.PaliGemmaForConditionalGenerationWithPiGemma
        module.PaliGemmaForConditionalGenerationWithPiGemma = lambda config, _r=real_vlm: _r(config=_unpin(config))
    tokenizer_processor.AutoTokenizer = _TokenizerLookup(tokenizer_dir)


# --------------------------------------------------------------------------------------------------
# Checkpoints and cases
# --------------------------------------------------------------------------------------------------
CAMERAS = {"top": (48, 64), "wrist": (40, 40)}
STATE_DIM, ACTION_DIM = 7, 6
STEP_COUNTS = [10, 3, 1]
CASES = [
    (200, 1, {"top": (48, 64), "wrist": (40, 40)}, ["pick up the blue block"]),
    (201, 2, {"top": (30, 50), "wrist": (64, 48)}, ["push the yellow button\n", "Open the drawer then close it"]),
    (202, 1, {"top": (32, 32), "wrist": (17, 23)},
     ["stack the cubes on top of each other then grasp the handle and pull it open slowly"]),
]
VARIANTS = {
    "pi0": (PI0Config, make_pi0_pre_post_processors, modeling_pi0, "PI0Policy", dict(tokenizer_max_length=16)),
    "pi05": (PI05Config, make_pi05_pre_post_processors, modeling_pi05, "PI05Policy", dict(tokenizer_max_length=64)),
}


def build_checkpoint(kind: str, ckpt_dir: Path, seed: int, cameras: dict = CAMERAS, state_dim: int = STATE_DIM,
                     action_dim: int = ACTION_DIM, chunk_size: int = 10, resolution: int = 32,
                     overrides: dict | None = None) -> None:
    """A LeRobot ``kind`` policy with seeded random weights and statistics, saved with its processors."""
    config_cls, make_processors, module, policy_name, extra = VARIANTS[kind]
    torch.manual_seed(seed)
    inputs = {f"observation.images.{cam}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, h, w))
              for cam, (h, w) in cameras.items()}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    cfg = config_cls(input_features=inputs, output_features=outputs, device="cpu", push_to_hub=False,
                     chunk_size=chunk_size, n_action_steps=chunk_size, image_resolution=(resolution, resolution),
                     **{**extra, **(overrides or {})})
    policy = getattr(module, policy_name)(cfg)
    randomize_(policy, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    stats = {"observation.state": make_stats("state", state_dim, gen), "action": make_stats("action", action_dim, gen)}
    pre, post = make_processors(cfg, dataset_stats=stats)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(ckpt_dir)
    pre.save_pretrained(ckpt_dir)
    post.save_pretrained(ckpt_dir)


def load_lerobot(kind: str, ckpt_dir: Path):
    _, _, module, policy_name, _ = VARIANTS[kind]
    policy = getattr(module, policy_name).from_pretrained(str(ckpt_dir))
    policy.eval()
    pre = PolicyProcessorPipeline.from_pretrained(str(ckpt_dir), config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(str(ckpt_dir), config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    return policy, pre, post


def lerobot_chunk(policy, pre, post, images_u8, state, tasks, noise, num_steps):
    """LeRobot's preprocessor -> predict_action_chunk(noise) -> postprocessor on uint8 (B, H, W, 3) images."""
    batch = {k: torch.from_numpy(v).float().div(255.0).permute(0, 3, 1, 2).contiguous() for k, v in images_u8.items()}
    batch["observation.state"] = torch.from_numpy(state).float()
    batch["task"] = list(tasks)
    policy.config.num_inference_steps = int(num_steps)
    policy.reset()
    processed = pre(batch)
    with torch.no_grad():
        actions = policy.predict_action_chunk(processed, noise=noise.clone())
    return post(actions)


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(out / "tokenizer")
    patch_lerobot(out / "tokenizer", len(tok))
    tensors: dict[str, torch.Tensor] = {}
    meta = {"lerobot_version": lerobot.__version__, "transformers_version": transformers.__version__,
            "torch_version": torch.__version__, "step_counts": STEP_COUNTS, "state_dim": STATE_DIM,
            "action_dim": ACTION_DIM, "checkpoints": {}}
    for i, kind in enumerate(VARIANTS):
        build_checkpoint(kind, out / kind, seed=10 + i)
        policy, pre, post = load_lerobot(kind, out / kind)
        cases = []
        for c, (seed, bsize, sizes, tasks) in enumerate(CASES):
            images, state, noise = make_case_inputs(seed, bsize, sizes, policy.config.chunk_size,
                                                    policy.config.max_action_dim, STATE_DIM)
            for key, img in images.items():
                tensors[f"{kind}.case{c}.{key}"] = torch.from_numpy(img)
            tensors[f"{kind}.case{c}.state"] = torch.from_numpy(state)
            tensors[f"{kind}.case{c}.noise"] = noise
            for n in STEP_COUNTS:
                tensors[f"{kind}.case{c}.actions.steps{n}"] = lerobot_chunk(
                    policy, pre, post, images, state, tasks, noise, n).contiguous()
            cases.append({"seed": seed, "batch_size": bsize, "tasks": tasks, "image_keys": sorted(images),
                          "image_sizes": {k: list(v) for k, v in sizes.items()}})
        meta["checkpoints"][kind] = cases
    save_file(tensors, str(out / "cases.safetensors"))
    (out / "cases.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    LOG.info("wrote %s (%.2f MB)", out, total / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture directory")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temp dir and compare with the committed fixtures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
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
    if out.exists():
        shutil.rmtree(out)
    generate(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if total > 5e6:
        print(f"fixtures are {total / 1e6:.2f} MB, over the 5 MB budget")
        return 1
    print(f"fixtures written to {out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
