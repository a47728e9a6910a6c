"""Record on ROS 2, train, evaluate on ROS 2: the whole path from topics to a running policy, in one command.

    python -m hlrp_ros.tools.end_to_end --out artifacts/e2e                       # from scratch
    python -m hlrp_ros.tools.end_to_end --out artifacts/e2e --run finetune \\
        --init-from models/demo_arm --steps 2000 --lr 3e-4                        # fine-tune a checkpoint

1. record: ``record_demo`` (demo_sim + recorder_node as processes, the scripted expert on
   ``/joint_command``) into ``<out>/dataset`` until it holds ``--episodes`` episodes;
2. train: ``train --dataset <out>/dataset --policy hlrp`` into ``<out>/<run>`` (resumable: an
   interrupted run continues where it stopped);
3. evaluate: ``evaluate --backend ros`` on the training templates and the held-out paraphrases,
   with ``first_action_delay`` 0 (the recorded actions' convention, see ``record_demo``).

Each stage's seconds and the evaluation go to ``<out>/<run>/end_to_end.json``; a stage whose output
exists is not redone (delete it to redo it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("end_to_end")


def stage_record(args: argparse.Namespace, dataset: Path) -> dict:
    from hlrp_ros.tools import record_demo

    held = record_demo.recorded_episodes(dataset)
    missing = args.episodes - held
    if missing <= 0:
        return {"skipped": f"{dataset} holds {held} episodes"}
    if record_demo.main(["--episodes", str(missing), "--out", str(dataset), "--seed", str(args.seed)]) != 0:
        raise RuntimeError("recording failed")
    return {"episodes": record_demo.recorded_episodes(dataset)}


def stage_train(args: argparse.Namespace, dataset: Path, run: Path) -> dict:
    from hlrp_ros.tools import train

    if (run / "final" / "model.safetensors").exists():
        return {"skipped": f"{run / 'final'} exists"}
    argv = ["--dataset", str(dataset), "--policy", "hlrp", "--horizon", "16", "--image-size", "64",
            "--out", str(run), "--steps", str(args.steps), "--lr", str(args.lr), "--ema", "0.999",
            "--seed", "0", "--threads", str(args.threads), "--save-every", "500", "--resume"]
    if args.init_from is not None:
        argv += ["--init-from", str(args.init_from)]
    if train.main(argv) != 0:
        raise RuntimeError("training failed")
    return {"steps": args.steps, "init_from": str(args.init_from) if args.init_from else None}


def stage_evaluate(args: argparse.Namespace, run: Path) -> dict:
    from hlrp_ros.tools import evaluate

    out = run / "evaluation.json"
    evaluate.main(["--backend", "ros", "--checkpoint", str(run / "final"), "--episodes", str(args.eval_episodes),
                   "--conditions", "train,heldout", "--seed", str(args.eval_seed), "--json", str(out),
                   "--policy-param", "first_action_delay=0.0"])
    return {condition["condition"]: condition for condition in json.loads(out.read_text())["summary"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/e2e"))
    parser.add_argument("--run", default="scratch", help="name of the training run under --out")
    parser.add_argument("--episodes", type=int, default=300, help="episodes the dataset must hold")
    parser.add_argument("--seed", type=int, default=100, help="the recording's episode plans")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--init-from", type=Path, default=None, help="fine-tune this checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-episodes", type=int, default=100, help="per condition")
    parser.add_argument("--eval-seed", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dataset, run = args.out / "dataset", args.out / args.run
    run.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": " ".join(["python -m hlrp_ros.tools.end_to_end", *(argv or sys.argv[1:])])}
    for name, stage in (("record", lambda: stage_record(args, dataset)), ("train", lambda: stage_train(args, dataset, run)),
                        ("evaluate", lambda: stage_evaluate(args, run))):
        t0 = time.monotonic()
        report[name] = {**stage(), "seconds": round(time.monotonic() - t0, 1)}
        logger.info("%s: %s", name, json.dumps(report[name]))
        (run / "end_to_end.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
