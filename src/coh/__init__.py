"""Chain of Hindsight: align language models with human feedback turned into text.

The pipeline in Python (the same functions the ``coh`` commands run; see docs/python.md)::

    import coh

    records = coh.build_records(rows, source="preference")          # coh data build, in memory
    coh.build(coh.BuildConfig(...))                                  # coh data build
    coh.train(coh.TrainConfig(model=..., train_data=..., ...))       # coh train
    model = coh.load("runs/coh/final")                               # a trained model for inference
    coh.generate(model, "What is the capital of Peru?", feedback="bad")
    coh.evaluate(coh.ControllabilityConfig(...), model=model)        # coh eval
    coh.to_trl_dataset(records.train, model.tokenizer)               # TRL's SFTTrainer format

Names are imported on first use (PEP 562), so ``import coh`` and the command line's start-up do not
pay for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that is its home
_EXPORTS = {
    "build_records": "coh.api", "BuiltRecords": "coh.api", "load": "coh.api", "generate": "coh.api",
    "evaluate": "coh.api",
    "build": "coh.data.build", "BuildConfig": "coh.data.build", "SourceSpec": "coh.data.build",
    "RenderSpec": "coh.data.render", "FeedbackRecord": "coh.data.records", "FeedbackExample": "coh.data.feedback",
    "PhraseSet": "coh.data.phrases", "to_trl_dataset": "coh.data.trl",
    "TrainConfig": "coh.train.config",
    "LoadedModel": "coh.models",
    "DialogueConfig": "coh.eval.config", "SummarizationConfig": "coh.eval.config",
    "ControllabilityConfig": "coh.eval.config", "PairwiseConfig": "coh.eval.config", "HarnessConfig": "coh.eval.config",
    "EvalResult": "coh.eval.report",
    "read_recipe": "coh.options",
}
# ``coh.train`` is the subpackage, and calling it trains (coh/train/__init__.py makes it callable).
__all__ = sorted([*_EXPORTS, "train"])


def __getattr__(name: str):
    if name == "train":
        return importlib.import_module("coh.train")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once: later look-ups do not come here
        return value
    raise AttributeError(f"module 'coh' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
