"""``coh demo``: data, training (CoH and SFT), evaluation and a report, on a laptop CPU in minutes.

  coh demo [--output-dir runs/demo] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Build a synthetic feedback task, train a tiny LLaMA on it with CoH and with plain SFT "
                          "(same budget), and score both under the positive phrase, the negative phrase and none. "
                          "Nothing is downloaded; about 2 minutes on 2 CPU cores.")
    parser.add_argument("--output-dir", "-o", default="runs/demo",
                        help="where the stages, results.json, report.md and demo.png go (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task, model, data and training (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds through every stage (for tests; its scores mean nothing)")
    parser.add_argument("--steps", type=int, help="optimizer steps per model (default 1200; --quick 12)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from coh.demo.run import DemoConfig, run_demo

    kw = {"output_dir": args.output_dir, "seed": args.seed, "progress": not args.no_progress}
    if args.steps is not None:
        kw["steps"] = args.steps
    run_demo(DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw))
    return 0
