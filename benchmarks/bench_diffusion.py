#!/usr/bin/env python3
"""Chunk latency of hlrp_ros's diffusion policy vs LeRobot 0.6.1's on the same checkpoint and inputs.

One run, interleaved: a worker process per venv (the project's and LeRobot's) loads the same LeRobot
``diffusion`` checkpoint (written by LeRobot itself with seeded weights); the driver sends each request
(uint8 images and states of ``n_obs_steps`` observations, the initial noise, a sampling seed) to both
workers, alternating which goes first. Every worker times its own work, split in three:

* ``encoder``: raw inputs -> ``global_cond`` (LeRobot: preprocessor + ``_prepare_global_conditioning``;
  ours: ``encode_prefix``);
* ``per step``: the scheduler loop (UNet + diffusers step) divided by the number of steps (LeRobot:
  ``conditional_sample``; ours: ``sample_chunk`` without the un-normalisation);
* ``chunk``: everything, raw inputs -> un-normalised actions (LeRobot adds its postprocessor).

Both get the same generator seed for DDPM's per-step noise; the driver checks the actions agree. With
``--compile`` a third worker runs ours compiled (``set_execution(compile=True)``: inductor with frozen
weights; the warm-up request compiles, so the timed ones do not include it).

Usage (repository root, project venv; needs the LeRobot venv for the other worker)::

    .venv/bin/python benchmarks/bench_diffusion.py [--lerobot-python /work/lerobot061/bin/python]
        [--size default|tiny] [--scheduler DDPM|DDIM] [--steps N] [--requests 5] [--threads 2] [--compile]

``default`` is LeRobot's default DiffusionConfig (ResNet-18, no crop, down_dims 512/1024/2048, horizon 64,
n_obs_steps 2) on one 96x96 camera and a 2-D state/action (PushT's shapes); DDPM runs 100 steps, DDIM 10
unless ``--steps`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_SCRIPT = REPO / "scripts" / "make_lerobot_diffusion_fixtures.py"
DEFAULT_LEROBOT_PYTHON = "/work/lerobot061/bin/python"

SIZES = {
    "default": dict(cameras=["top"], image_hw=(96, 96), state_dim=2, action_dim=2, policy={}),
    "tiny": dict(cameras=["top"], image_hw=(64, 64), state_dim=2, action_dim=2,
                 policy=dict(horizon=16, n_action_steps=8, down_dims=(32, 64, 128), diffusion_step_embed_dim=32,
                             spatial_softmax_num_keypoints=16, crop_shape=(56, 56))),
}


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_lerobot_diffusion_fixtures", FIXTURE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------------
# Workers: read "<request.safetensors> <reply.safetensors>" lines, answer "<chunk> <encoder> <loop>" lines.
# ------------------------------------------------------------------------------------------------------
def worker(kind: str, ckpt: Path, threads: int, steps: int) -> None:
    """Serves timed chunk requests with LeRobot ("lerobot") or our loader ("hlrp", "hlrp-compiled")."""
    from hlrp_ros.allocator import keep_freed_memory, request_huge_pages

    request_huge_pages()  # before torch is imported
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    proto, sys.stdout = sys.stdout, sys.stderr  # LeRobot may print to stdout; keep it for the protocol
    if kind == "lerobot":
        fixtures = _fixture_module()
        policy, pre, post = fixtures.load_lerobot(ckpt)
        cfg = policy.config
        policy.diffusion.num_inference_steps = steps

        def run(req: dict) -> tuple[torch.Tensor, float, float, float]:
            t0 = time.perf_counter()
            batch = {f"observation.images.{c}": req[f"images.{c}"].float().div(255.0).permute(0, 1, 4, 2, 3)
                     for c in cameras}
            batch["observation.state"] = req["state"]
            batch = pre(batch)
            batch["observation.images"] = torch.stack([batch[k] for k in cfg.image_features], dim=-4)
            with torch.no_grad():
                cond = policy.diffusion._prepare_global_conditioning(batch)
                t1 = time.perf_counter()
                gen = torch.Generator().manual_seed(int(req["seed"]))
                sample = policy.diffusion.conditional_sample(1, global_cond=cond, noise=req["noise"].clone(),
                                                             generator=gen)
                t2 = time.perf_counter()
            start = cfg.n_obs_steps - 1
            actions = post(sample[:, start: start + cfg.n_action_steps])[0]
            return actions, time.perf_counter() - t0, t1 - t0, t2 - t1

        cameras = [k.removeprefix("observation.images.") for k in policy.config.image_features]
    else:
        from hlrp_ros.policies.base import Observation
        from hlrp_ros.policies.factory import load_policy

        policy = load_policy(ckpt)
        if kind == "hlrp-compiled":
            policy.set_execution(compile=True)
        cameras = policy.config.camera_names

        def run(req: dict) -> tuple[torch.Tensor, float, float, float]:
            t0 = time.perf_counter()
            steps_obs = [Observation(images={c: req[f"images.{c}"][0, s].numpy() for c in cameras},
                                     state=req["state"][0, s].numpy(), instruction="")
                         for s in range(req["state"].shape[1])]
            steps_obs[-1].history = steps_obs[:-1]
            prefix = policy.encode_prefix(steps_obs[-1])
            t1 = time.perf_counter()
            gen = torch.Generator().manual_seed(int(req["seed"]))
            actions = policy.sample_chunk(prefix, num_steps=steps, noise=req["noise"][0], generator=gen)
            t2 = time.perf_counter()
            return actions, t2 - t0, t1 - t0, t2 - t1

    keep_freed_memory()
    print("ready", file=proto, flush=True)
    for line in sys.stdin:
        request, reply = line.split()
        actions, chunk, encoder, loop = run(load_file(request))
        save_file({"actions": actions.contiguous()}, reply)
        print(f"{chunk:.6f} {encoder:.6f} {loop:.6f}", file=proto, flush=True)


# ------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------
class Worker:
    """A worker process speaking the line protocol above."""

    def __init__(self, python: str, kind: str, ckpt: Path, threads: int, steps: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        self.kind = kind
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", kind, "--ckpt", str(ckpt), "--threads", str(threads),
             "--steps", str(steps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{kind} worker failed to start (said {line!r})")

    def request(self, request: Path, reply: Path) -> tuple[float, float, float]:
        self.proc.stdin.write(f"{request} {reply}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died")
        chunk, encoder, loop = (float(v) for v in line.split())
        return chunk, encoder, loop

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def make_checkpoint(python: str, root: Path, size: str, scheduler: str) -> Path:
    """LeRobot writes the checkpoint (seeded tiled weights, as the parity fixtures) in its own venv."""
    spec = dict(SIZES[size], seed=0, norm_map={"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"})
    spec["policy"] = dict(spec["policy"], n_obs_steps=2, noise_scheduler_type=scheduler)
    code = ("import json, sys, importlib.util; from pathlib import Path\n"
            f"s = importlib.util.spec_from_file_location('m', {str(FIXTURE_SCRIPT)!r}); m = importlib.util.module_from_spec(s)\n"
            "sys.modules['m'] = m; s.loader.exec_module(m)\n"
            "spec = json.loads(sys.argv[1]); spec['image_hw'] = tuple(spec['image_hw'])\n"
            "for k in ('down_dims', 'crop_shape'):\n"
            "    if k in spec['policy']: spec['policy'][k] = tuple(spec['policy'][k])\n"
            "m.build_checkpoint(Path(sys.argv[2]), spec)\n")
    subprocess.run([python, "-c", code, json.dumps(spec), str(root / "ckpt")], check=True, capture_output=True,
                   cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"))
    return root / "ckpt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", default=DEFAULT_LEROBOT_PYTHON)
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--scheduler", choices=["DDPM", "DDIM"], default="DDIM")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (0: 100 for DDPM, 10 for DDIM)")
    parser.add_argument("--requests", type=int, default=5, help="timed requests per worker (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker")
    parser.add_argument("--compile", action="store_true", help="also time ours compiled (a third worker)")
    parser.add_argument("--worker", choices=["lerobot", "hlrp", "hlrp-compiled"], help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (100 if args.scheduler == "DDPM" else 10)
    if args.worker:
        worker(args.worker, args.ckpt, args.threads, steps)
        return 0

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(args.lerobot_python, root, args.size, args.scheduler)
        cfg = json.loads((ckpt / "config.json").read_text())
        n_params = sum(t.numel() for t in load_file(str(ckpt / "model.safetensors")).values())
        workers = [Worker(args.lerobot_python, "lerobot", ckpt, args.threads, steps),
                   Worker(sys.executable, "hlrp", ckpt, args.threads, steps)]
        if args.compile:
            workers.append(Worker(sys.executable, "hlrp-compiled", ckpt, args.threads, steps))
        kinds = [wk.kind for wk in workers]
        size = SIZES[args.size]
        rng = np.random.default_rng(0)
        times: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
        worst = {kind: 0.0 for kind in kinds[1:]}
        try:
            for i in range(args.requests + 1):
                h, w = size["image_hw"]
                req = {f"images.{c}": torch.from_numpy(rng.integers(0, 256, (1, 2, h, w, 3), dtype=np.uint8))
                       for c in size["cameras"]}
                req["state"] = torch.from_numpy(rng.normal(size=(1, 2, size["state_dim"])).astype(np.float32))
                req["noise"] = torch.randn(1, cfg["horizon"], size["action_dim"],
                                           generator=torch.Generator().manual_seed(i))
                req["seed"] = torch.tensor(1000 + i)
                save_file(req, str(root / "req.safetensors"))
                out = {}
                for wk in workers[i % len(workers):] + workers[:i % len(workers)]:  # each goes first in turn
                    timing = wk.request(root / "req.safetensors", root / f"{wk.kind}.safetensors")
                    out[wk.kind] = load_file(str(root / f"{wk.kind}.safetensors"))["actions"]
                    if i >= 1:
                        times[wk.kind].append(timing)
                for kind in kinds[1:]:
                    worst[kind] = max(worst[kind], (out[kind] - out["lerobot"]).abs().max().item())
        finally:
            for wk in workers:
                wk.close()
    print(f"checkpoint: {args.size} LeRobot diffusion, {n_params / 1e6:.1f}M parameters, {args.scheduler} "
          f"{steps} steps, horizon {cfg['horizon']}, n_obs_steps {cfg['n_obs_steps']}, down_dims {cfg['down_dims']}, "
          f"{len(size['cameras'])} camera(s) {size['image_hw'][0]}x{size['image_hw'][1]}, crop {cfg['crop_shape']}")
    print(f"machine: {os.cpu_count()} CPU cores, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"torch threads per worker: "
          f"{args.threads}; {args.requests} interleaved requests per worker after 1 warm-up")
    labels = {"lerobot": "LeRobot 0.6.1", "hlrp": "hlrp_ros (ours)", "hlrp-compiled": "ours, compiled"}
    med = {}
    for kind in kinds:
        chunk, enc, loop = (statistics.median(v[j] for v in times[kind]) for j in range(3))
        med[kind] = (chunk, enc, loop / steps)
        print(f"  {labels[kind]:<16} chunk {chunk * 1e3:9.1f} ms   encoder {enc * 1e3:7.2f} ms   "
              f"per step {loop / steps * 1e3:7.2f} ms   (medians; chunk min {min(v[0] for v in times[kind]) * 1e3:.1f})")
    for kind in kinds[1:]:
        ratios = [med[kind][j] / med["lerobot"][j] for j in range(3)]
        print(f"  ratio {labels[kind]} / LeRobot: chunk {ratios[0]:.3f}, encoder {ratios[1]:.3f}, "
              f"per step {ratios[2]:.3f}; max abs action difference over all requests {worst[kind]:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
