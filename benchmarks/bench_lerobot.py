#!/usr/bin/env python3
"""Chunk latency of HLRP vs LeRobot (0.4.x or 0.6.x) on the same SmolVLA checkpoint and inputs.

One run, interleaved: a worker process per venv (the project's and LeRobot's) loads the same checkpoint
(built by that LeRobot with seeded random weights); the driver sends each request to both workers,
alternating which goes first, and every worker times its own chunk (raw uint8 images + state +
instruction -> un-normalised actions, i.e. LeRobot's preprocessor -> ``predict_action_chunk`` ->
postprocessor vs our ``predict_action_chunk``) so the pipe traffic is not counted. The workers exchange
inputs/outputs as safetensors files; the driver checks that both return the same actions.

Each worker also times the phases of every chunk (wrapped methods and module hooks, no extra
synchronisation: CPU ops are synchronous): vision tower, connector, VLM layers (the prefix pass),
expert cache (ours only: LeRobot recomputes it inside every step) and each denoising step; "other" is
the rest (pre-processing, embeddings, post-processing). Before and after the requests each worker
measures its own fp32 matmul ceiling (2048^3, best of 3, with its torch and thread count), and the load
average is printed before and after. ``--profile`` adds one chunk per worker under ``torch.profiler``
(top kernels by self CPU time). ``--threads 2 1`` runs both settings on one checkpoint. Repeating
``--lerobot-python`` runs several LeRobot versions in the same interleaved rounds; the oldest builds the
checkpoint (e.g. 0.4.4 with transformers 4), and a newer LeRobot then runs it with its own transformers'
vision position ids, so its action difference to ours is large by design (0.26 on the tiny size).

Usage (repository root, project venv; needs the LeRobot venv for the other worker)::

    env/run.sh python benchmarks/bench_lerobot.py [--lerobot-python /work/lerobot061/bin/python]
        [--requests 8] [--threads 2 1] [--size small|base|tiny] [--omp-wait-policy PASSIVE] [--profile]
        [--dtype float32|bfloat16]
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
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_SCRIPT = REPO / "scripts" / "make_lerobot_fixtures.py"
DEFAULT_LEROBOT_PYTHON = "/work/lerobot061/bin/python"
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
# Workers: read command lines, answer one JSON line each.
#   "chunk <request.safetensors> <reply.safetensors>" -> {"seconds", "cpu_seconds", "phases", "switches"}
#   "profile <request> <reply> <table.txt>"           -> {"seconds"} (table of the top kernels written)
#   "ceiling"                                          -> {"gflops"}
# ------------------------------------------------------------------------------------------------------
PHASES = ("vision tower", "connector", "VLM layers", "expert cache", "steps")


def _load_fixture_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_lerobot_fixtures", FIXTURE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class PhaseTimer:
    """Seconds spent in labelled methods / modules during one chunk (calls are synchronous on CPU)."""

    def __init__(self) -> None:
        self.current: dict[str, list[float]] = defaultdict(list)

    def wrap(self, obj: object, name: str, label: str) -> None:
        """Times every call of ``obj.name`` (an instance attribute shadowing the method)."""
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.current[label].append(time.perf_counter() - start)
            return out

        setattr(obj, name, timed)

    def hook(self, module, label: str) -> None:
        """Times every forward of ``module``."""
        starts: list[float] = []
        module.register_forward_pre_hook(lambda _m, _a: starts.append(time.perf_counter()))
        module.register_forward_hook(lambda _m, _a, _o: self.current[label].append(time.perf_counter() - starts.pop()))

    def take(self) -> dict[str, list[float]]:
        out, self.current = dict(self.current), defaultdict(list)
        return out


def _lerobot_runner(ckpt: Path, timer: PhaseTimer):
    fixtures = _load_fixture_module()
    os.chdir(ckpt.parent)  # vlm_model_name is relative to the generation directory
    policy, pre, post = fixtures.load_lerobot(ckpt)
    model = policy.model
    vlm = model.vlm_with_expert.get_vlm_model()
    timer.hook(vlm.vision_model, "vision tower")
    timer.hook(vlm.connector, "connector")
    timer.wrap(model.vlm_with_expert, "forward", "vlm forward")  # the prefix pass, then once inside each step
    timer.wrap(model, "denoise_step", "steps")

    def run(req: dict):
        images = {k: v.numpy() for k, v in req.items() if k.startswith("observation.images.")}
        return fixtures.lerobot_chunk(policy, pre, post, images, req["state"].numpy(), [TASK],
                                      req["noise"], policy.config.num_steps)[0]

    def phases(raw: dict[str, list[float]]) -> dict[str, list[float]]:
        forwards = raw.pop("vlm forward", [])
        raw["VLM layers"] = forwards[:1]  # the first call of a chunk is the prefix pass
        return raw

    import lerobot

    return run, phases, f"LeRobot {lerobot.__version__}"


def _hlrp_runner(ckpt: Path, timer: PhaseTimer, dtype: str):
    from hlrp_ros.policies.base import Observation
    from hlrp_ros.policies.lerobot_smolvla import load_lerobot_smolvla

    policy = load_lerobot_smolvla(ckpt, tokenizer_dir=ckpt.parent / "vlm", dtype=dtype)
    vwe = policy.model.vlm_with_expert
    timer.wrap(vwe, "encode_vision", "vision tower")
    timer.wrap(vwe, "connect", "connector")
    timer.wrap(vwe, "forward_prefix", "VLM layers")
    timer.wrap(vwe, "build_expert_cache", "expert cache")
    timer.wrap(policy.model, "denoise_step", "steps")

    def run(req: dict):
        obs = Observation(images={k.removeprefix("observation.images."): v[0].numpy()
                                  for k, v in req.items() if k.startswith("observation.images.")},
                          state=req["state"][0].numpy(), instruction=TASK)
        return policy.predict_action_chunk(obs, noise=req["noise"][0])

    return run, (lambda raw: raw), "HLRP (ours)" + ("" if dtype == "float32" else f" {dtype}")


def matmul_ceiling(torch, n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of the best of ``repeats`` ``n^3`` fp32 matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def worker(kind: str, ckpt: Path, threads: int, dtype: str) -> None:
    """Serves the commands above with LeRobot ("lerobot") or our loader ("hlrp").

    Both workers get the policy node's host-memory settings (huge pages, freed memory kept), so the
    comparison is about the model code alone.
    """
    from hlrp_ros.allocator import keep_freed_memory, request_huge_pages

    request_huge_pages()  # before torch is imported
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    proto, sys.stdout = sys.stdout, sys.stderr  # LeRobot prints to stdout; keep it for the protocol
    timer = PhaseTimer()
    if kind == "lerobot":
        run, phases, label = _lerobot_runner(ckpt, timer)
    else:
        run, phases, label = _hlrp_runner(ckpt, timer, dtype)
    keep_freed_memory()
    info = {"label": label, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
            "mkldnn": torch.backends.mkldnn.is_available(), "mkl": torch.backends.mkl.is_available()}
    print(json.dumps(info), file=proto, flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "ceiling":
            reply = {"gflops": matmul_ceiling(torch)}
        elif command == "chunk":
            req = load_file(args[0])
            timer.take()
            usage0, cpu0, start = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
            actions = run(req)
            elapsed, cpu, usage = time.perf_counter() - start, time.process_time() - cpu0, resource.getrusage(resource.RUSAGE_SELF)
            save_file({"actions": actions.contiguous()}, args[1])
            reply = {"seconds": elapsed, "cpu_seconds": cpu, "phases": phases(timer.take()),
                     "switches": (usage.ru_nvcsw - usage0.ru_nvcsw) + (usage.ru_nivcsw - usage0.ru_nivcsw)}
        elif command == "profile":
            from torch.profiler import ProfilerActivity, profile

            req = load_file(args[0])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                run(req)
                elapsed = time.perf_counter() - start
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48)
            Path(args[2]).write_text(f"{label}, torch {torch.__version__}, {threads} thread(s), "
                                     f"chunk under the profiler {elapsed * 1e3:.0f} ms\n{table}")
            reply = {"seconds": elapsed}
        else:
            raise ValueError(f"unknown command {command!r}")
        print(json.dumps(reply), file=proto, flush=True)


# ------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------
class Worker:
    """A worker process speaking the line protocol above."""

    def __init__(self, python: str, kind: str, ckpt: Path, threads: int, dtype: str, omp_wait_policy: str | None) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if omp_wait_policy:
            env["OMP_WAIT_POLICY"] = omp_wait_policy
        self.kind = kind
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", kind, "--ckpt", str(ckpt), "--threads", str(threads),
             "--dtype", dtype],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("{"):
            raise RuntimeError(f"{kind} worker failed to start (said {line!r})")
        self.info = json.loads(line)
        self.label = self.info["label"]

    def call(self, *words: object) -> dict:
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _requests(cameras: dict, cfg: dict, count: int):
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    for i in range(count):
        req = {f"observation.images.{k}": torch.from_numpy(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8))
               for k, (h, w) in cameras.items()}
        req["state"] = torch.from_numpy(rng.normal(size=(1, 6)).astype(np.float32))
        req["noise"] = torch.randn(1, cfg["chunk_size"], cfg["max_action_dim"], generator=torch.Generator().manual_seed(i))
        yield req


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _summary(label: str, replies: list[dict]) -> str:
    """One line: chunk median/min/max, phase medians (per chunk; steps also per step), CPUs utilised."""
    chunk = sorted(r["seconds"] for r in replies)
    parts = [f"  {label:<22} chunk median {statistics.median(chunk) * 1e3:7.1f} ms (min {chunk[0] * 1e3:7.1f}, "
             f"max {chunk[-1] * 1e3:7.1f})"]
    phase_ms = []
    accounted = [0.0] * len(replies)
    for name in PHASES:
        per_chunk = [sum(r["phases"].get(name, [])) for r in replies]
        if not any(per_chunk):
            phase_ms.append(f"{name} -")
            continue
        accounted = [a + p for a, p in zip(accounted, per_chunk, strict=True)]
        text = f"{name} {statistics.median(per_chunk) * 1e3:.1f}"
        if name == "steps":
            steps = [s for r in replies for s in r["phases"].get(name, [])]
            text += f" ({statistics.median(steps) * 1e3:.1f}/step, first {statistics.median(r['phases']['steps'][0] for r in replies) * 1e3:.1f})"
        phase_ms.append(text)
    other = statistics.median(r["seconds"] - a for r, a in zip(replies, accounted, strict=True))
    phase_ms.append(f"other {other * 1e3:.1f}")
    cpus = statistics.median(r["cpu_seconds"] / r["seconds"] for r in replies)
    switches = statistics.median(r["switches"] for r in replies)
    return "\n".join(parts + ["      ms: " + ", ".join(phase_ms) + f"; CPUs busy {cpus:.2f}, context switches {switches:.0f}"])


def lerobot_version(python: str) -> tuple[int, ...]:
    """The version of the LeRobot installed for ``python``."""
    out = subprocess.run([python, "-c", "import lerobot; print(lerobot.__version__)"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return tuple(int(part) for part in out.split(".")[:3] if part.isdigit())


def run_setting(args, ckpt: Path, root: Path, cameras: dict, cfg: dict, threads: int) -> None:
    """One side-by-side run at ``threads`` threads per worker; prints its block."""
    print(f"--- {threads} thread(s) per worker, OMP_WAIT_POLICY={args.omp_wait_policy or '(default)'}; {_load()}")
    workers = [Worker(py, "lerobot", ckpt, threads, "float32", args.omp_wait_policy) for py in args.lerobot_python]
    workers.append(Worker(sys.executable, "hlrp", ckpt, threads, args.dtype, args.omp_wait_policy))
    from safetensors.torch import load_file, save_file

    replies: dict[str, list[dict]] = {w.label: [] for w in workers}
    worst: dict[str, float] = {}
    try:
        ceilings = {w.label: [w.call("ceiling")["gflops"]] for w in workers}
        for i, req in enumerate(_requests(cameras, cfg, args.requests + 2)):
            save_file(req, str(root / "req.safetensors"))
            order = workers if i % 2 == 0 else workers[::-1]
            out = {}
            for w in order:
                reply = w.call("chunk", root / "req.safetensors", root / f"{w.kind}.safetensors")
                out[w.label] = load_file(str(root / f"{w.kind}.safetensors"))["actions"]
                if i >= 2:
                    replies[w.label].append(reply)
            ours = out[workers[-1].label]
            for w in workers[:-1]:
                worst[w.label] = max(worst.get(w.label, 0.0), (ours - out[w.label]).abs().max().item())
        for w in workers:
            ceilings[w.label].append(w.call("ceiling")["gflops"])
        profiles = []
        if args.profile:
            for w in workers:
                table = root / f"profile_{w.kind}.txt"
                w.call("profile", root / "req.safetensors", root / f"{w.kind}.safetensors", table)
                profiles.append(table.read_text())
    finally:
        for w in workers:
            w.close()
    for w in workers:
        i = w.info
        print(f"  {w.label}: torch {i['torch']}, transformers {i['transformers']}, {i['threads']} thread(s), "
              f"oneDNN {i['mkldnn']}, MKL {i['mkl']}; fp32 matmul ceiling {ceilings[w.label][0]:.1f} before, "
              f"{ceilings[w.label][1]:.1f} after GFLOP/s")
    for w in workers:
        print(_summary(w.label, replies[w.label]))
    ours = statistics.median(r["seconds"] for r in replies[workers[-1].label])
    for w in workers[:-1]:
        theirs = statistics.median(r["seconds"] for r in replies[w.label])
        print(f"  ratio ours / {w.label} (chunk medians): {ours / theirs:.3f}; "
              f"max abs action difference over all requests: {worst[w.label]:.3g}")
    print(f"  {_load()}")
    for table in profiles:
        print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", action="append", default=None,
                        help=f"python of a LeRobot venv (repeat for several versions; default {DEFAULT_LEROBOT_PYTHON}); "
                             "the oldest LeRobot builds the checkpoint")
    parser.add_argument("--requests", type=int, default=8, help="timed requests per worker (after 2 warm-ups)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads per worker (each setting in turn)")
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="our worker's dtype")
    parser.add_argument("--omp-wait-policy", choices=["ACTIVE", "PASSIVE"], default=None,
                        help="OMP_WAIT_POLICY for every worker (default: the OpenMP runtime's own)")
    parser.add_argument("--profile", action="store_true", help="also one chunk per worker under torch.profiler")
    parser.add_argument("--worker", choices=["lerobot", "hlrp"], help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.ckpt, args.threads[0], args.dtype)
        return 0
    # The oldest LeRobot builds the checkpoint: newer ones read older files (LeRobot 0.4's transformers 4
    # cannot read the tokenizer files transformers 5 writes). Our loader then follows that generation's vision
    # position ids, so a newer LeRobot's actions differ from ours (and from the builder's) by design.
    args.lerobot_python = sorted(args.lerobot_python or [DEFAULT_LEROBOT_PYTHON], key=lerobot_version)

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = dict(SIZES[args.size])
        cameras = size.pop("cameras", CAMERAS)
        spec = dict(size, seed=0, norm_map={"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
                    cameras={k: list(v) for k, v in cameras.items()}, state_dim=6, action_dim=6, cases=[], step_counts=[])
        (root / "spec.json").write_text(json.dumps(spec))
        subprocess.run([args.lerobot_python[0], str(FIXTURE_SCRIPT), "--spec", str(root / "spec.json"),
                        "--out", str(root / "gen")], check=True, capture_output=True, cwd=REPO)
        ckpt = root / "gen" / "checkpoint"
        n_params = sum(t.numel() for t in load_file(str(ckpt / "model.safetensors")).values())
        cfg = json.loads((ckpt / "config.json").read_text())
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "unknown CPU")
        print(f"checkpoint: {args.size} SmolVLA, {n_params / 1e6:.1f}M parameters, chunk {cfg['chunk_size']} x "
              f"{cfg['max_action_dim']}, {cfg['num_steps']} denoising steps, "
              f"{len(cameras)} camera(s) {', '.join(f'{h}x{w}' for h, w in cameras.values())} -> "
              f"{cfg['resize_imgs_with_padding'][1]}x{cfg['resize_imgs_with_padding'][0]}")
        print(f"machine: {cpu}, {os.cpu_count()} CPUs; {args.requests} interleaved requests per worker after "
              f"2 warm-ups; times are medians; our dtype {args.dtype}, LeRobot float32")
        for threads in args.threads:
            run_setting(args, ckpt, root, cameras, cfg, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
