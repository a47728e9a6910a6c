"""CUDA path check and GPU figures for the HLRP model (run where a GPU is; CPU-only here).

Correctness first, on the tiny preset with fresh seeded inputs:
  * CUDA float32 == CPU float32 (same weights, same noise; TF32 off), max abs diff <= 1e-4
  * cached denoising == recomputing prefix+suffix at every step, on CUDA
  * the same noise twice on CUDA -> identical actions
  * CUDA bfloat16 close to CUDA float32 (relative error reported)
  * save_pretrained on CUDA -> from_pretrained onto CUDA reproduces the actions exactly
Then figures for tiny and smolvla-base (one 512x512 camera, chunk 50, 10 steps): prefix ms,
step ms, chunk ms, uncached chunk ms (median over repeats, CUDA events), float32 and bfloat16,
and the chunk's achieved TFLOP/s against a large matmul measured in the same run.

Usage: PYTHONPATH=. python3 benchmarks/gpu_check.py [--device cuda] [--repeats 20]
Exits non-zero when a correctness check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from hlrp_ros.policies.base import Observation
from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy
from hlrp_ros.policies.hlrp.presets import make_config


def observation(policy: HLRPPolicy, seed: int) -> Observation:
    cfg = policy.config
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, size=(*cfg.image_size, 3), dtype=np.uint8) for name in cfg.camera_names}
    return Observation(images=images, state=rng.normal(size=cfg.state_dim).astype(np.float32),
                       instruction="pick up the red cube and put it in the box")


def build(preset: str, device: str, dtype: str, seed: int = 0) -> HLRPPolicy:
    torch.manual_seed(seed)
    return HLRPPolicy(make_config(preset)).eval().to_device_dtype(device, dtype)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_ms(fn: Callable[[], object], device: str, repeats: int, warmup: int = 3) -> float:
    """Median wall time in ms (synchronised before and after each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timed_ms(lambda: a @ b, device, repeats)
    return 2 * n**3 / (ms / 1e3) / 1e12


def check(name: str, ok: bool, detail: str, failures: list[str]) -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def correctness(device: str, failures: list[str]) -> None:
    obs = observation(build("tiny", "cpu", "float32"), seed=1)
    cpu = build("tiny", "cpu", "float32")
    gpu = build("tiny", "cpu", "float32")
    gpu.load_state_dict(cpu.state_dict())
    gpu.to_device_dtype(device, "float32")
    noise = torch.randn(cpu.config.chunk_size, cpu.config.max_action_dim, generator=torch.Generator().manual_seed(7))

    a_cpu = cpu.predict_action_chunk(obs, noise=noise)
    a_gpu = gpu.predict_action_chunk(obs, noise=noise)
    diff = (a_cpu - a_gpu).abs().max().item()
    check("cuda fp32 == cpu fp32", diff <= 1e-4, f"max abs diff {diff:.2e}", failures)

    again = gpu.predict_action_chunk(obs, noise=noise)
    check("same noise -> same actions on cuda", torch.equal(again, a_gpu), "bitwise", failures)

    inputs, _ = gpu._prefix_inputs([obs])
    with torch.no_grad():
        n = noise.unsqueeze(0).to(device)
        cached = gpu.model.sample_from_prefix(gpu.model.encode_prefix(*inputs), noise=n)
        uncached = gpu.model.sample_actions_uncached(*inputs[:5], noise=n)
    diff = (cached - uncached).abs().max().item()
    check("cached == uncached on cuda", diff <= 1e-5, f"max abs diff {diff:.2e}", failures)

    bf16 = build("tiny", "cpu", "float32")
    bf16.load_state_dict(cpu.state_dict())
    bf16.to_device_dtype(device, "bfloat16")
    a_bf16 = bf16.predict_action_chunk(obs, noise=noise)
    rel = ((a_bf16 - a_gpu).norm() / a_gpu.norm()).item()
    check("cuda bf16 close to fp32", bool(torch.isfinite(a_bf16).all()) and rel < 5e-2,
          f"relative error {rel:.2e}", failures)

    with tempfile.TemporaryDirectory() as tmp:
        gpu.save_pretrained(tmp)
        loaded = HLRPPolicy.from_pretrained(tmp, device=device, dtype="float32")
        a_loaded = loaded.predict_action_chunk(obs, noise=noise)
    check("save/load round trip on cuda", torch.equal(a_loaded, a_gpu), "bitwise", failures)


def figures(preset: str, device: str, dtype: str, repeats: int) -> dict[str, float]:
    policy = build(preset, device, dtype)
    obs = observation(policy, seed=0)
    cfg = policy.config
    noise = torch.randn(cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
    prefix = policy.encode_prefix(obs)
    x = noise.unsqueeze(0).to(device=device)
    t = torch.full((1,), 0.5, device=device)
    inputs, _ = policy._prefix_inputs([obs])
    with FlopCounterMode(display=False) as counter:
        policy.predict_action_chunk(obs, noise=noise)
    flops = counter.get_total_flops()

    def step() -> None:
        with torch.no_grad():
            policy.model.denoise_step(prefix, x.to(policy.dtype), t)

    def uncached() -> None:
        with torch.no_grad():
            policy.model.sample_actions_uncached(*inputs[:5], noise=x)

    chunk_ms = timed_ms(lambda: policy.predict_action_chunk(obs, noise=noise), device, repeats)
    return {
        "params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
        "prefix_ms": timed_ms(lambda: policy.encode_prefix(obs), device, repeats),
        "step_ms": timed_ms(step, device, repeats),
        "chunk_ms": chunk_ms,
        "uncached_ms": timed_ms(uncached, device, max(3, repeats // 4)),
        "tflops": flops / (chunk_ms / 1e3) / 1e12,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--presets", nargs="+", default=["tiny", "smolvla-base"])
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("CUDA is not available on this machine", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}", flush=True)

    failures: list[str] = []
    correctness(args.device, failures)

    ceil32 = matmul_tflops(args.device, torch.float32)
    ceil16 = matmul_tflops(args.device, torch.bfloat16)
    print(f"matmul ceiling 8192^3: fp32 (TF32 off) {ceil32:.1f} TFLOP/s, bf16 {ceil16:.1f} TFLOP/s")
    print("| preset | dtype | params M | prefix ms | step ms | chunk ms | uncached ms | cached/uncached | TFLOP/s | of ceiling |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for preset in args.presets:
        for dtype in ("float32", "bfloat16"):
            f = figures(preset, args.device, dtype, args.repeats)
            ceiling = ceil32 if dtype == "float32" else ceil16
            print(f"| {preset} | {dtype} | {f['params_M']:.1f} | {f['prefix_ms']:.2f} | {f['step_ms']:.2f} | "
                  f"{f['chunk_ms']:.2f} | {f['uncached_ms']:.2f} | {f['chunk_ms'] / f['uncached_ms']:.2f} | "
                  f"{f['tflops']:.2f} | {f['tflops'] / ceiling:.1%} |", flush=True)
    print(f"correctness: {'all passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
