#!/usr/bin/env python3
"""HLRP model latency and arithmetic efficiency (issue 3). Prints figures; never a timed test.

For each preset and dtype it reports, on random weights and one camera at the preset's image size:

* prefix ms      ``encode_prefix`` (vision tower, embeddings, VLM layers once, expert K/V cache)
* step ms        one denoising step against the cached prefix
* chunk ms       ``predict_action_chunk`` (prefix + ``num_steps`` steps + un-normalisation)
* uncached ms    the same chunk recomputing the full prefix+suffix sequence through VLM and expert at
                 every step (prefix embeddings computed once), i.e. no KV cache
* no-cache ms    the same chunk with nothing kept between steps: every step re-encodes the prefix
                 (vision tower and connector included) and runs the full sequence, as a policy without
                 a prefix cache does
* floor          the cached/uncached ratio the cached chunk could reach if its denoising steps were free
                 (prefix / uncached): with one large camera the vision tower, which both paths run once,
                 bounds the ratio from below
* GFLOP/chunk    matmul/conv/attention FLOPs of one cached chunk (torch.utils.flop_counter)
* GFLOP/s        achieved by the median chunk
* ceil32 %ceil32 a 2048^3 fp32 ``torch.matmul`` (best of 3) measured right before each timed chunk: median
                 ceiling, and the median over chunks of chunk GFLOP/s / its ceiling
* %max           the median chunk against the highest ceiling of the run (the most conservative share)
* ceil16 %ceil16 the same against a bf16 matmul (highest of the run)
* best %max      fastest chunk against the highest ceiling

Host memory is set up as the policy node does (``tune_host_memory``): large tensors on transparent huge
pages, freed memory kept by glibc (no page faults at steady state). ``--default-malloc`` and
``THP_MEM_ALLOC_ENABLE=0`` measure without them.

Times are medians. Usage (repository root; `make bench` runs the defaults)::

    env/run.sh python benchmarks/bench_model.py [--presets tiny smolvla-base] [--dtypes float32 bfloat16]
        [--threads 2 1] [--repeats-tiny 30] [--repeats-base 5] [--compare-plain] [--default-malloc]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

from hlrp_ros.allocator import keep_freed_memory, request_huge_pages

HUGE_PAGES = request_huge_pages()  # before torch allocates anything: PyTorch reads the switch once

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from hlrp_ros.policies.base import Observation  # noqa: E402
from hlrp_ros.policies.common import flow_matching  # noqa: E402
from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy  # noqa: E402
from hlrp_ros.policies.hlrp.presets import make_config  # noqa: E402

CEILING_N = 2048


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def matmul_ceiling(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best-of GFLOP/s of a ``CEILING_N``-cubed ``torch.matmul``."""
    a = torch.randn(CEILING_N, CEILING_N, dtype=dtype)
    b = torch.randn(CEILING_N, CEILING_N, dtype=dtype)
    best = min(timed(lambda: torch.matmul(a, b), repeats))
    return 2 * CEILING_N**3 / best / 1e9


def chunk_flops(policy: HLRPPolicy, obs: Observation) -> int:
    """FLOPs of one cached chunk (matmuls, convolutions, attention).

    Counted with plain linears: the flop counter does not know oneDNN's prepacked linear op (same math).
    """
    packer = policy.model.vlm_with_expert.linear
    enabled, packer.enabled = packer.enabled, False
    try:
        with FlopCounterMode(display=False) as counter:
            policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    finally:
        packer.enabled = enabled
    return counter.get_total_flops()


def observation(policy: HLRPPolicy) -> Observation:
    """One camera at the model's image size, random pixels and state."""
    cfg = policy.config
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 256, size=(*cfg.image_size, 3), dtype=np.uint8) for name in cfg.camera_names}
    return Observation(images=images, state=rng.normal(size=cfg.state_dim).astype(np.float32),
                       instruction="pick up the red cube and put it in the box")


def bench(preset: str, dtype: str, repeats: int, prepack: bool = True) -> dict[str, float]:
    """All figures for one preset and dtype (``prepack=False``: plain ``nn.Linear`` calls)."""
    torch.manual_seed(0)
    policy = HLRPPolicy(make_config(preset)).eval().to_device_dtype("cpu", dtype)
    policy.model.vlm_with_expert.linear.enabled = prepack
    obs = observation(policy)
    model = policy.model
    prefix = policy.encode_prefix(obs)
    x = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim)
    t = torch.full((1,), 0.5)
    inputs, _ = policy._prefix_inputs([obs])

    def step() -> None:
        with torch.no_grad():
            model.denoise_step(prefix, x, t)

    def uncached() -> None:
        with torch.no_grad():
            model.sample_actions_uncached(*inputs[:5], noise=x)

    def no_cache() -> None:
        def velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
            embs, pad, att = model.embed_prefix(*inputs[:5])  # vision tower included, every step
            suffix, s_pad, s_att = model.embed_suffix(x_t, torch.full((1,), t))
            return model._velocity(model._joint(embs, pad, att, suffix, s_pad, s_att))

        with torch.no_grad():
            flow_matching.euler_integrate(velocity, x, policy.config.num_steps)

    def chunk() -> None:
        policy.predict_action_chunk(obs, noise=x[0])

    flops = chunk_flops(policy, obs)
    ceilings16, prefixes, steps, uncached_t, no_cache_t = [], [], [], [], []
    pairs: list[tuple[float, float]] = []  # (chunk s, fp32 ceiling GFLOP/s measured right before it)
    rounds = max(1, repeats // 5)
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        ceilings16.append(matmul_ceiling(torch.bfloat16))
        prefixes += timed(lambda: policy.encode_prefix(obs), per_round)
        steps += timed(step, per_round * 2)
        chunk()  # warm-up
        # Each chunk is paired with a ceiling taken just before it, so that load from other processes (which
        # swings both by several % on shared VMs) hits the two alike; the share is the median of the pairs.
        for _ in range(per_round):
            ceiling = matmul_ceiling(torch.float32, repeats=3)
            pairs.append((timed(chunk, 1, warmup=0)[0], ceiling))
        uncached_t += timed(uncached, max(1, per_round // 2), warmup=0 if uncached_t else 1)
        no_cache_t += timed(no_cache, max(1, per_round // 4), warmup=0)
    med = statistics.median
    chunks = [c for c, _ in pairs]
    ceilings32 = [c for _, c in pairs]
    chunk_s = med(chunks)
    achieved = flops / chunk_s / 1e9
    return {
        "params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
        "prefix_ms": med(prefixes) * 1e3,
        "step_ms": med(steps) * 1e3,
        "chunk_ms": chunk_s * 1e3,
        "best_ms": min(chunks) * 1e3,
        "uncached_ms": med(uncached_t) * 1e3,
        "no_cache_ms": med(no_cache_t) * 1e3,
        "gflop": flops / 1e9,
        "gflops": achieved,
        "ceil32": med(ceilings32),
        "ceil16": max(ceilings16),
        "eff32": med(flops / c / 1e9 / ceiling for c, ceiling in pairs),
        "eff32_vs_max": achieved / max(ceilings32),
        "eff32_best": flops / min(chunks) / 1e9 / max(ceilings32),
        "eff16": achieved / max(ceilings16),
        "n_chunks": len(chunks),
        "num_steps": policy.config.num_steps,
        "chunk_size": policy.config.chunk_size,
    }


def main() -> None:
    """Parses arguments, runs the benchmarks, prints one line per preset and dtype."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "smolvla-base"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--compare-plain", action="store_true", help="also run without prepacked linears")
    parser.add_argument("--repeats-tiny", type=int, default=30)
    parser.add_argument("--repeats-base", type=int, default=5)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc defaults (the policy node keeps freed memory, as here by default); "
                             "THP_MEM_ALLOC_ENABLE=0 in the environment likewise keeps 4 KiB pages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    malloc = "glibc defaults" if args.default_malloc else keep_freed_memory().reason
    print(f"torch {torch.__version__}, fp32 ceiling: {CEILING_N}^3 matmul (best of 3) right before each timed chunk")
    print(f"host memory: {malloc}; huge pages: {HUGE_PAGES.reason}")
    header = (f"{'preset':13} {'dtype':8} {'linears':8} {'thr':>3} {'params':>7} {'prefix':>9} {'step':>8} "
              f"{'chunk':>9} {'uncached':>9} {'ratio':>5} {'floor':>5} {'no-cache':>9} {'ratio':>5} {'GFLOP':>7} {'GFLOP/s':>8} {'ceil32':>7} {'%ceil32':>7} "
              f"{'%max':>6} {'ceil16':>7} {'%ceil16':>7} {'n':>3} {'best':>9} {'%max':>6}")
    print(header)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for preset in args.presets:
            for dtype in args.dtypes:
                for prepack in [True, False] if args.compare_plain else [True]:
                    repeats = args.repeats_tiny if preset == "tiny" else args.repeats_base
                    r = bench(preset, dtype, repeats, prepack)
                    print(f"{preset:13} {dtype:8} {'packed' if prepack else 'plain':8} {threads:3d} "
                          f"{r['params_M']:6.1f}M {r['prefix_ms']:7.1f}ms {r['step_ms']:6.1f}ms "
                          f"{r['chunk_ms']:7.1f}ms {r['uncached_ms']:7.1f}ms "
                          f"{r['chunk_ms'] / r['uncached_ms']:5.2f} {r['prefix_ms'] / r['uncached_ms']:5.2f} "
                          f"{r['no_cache_ms']:7.1f}ms {r['chunk_ms'] / r['no_cache_ms']:5.2f} {r['gflop']:7.2f} {r['gflops']:8.1f} "
                          f"{r['ceil32']:7.1f} {100 * r['eff32']:6.1f}% {100 * r['eff32_vs_max']:5.1f}% "
                          f"{r['ceil16']:7.1f} {100 * r['eff16']:6.1f}% "
                          f"{r['n_chunks']:3d} {r['best_ms']:7.1f}ms {100 * r['eff32_best']:5.1f}%", flush=True)
    print("times are medians; n = timed chunks; chunk = 1 camera, num_steps/chunk_size of the preset "
          "(tiny 10/10, smolvla-base 10/50); uncached = full prefix+suffix sequence recomputed every step "
          "(images embedded once), ratio = chunk/uncached, floor = prefix/uncached (the ratio with free steps); "
          "no-cache = also the images re-encoded every step, ratio = chunk/no-cache")


if __name__ == "__main__":
    main()
