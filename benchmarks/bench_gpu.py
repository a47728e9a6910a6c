#!/usr/bin/env python3
"""GPU chunk latency per family: eager, compiled and CUDA-graph replay, side by side in one run.

For each preset (default: ``smolvla-base`` with one 512x512 camera, chunk 50, 10 steps; ``pi05-base`` and
``pi0-base`` at 224x224; the diffusion policy's default size), with seeded random weights and one seeded
observation, and each execution mode (eager float32 is the reference):

* ``model ms``: the chunk from inputs already on the GPU (prefix pass + all denoising steps), the figure the
  GPU itself determines;
* ``end-to-end ms``: ``predict_action_chunk`` from the raw uint8 image (host preprocessing, the copy, the
  model, the actions back on the host), what the policy node pays;
* medians over ``--repeats`` after warm-up; ``first s``: the first chunk (recording or compiling included);
* ``max |a - fp32|``: the actions' largest difference from eager float32 (same noise);
* ``peak GiB``: the largest GPU memory allocated while the mode ran (weights included).

Modes: ``eager``, ``graphs`` (``set_execution(cuda_graphs=True)``), ``compiled`` (``torch.compile``,
inductor's default mode), ``compiled+graphs``. Families without a fixed-shape path run eager only. TF32 is off.
A section that fails prints its error and the run goes on; ``--deadline`` (seconds) skips what would start
after it.

Usage (repository root, on the GPU machine): ``PYTHONPATH=. python3 benchmarks/bench_gpu.py``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch

from hlrp_ros.policies.base import Observation

START = time.monotonic()
DEVICE = "cuda"  # --device cpu: a dry run of this script on a machine without a GPU (graph modes fail there)
TASK = "pick up the red cube and put it in the box"
MODES = {"eager": {}, "graphs": {"cuda_graphs": True}, "compiled": {"compile": True},
         "compiled+graphs": {"compile": True, "cuda_graphs": True}}


def build(preset: str):
    """(policy on the GPU in float32 with seeded random weights, family name)."""
    torch.manual_seed(0)
    with torch.device(DEVICE):  # random initialisation on the GPU: seconds even for 3B parameters
        if preset.startswith("pi0"):
            from hlrp_ros.policies.pi0.modeling_pi0 import PI0Policy
            from hlrp_ros.policies.pi0.presets import make_config
            policy = PI0Policy(make_config(preset))
        elif preset.startswith("diffusion"):
            from hlrp_ros.policies.diffusion.configuration_diffusion import DiffusionConfig
            from hlrp_ros.policies.diffusion.modeling_diffusion import DiffusionPolicy
            policy = DiffusionPolicy(DiffusionConfig(camera_names=["top"], image_size=(96, 96), crop_shape=(84, 84),
                                                     state_dim=6, action_dim=6, noise_scheduler_type="DDIM",
                                                     num_inference_steps=10))
        else:
            from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy
            from hlrp_ros.policies.hlrp.presets import make_config
            policy = HLRPPolicy(make_config(preset))
    return policy.eval().to_device_dtype(DEVICE, "float32")


def observation(policy, seed: int = 0) -> Observation:
    cfg = policy.config
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, size=(*cfg.image_size, 3), dtype=np.uint8) for name in cfg.camera_names}
    obs = Observation(images=images, state=rng.normal(size=cfg.state_dim).astype(np.float32), instruction=TASK)
    if getattr(cfg, "n_obs_steps", 1) > 1:  # a still robot: the same frame throughout the history
        obs = dataclasses.replace(obs, history=[obs] * (cfg.n_obs_steps - 1))
    return obs


def synchronize() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def model_inputs(policy, obs: Observation) -> list | None:
    """The family's model inputs on the GPU (None for a family without separate model inputs here)."""
    if hasattr(policy, "_prefix_inputs"):
        return policy._prefix_inputs([obs])[0]
    if hasattr(policy, "_model_inputs"):
        return policy._model_inputs(policy.processor.collate([obs]))
    return None


def model_chunk(policy, inputs: list, noise: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One chunk from GPU inputs: through the fixed-shape sampler when one is set, else eager."""
    model, steps = policy.model, policy.config.num_steps
    fixed = getattr(policy, "_fixed", None)

    def run() -> torch.Tensor:
        with torch.no_grad():
            if fixed is None:
                return model.sample_from_prefix(model.encode_prefix(*inputs), noise=noise, num_steps=steps)
            return fixed.sample(fixed.encode(inputs), noise, steps)

    return run


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_mode(base, mode: str, dtype: str, obs: Observation, noise: torch.Tensor | None,
             reference: torch.Tensor | None, repeats: int) -> tuple[dict, torch.Tensor]:
    policy = copy.deepcopy(base).to_device_dtype(DEVICE, dtype)
    cuda = DEVICE.startswith("cuda")
    synchronize()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    policy.set_execution(**MODES[mode])

    def chunk() -> torch.Tensor:  # noise None (diffusion): the same seeded draw every time
        generator = torch.Generator().manual_seed(0) if noise is None else None
        return policy.predict_action_chunk(obs, noise=noise, generator=generator)

    start = time.perf_counter()
    actions = chunk()
    synchronize()
    row = {"first_s": time.perf_counter() - start, "e2e_ms": median_ms(chunk, repeats)}
    inputs = model_inputs(policy, obs)
    if inputs is not None and noise is not None:
        x = policy.model._noise(1, torch.device(DEVICE), noise, None)
        row["model_ms"] = median_ms(model_chunk(policy, inputs, x), repeats)
    row["repeatable"] = bool(torch.equal(chunk(), actions))
    row["max_diff"] = float((actions - reference).abs().max()) if reference is not None else 0.0
    row["max_abs"] = float(actions.abs().max())
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return row, actions  # the copy goes with this frame: the caller empties the allocator's cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["smolvla-base", "pi05-base", "pi0-base", "diffusion"])
    parser.add_argument("--modes", nargs="+", default=["eager", "graphs", "compiled", "compiled+graphs"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--compile-presets", nargs="+", default=["smolvla-base"],
                        help="presets that also run the compiled modes (compiling a 3B model takes minutes)")
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds after which no new section starts")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available on this machine", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "cpu"
    print(f"device: {name} | torch {torch.__version__} | repeats {args.repeats}", flush=True)
    print("| preset | mode | dtype | model ms | end-to-end ms | first s | max abs diff vs eager fp32 | max abs action "
          "| repeatable | peak GiB |", flush=True)
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    failures = 0
    for preset in args.presets:
        if time.monotonic() - START > args.deadline:
            print(f"| {preset} | skipped: deadline |", flush=True)
            continue
        try:
            base = build(preset)
        except Exception as exc:  # e.g. a package missing on the machine
            print(f"| {preset} | not built: {type(exc).__name__}: {exc} |", flush=True)
            continue
        obs = observation(base)
        cfg = base.config
        noise = None  # the diffusion family draws its own from a seeded generator
        if hasattr(cfg, "max_action_dim"):
            noise = torch.randn(cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
        try:
            row, reference = run_mode(base, "eager", "float32", obs, noise, None, args.repeats)
            print_row(preset, "eager", "float32", row)
        except Exception as exc:
            print(f"| {preset} | eager float32 failed: {type(exc).__name__}: {exc} |", flush=True)
            traceback.print_exc()
            failures += 1
            continue
        for mode in args.modes:
            if mode.startswith("compiled") and preset not in args.compile_presets:
                continue
            for dtype in args.dtypes:
                if mode == "eager" and dtype == "float32":
                    continue
                if time.monotonic() - START > args.deadline:
                    print(f"| {preset} | {mode} | {dtype} | skipped: deadline |", flush=True)
                    continue
                try:
                    row, _ = run_mode(base, mode, dtype, obs, noise, reference, args.repeats)
                    print_row(preset, mode, dtype, row)
                    if DEVICE.startswith("cuda"):
                        torch.cuda.empty_cache()
                except NotImplementedError as exc:
                    print(f"| {preset} | {mode} | {dtype} | not available: {exc} |", flush=True)
                    break
                except Exception as exc:
                    print(f"| {preset} | {mode} | {dtype} | failed: {type(exc).__name__}: {exc} |", flush=True)
                    traceback.print_exc()
                    failures += 1
        del base
        if DEVICE.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"total {time.monotonic() - START:.0f} s; {failures} failed section(s)", flush=True)
    return 1 if failures else 0


def print_row(preset: str, mode: str, dtype: str, row: dict) -> None:
    model = f"{row['model_ms']:.2f}" if "model_ms" in row else "-"
    print(f"| {preset} | {mode} | {dtype} | {model} | {row['e2e_ms']:.2f} | {row['first_s']:.1f} | "
          f"{row['max_diff']:.2e} | {row['max_abs']:.2f} | {row['repeatable']} | {row['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
