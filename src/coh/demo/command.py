"""``coh demo``: data, training (CoH and SFT), evaluation and a report, on a laptop CPU in minutes.

  coh demo [--output-dir runs/demo] [--seed 0] [--quick]

Every size is an option (a recipe with --config FILE; --print-config shows the resolved one).
"""

from __future__ import annotations

import argparse

from coh.demo.config import DemoConfig
from coh.options import add_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Build a synthetic feedback task, train a tiny LLaMA on it with CoH and with plain SFT "
                          "(same budget), and score both under the positive phrase, the negative phrase and none. "
                          "Nothing is downloaded; about 2 minutes on 2 CPU cores.")
    add_options(parser, DemoConfig)
    parser.set_defaults(func=_run_demo)


def _run_demo(config: DemoConfig) -> int:
    from coh.demo.run import run_demo

    run_demo(config)
    return 0
