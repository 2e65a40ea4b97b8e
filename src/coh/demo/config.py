"""The options of ``coh demo`` (``DemoConfig``), on ``coh.options``: flags, ``--config`` recipes
and ``--print-config`` come from its fields. Nothing heavy is imported here."""

from __future__ import annotations

from dataclasses import dataclass

from coh.eval.config import AT_LEAST_1
from coh.options import check_fields, option

# The full run's sizes (about 2 minutes on 2 CPU cores) and --quick's (seconds; its scores mean nothing).
SIZES = {"rows": 3000, "vocab": 400, "hidden": 128, "layers": 2, "steps": 1200, "max_new_tokens": 24}
QUICK_SIZES = {"rows": 300, "vocab": 300, "hidden": 32, "layers": 1, "steps": 12, "max_new_tokens": 12}


def _size(name: str, text: str) -> int | None:
    return option(None, f"{text} (none: {SIZES[name]}; with --quick {QUICK_SIZES[name]})", metavar="N", **AT_LEAST_1)


@dataclass(kw_only=True)
class DemoConfig:
    """One demo run: ``steps`` optimizer steps of ``micro_batch_tokens`` tokens each, for both
    models. A size left at None takes the full run's value, or ``--quick``'s."""

    output_dir: str = option("runs/demo", "where the stages, results.json, report.md and demo.png go",
                             flags=("-o",), metavar="DIR")
    seed: int = option(0, "seed of the task, model, data and training")
    quick: bool = option(False, "a run of seconds through every stage (for tests; its scores mean nothing)")
    steps: int | None = _size("steps", "optimizer steps per model")
    rows: int | None = _size("rows", "preference rows of the synthetic task")
    vocab: int | None = _size("vocab", "tokens of the tokenizer trained on the task")
    hidden: int | None = _size("hidden", "width of the tiny LLaMA")
    layers: int | None = _size("layers", "layers of the tiny LLaMA")
    max_new_tokens: int | None = _size("max_new_tokens", "longest reply in tokens at evaluation")
    eval_fraction: float = option(0.1, "held-out share of the prompts, in (0, 1)", low=0, high=1, low_open=True,
                                  high_open=True, expected="a number above 0 and below 1")
    micro_batch_tokens: int = option(1024, "tokens per optimizer step", **AT_LEAST_1)
    lr: float = option(5e-3, "learning rate (a random tiny model; real fine-tuning wants 1e-5 to 2e-5)", low=0,
                       low_open=True, expected="a number above 0")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        check_fields(self)
        for name, value in (QUICK_SIZES if self.quick else SIZES).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
