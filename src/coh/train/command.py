"""Chain-of-Hindsight fine-tuning of any Hugging Face causal LM: options as flags, a YAML recipe
(--config, see configs/train/), or both (flags win).

Run again with the same --output-dir, it resumes from the newest complete checkpoint; a checkpoint
trained with other settings is refused unless --resume-with-changes. It stops (exit status 1) at
the first NaN or infinite loss or gradient norm, keeping the last good checkpoint. The old
KEY=VALUE arguments (lr=2e-5) still work, with a deprecation note.

examples:
  coh train -c configs/train/tiny-cpu.yaml
  coh train --model Qwen/Qwen2.5-0.5B --train-data runs/coh-data --lr 2e-5 --fcm-max-ratio 0.05
  coh train -c configs/train/lora-1gpu.yaml --model Qwen/Qwen2.5-7B --max-steps 10
  coh train -c RECIPE --print-config         # the resolved options, as a recipe
  torchrun --nproc_per_node 8 -m coh train -c configs/train/llama7b-coh-fsdp.yaml
"""

from __future__ import annotations

import argparse

from coh.options import add_options
from coh.train.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TrainConfig, key_value_overrides=True, recipe_flags=("-c",))


def run(config: TrainConfig) -> int:
    from coh.train.trainer import train

    train(config)
    return 0
