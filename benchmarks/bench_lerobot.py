#!/usr/bin/env python3
"""Chunk latency of HLRP vs LeRobot 0.4.x on the same SmolVLA checkpoint and inputs (issue 6).

One run, interleaved: a worker process per venv (the project's and LeRobot's) loads the same checkpoint;
the driver sends each request to both workers, alternating which goes first, and every worker times its
own chunk (raw uint8 images + state + instruction -> un-normalised actions, i.e. LeRobot's
preprocessor -> ``predict_action_chunk`` -> postprocessor vs our ``predict_action_chunk``) so the pipe
traffic is not counted. The workers exchange inputs/outputs as safetensors files; the driver also checks
that both return the same actions. Prints the medians and ``ours / LeRobot``.

Usage (repository root, project venv; needs the LeRobot venv for the other worker)::

    .venv/bin/python benchmarks/bench_lerobot.py [--lerobot-python /work/lerobot-venv/bin/python]
        [--requests 15] [--threads 1] [--size small|base|tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_SCRIPT = REPO / "scripts" / "make_lerobot_fixtures.py"
DEFAULT_LEROBOT_PYTHON = "/work/lerobot-venv/bin/python"
CAMERAS = {"top": (480, 640), "wrist": (480, 640)}
TASK = "pick up the blue block and put it in the box"

#: Checkpoint specs (see make_lerobot_fixtures.Spec); "small" is ~15M parameters, SmolVLA's chunk/steps.
SIZES = {
    "small": dict(
        policy=dict(chunk_size=50, n_action_steps=50, max_state_dim=32, max_action_dim=32,
                    resize_imgs_with_padding=[128, 128], tokenizer_max_length=48, num_vlm_layers=8,
                    num_expert_layers=-1, self_attn_every_n_layers=2, expert_width_multiplier=0.75, num_steps=10),
        vlm=dict(text_layers=8, hidden=256, heads=4, kv_heads=2, vision_layers=4, vision_hidden=192, vision_heads=3,
                 image_size=128, patch_size=16, scale_factor=2),
    ),
    # SmolVLA's real sizes (our smolvla-base preset): SmolVLM2-500M's layers truncated to 16, one 512x512 camera.
    "base": dict(
        policy=dict(chunk_size=50, n_action_steps=50, max_state_dim=32, max_action_dim=32,
                    resize_imgs_with_padding=[512, 512], tokenizer_max_length=48, num_vlm_layers=16,
                    num_expert_layers=-1, self_attn_every_n_layers=2, expert_width_multiplier=0.75, num_steps=10),
        vlm=dict(text_layers=16, hidden=960, heads=15, kv_heads=5, intermediate=2560, vision_layers=12,
                 vision_hidden=768, vision_intermediate=3072, vision_heads=12, image_size=512, patch_size=16,
                 scale_factor=4),
        cameras={"top": (512, 512)},
    ),
    "tiny": dict(
        policy=dict(chunk_size=10, n_action_steps=10, max_state_dim=32, max_action_dim=32,
                    resize_imgs_with_padding=[32, 32], tokenizer_max_length=16, num_vlm_layers=4, num_steps=10),
        vlm=dict(),
    ),
}


# ------------------------------------------------------------------------------------------------------
# Workers: read "<request.safetensors> <reply.safetensors>" lines, answer "<seconds>" lines.
# ------------------------------------------------------------------------------------------------------
def _load_fixture_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_lerobot_fixtures", FIXTURE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def worker(kind: str, ckpt: Path, threads: int) -> None:
    """Serves chunk requests on stdin/stdout with LeRobot ("lerobot") or our loader ("hlrp").

    Both workers get the policy node's host-memory settings (huge pages, freed memory kept), so the
    comparison is about the model code alone.
    """
    from hlrp_ros.allocator import keep_freed_memory, request_huge_pages

    request_huge_pages()  # before torch is imported
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    proto, sys.stdout = sys.stdout, sys.stderr  # LeRobot prints to stdout; keep it for the protocol
    if kind == "lerobot":
        fixtures = _load_fixture_module()
        os.chdir(ckpt.parent)  # vlm_model_name is relative to the generation directory
        policy, pre, post = fixtures.load_lerobot(ckpt)

        def run(req: dict) -> torch.Tensor:
            images = {k: v.numpy() for k, v in req.items() if k.startswith("observation.images.")}
            return fixtures.lerobot_chunk(policy, pre, post, images, req["state"].numpy(), [TASK],
                                          req["noise"], policy.config.num_steps)[0]
    else:
        from hlrp_ros.policies.base import Observation
        from hlrp_ros.policies.lerobot_smolvla import load_lerobot_smolvla

        policy = load_lerobot_smolvla(ckpt, tokenizer_dir=ckpt.parent / "vlm")

        def run(req: dict) -> torch.Tensor:
            obs = Observation(images={k.removeprefix("observation.images."): v[0].numpy()
                                      for k, v in req.items() if k.startswith("observation.images.")},
                              state=req["state"][0].numpy(), instruction=TASK)
            return policy.predict_action_chunk(obs, noise=req["noise"][0])

    keep_freed_memory()
    print("ready", file=proto, flush=True)
    for line in sys.stdin:
        request, reply = line.split()
        req = load_file(request)
        start = time.perf_counter()
        actions = run(req)
        elapsed = time.perf_counter() - start
        save_file({"actions": actions.contiguous()}, reply)
        print(f"{elapsed:.6f}", file=proto, flush=True)


# ------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------
class Worker:
    """A worker process speaking the line protocol above."""

    def __init__(self, python: str, kind: str, ckpt: Path, threads: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.kind = kind
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", kind, "--ckpt", str(ckpt), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{kind} worker failed to start (said {line!r})")

    def request(self, request: Path, reply: Path) -> float:
        self.proc.stdin.write(f"{request} {reply}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died")
        return float(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", default=DEFAULT_LEROBOT_PYTHON)
    parser.add_argument("--requests", type=int, default=15, help="timed requests per worker (after 2 warm-ups)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each worker")
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--worker", choices=["lerobot", "hlrp"], help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.ckpt, args.threads)
        return 0

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = dict(SIZES[args.size])
        cameras = size.pop("cameras", CAMERAS)
        spec = dict(size, seed=0, norm_map={"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
                    cameras={k: list(v) for k, v in cameras.items()}, state_dim=6, action_dim=6, cases=[], step_counts=[])
        (root / "spec.json").write_text(json.dumps(spec))
        subprocess.run([args.lerobot_python, str(FIXTURE_SCRIPT), "--spec", str(root / "spec.json"),
                        "--out", str(root / "gen")], check=True, capture_output=True, cwd=REPO)
        ckpt = root / "gen" / "checkpoint"
        n_params = sum(t.numel() for t in load_file(str(ckpt / "model.safetensors")).values())
        workers = [Worker(args.lerobot_python, "lerobot", ckpt, args.threads),
                   Worker(sys.executable, "hlrp", ckpt, args.threads)]
        cfg = json.loads((ckpt / "config.json").read_text())
        rng = np.random.default_rng(0)
        times: dict[str, list[float]] = {"lerobot": [], "hlrp": []}
        worst = 0.0
        try:
            for i in range(args.requests + 2):
                req = {f"observation.images.{k}": torch.from_numpy(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8))
                       for k, (h, w) in cameras.items()}
                req["state"] = torch.from_numpy(rng.normal(size=(1, 6)).astype(np.float32))
                req["noise"] = torch.randn(1, cfg["chunk_size"], cfg["max_action_dim"], generator=torch.Generator().manual_seed(i))
                save_file(req, str(root / "req.safetensors"))
                order = workers if i % 2 == 0 else workers[::-1]
                out = {}
                for w in order:
                    elapsed = w.request(root / "req.safetensors", root / f"{w.kind}.safetensors")
                    out[w.kind] = load_file(str(root / f"{w.kind}.safetensors"))["actions"]
                    if i >= 2:
                        times[w.kind].append(elapsed)
                worst = max(worst, (out["hlrp"] - out["lerobot"]).abs().max().item())
        finally:
            for w in workers:
                w.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"checkpoint: {args.size} SmolVLA, {n_params / 1e6:.1f}M parameters, chunk {cfg['chunk_size']} x "
          f"{cfg['max_action_dim']}, {cfg['num_steps']} denoising steps, "
          f"{len(cameras)} camera(s) {', '.join(f'{h}x{w}' for h, w in cameras.values())} -> "
          f"{cfg['resize_imgs_with_padding'][1]}x{cfg['resize_imgs_with_padding'][0]}")
    print(f"machine: {os.cpu_count()} CPU cores, torch threads per worker: {args.threads}; "
          f"{args.requests} interleaved requests per worker after 2 warm-ups")
    for kind, label in (("lerobot", "LeRobot 0.4.4"), ("hlrp", "HLRP (ours)")):
        v = sorted(times[kind])
        print(f"  {label:<14} median {med[kind] * 1e3:8.1f} ms   min {v[0] * 1e3:8.1f} ms   max {v[-1] * 1e3:8.1f} ms")
    print(f"  ratio ours / LeRobot (medians): {med['hlrp'] / med['lerobot']:.3f}")
    print(f"  max abs action difference over all requests: {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
