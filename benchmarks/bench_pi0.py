#!/usr/bin/env python3
"""PI0 / PI0.5 chunk latency and memory, native vs LeRobot 0.6.x, same random weights and inputs.

One run per (variant, dtype), interleaved: a worker process per venv (the project's and LeRobot's) loads the
same LeRobot checkpoint (built by LeRobot itself with seeded random weights at the requested sizes); the
driver sends each request to both workers, alternating which goes first. Each worker times its own chunk
(raw uint8 image + state + instruction -> un-normalised actions: LeRobot's preprocessor ->
``predict_action_chunk`` -> postprocessor vs ``predict_action_chunk``) at 10 steps and at 1 step; the
per-step time is their difference / 9 and the prefix the 1-step chunk minus one step (the same rule on both
sides). Peak memory is the worker's peak RSS (``ru_maxrss``: model load included). The driver checks that both
return the same actions.

Sizes: ``--depth`` / ``--vision-depth`` / ``--vocab`` truncate PaliGemma 3B's (Gemma 2B + Gemma 300M expert:
18 layers; SigLIP so400m/14: 27 layers; 257152 tokens) when the machine cannot hold two full models; the
widths, heads, image size (224), chunk (50) and steps (10) are always the real ones.

Usage (repository root, project venv; needs the LeRobot 0.6 venv for the other worker)::

    .venv/bin/python benchmarks/bench_pi0.py [--lerobot-python /work/lerobot061/bin/python] [--threads 2]
        [--requests 3] [--variants pi0 pi05] [--dtypes float32 bfloat16] [--depth 18] [--vision-depth 27]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LEROBOT_PYTHON = "/work/lerobot061/bin/python"
TASK = "pick up the blue block and put it in the box"
STATE_DIM = ACTION_DIM = 6


def sizes(depth: int, vision_depth: int) -> tuple[dict, dict]:
    """PaliGemma 3B / Gemma 300M widths with ``depth`` layers; SigLIP so400m/14 with ``vision_depth`` layers."""
    gemma = {
        "gemma_2b": dict(width=2048, depth=depth, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256),
        "gemma_300m": dict(width=1024, depth=depth, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    }
    vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=vision_depth, num_attention_heads=16,
                  patch_size=14, image_size=224, vision_use_head=False)
    return gemma, vision


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------------
# Workers: read JSON requests on stdin, answer one JSON line each.
# --------------------------------------------------------------------------------------------------
def _inputs(seed: int):
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    state = rng.normal(0, 1, STATE_DIM).astype(np.float32)
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(seed))
    return image, state, noise


def worker(kind: str, variant: str, ckpt: Path, dtype: str, threads: int, args) -> None:
    import torch

    torch.set_num_threads(threads)
    if kind == "lerobot":
        sys.path.insert(0, str(REPO / "scripts"))
        import make_lerobot_pi0_fixtures as fx

        gemma, vision = sizes(args.depth, args.vision_depth)
        fx.patch_lerobot(ckpt.parent / "tokenizer", args.vocab, gemma, vision)
        policy, pre, post = fx.load_lerobot(variant, ckpt)
        if dtype == "bfloat16":
            policy.model.paligemma_with_expert.to_bfloat16_for_selected_params("bfloat16")

        def run(image, state, noise, steps):
            return fx.lerobot_chunk(policy, pre, post, {"observation.images.top": image[None]}, state[None],
                                    [TASK], noise, steps)[0]
    else:
        from hlrp_ros.policies.base import Observation
        from hlrp_ros.policies.factory import load_policy

        policy = load_policy(ckpt, dtype=dtype, tokenizer_dir=ckpt.parent / "tokenizer")

        def run(image, state, noise, steps):
            return policy.predict_action_chunk(Observation({"top": image}, state, TASK), num_steps=steps,
                                               noise=noise[0])
    print(json.dumps({"ready": True, "rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        image, state, noise = _inputs(req["seed"])
        out = {}
        for steps in (10, 1):
            start = time.perf_counter()
            with torch.no_grad():
                actions = run(image, state, noise, steps)
            out[f"ms{steps}"] = (time.perf_counter() - start) * 1e3
            if steps == 10:
                out["actions"] = actions.float().flatten().tolist()
        out["rss_mb"] = peak_rss_mb()
        print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, python: str, kind: str, variant: str, ckpt: Path, dtype: str, args) -> None:
        cmd = [python, __file__, "--worker", kind, "--variant", variant, "--ckpt", str(ckpt), "--dtype", dtype,
               "--threads", str(args.threads), "--depth", str(args.depth), "--vision-depth", str(args.vision_depth),
               "--vocab", str(args.vocab)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.kind} worker exited ({self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def request(self, seed: int) -> dict:
        self.proc.stdin.write(json.dumps({"seed": seed}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def build_checkpoint(lerobot_python: str, variant: str, out: Path, args) -> Path:
    code = f"""
import sys; sys.path.insert(0, {str(REPO / 'scripts')!r})
from pathlib import Path
import make_lerobot_pi0_fixtures as fx
sys.path.insert(0, {str(REPO / 'benchmarks')!r})
from bench_pi0 import sizes
out = Path({str(out)!r})
tok = fx.write_tokenizer(out / "tokenizer")
gemma, vision = sizes({args.depth}, {args.vision_depth})
fx.patch_lerobot(out / "tokenizer", {args.vocab}, gemma, vision)
fx.build_checkpoint({variant!r}, out / {variant!r}, seed=0, cameras={{"top": (224, 224)}}, state_dim={STATE_DIM},
                    action_dim={ACTION_DIM}, chunk_size=50, resolution=224,
                    overrides={{"tokenizer_max_length": {48 if variant == 'pi0' else 200}}})
"""
    subprocess.run([lerobot_python, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   stdout=subprocess.DEVNULL)
    return out / variant


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", default=DEFAULT_LEROBOT_PYTHON)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["pi0", "pi05"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--depth", type=int, default=18, help="Gemma layers (PaliGemma 3B: 18)")
    parser.add_argument("--vision-depth", type=int, default=27, help="SigLIP layers (so400m: 27)")
    parser.add_argument("--vocab", type=int, default=257152, help="vocabulary (PaliGemma: 257152)")
    parser.add_argument("--worker", choices=["lerobot", "ours"])
    parser.add_argument("--variant")
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--dtype")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.variant, args.ckpt, args.dtype, args.threads, args)
        return 0

    print(f"sizes: Gemma 2B / 300M widths, {args.depth} layers; SigLIP so400m/14 224px, {args.vision_depth} layers; "
          f"vocab {args.vocab}; chunk 50, 10 steps; {args.threads} threads; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench_pi0_") as tmp:
        for variant in args.variants:
            ckpt = build_checkpoint(args.lerobot_python, variant, Path(tmp), args)
            for dtype in args.dtypes:
                workers = {"lerobot": Worker(args.lerobot_python, "lerobot", variant, ckpt, dtype, args),
                           "ours": Worker(sys.executable, "ours", variant, ckpt, dtype, args)}
                rows: dict[str, list[dict]] = {k: [] for k in workers}
                diffs, scales = [], []  # max |difference| and max |action| of each request
                for r in range(args.requests + 1):  # the first request warms up and is not counted
                    order = list(workers) if r % 2 == 0 else list(reversed(workers))
                    results = {k: workers[k].request(seed=r) for k in order}
                    if r:
                        for k, res in results.items():
                            rows[k].append(res)
                    diffs.append(max(abs(a - b) for a, b in zip(results["ours"]["actions"],
                                                                 results["lerobot"]["actions"], strict=True)))
                    scales.append(max(abs(b) for b in results["lerobot"]["actions"]))
                for w in workers.values():
                    w.close()
                summary = {}
                for k, rs in rows.items():
                    chunk = statistics.median(x["ms10"] for x in rs)
                    one = statistics.median(x["ms1"] for x in rs)
                    step = (chunk - one) / 9
                    summary[k] = dict(chunk=chunk, step=step, prefix=one - step, rss=max(x["rss_mb"] for x in rs))
                o, lr = summary["ours"], summary["lerobot"]
                print(f"{variant} {dtype}: chunk ms ours {o['chunk']:.0f} / LeRobot {lr['chunk']:.0f} = "
                      f"{o['chunk'] / lr['chunk']:.2f}x; prefix {o['prefix']:.0f} / {lr['prefix']:.0f}; "
                      f"per step {o['step']:.1f} / {lr['step']:.1f}; peak RSS MB {o['rss']:.0f} / {lr['rss']:.0f}; "
                      f"max |action diff| {max(diffs):.2g} (largest |action| {max(scales):.3g}; relative "
                      f"{max(d / s for d, s in zip(diffs, scales)):.2g})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
