"""One evaluation run from its config: what ``coh eval`` runs for each action, and what ``coh.evaluate``
is in Python. ``evaluate(config)`` picks the protocol by the config's type, reads the data, loads
the model (or takes a loaded one), evaluates, writes ``results.json`` / ``results.md`` (and
``invalid_rows.jsonl``, the generations, the plots of each protocol) into the output folder, and
returns the result; the command line only prints it."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from coh.eval.config import (
    ControllabilityConfig,
    DialogueConfig,
    HarnessConfig,
    PairwiseConfig,
    SummarizationConfig,
)
from coh.eval.report import EvalResult

EvalConfig = HarnessConfig | DialogueConfig | SummarizationConfig | ControllabilityConfig | PairwiseConfig


def output_dir(path: str | None, name: str) -> Path:
    """The run's folder, made now, so that a path that cannot be a folder fails before any work."""
    from coh.data.io import check_output_dir

    out = Path(path or f"coh-eval/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output-dir {out}: cannot make the folder ({e.strerror})") from None
    return out


def evaluate(config: EvalConfig, model=None) -> tuple[EvalResult, Path]:
    """Run the evaluation ``config`` describes (its type names the protocol); returns the result
    and the folder it was written to. ``model``: a ``coh.models.LoadedModel`` to evaluate instead
    of loading ``config.model`` again (dialogue, summarization and controllability)."""
    runs = {HarnessConfig: _harness, DialogueConfig: _dialogue, SummarizationConfig: _summarization,
            ControllabilityConfig: _controllability, PairwiseConfig: _pairwise}
    run = runs.get(type(config))
    if run is None:
        raise TypeError(f"expected one of {', '.join(c.__name__ for c in runs)}, got {type(config).__name__}")
    if model is not None and run in (_harness, _pairwise):
        raise ValueError(f"{type(config).__name__} takes its model(s) from the config, not a loaded model")
    return run(config, model) if run not in (_harness, _pairwise) else run(config)


# -- what every protocol run does ---------------------------------------------------------------------------
def _progress(config) -> bool:
    return config.progress and sys.stderr.isatty()


def _start(config, name: str):
    """The checks before any reading: the device is here, the output folder can be made. Returns
    the folder and where unusable rows go (None with ``--strict``: the first one stops the run)."""
    from coh.data.errors import SetAside
    from coh.models import pick_device

    pick_device(config.device)  # a device that is not there fails now, not after reading and loading
    return output_dir(config.output_dir, name), None if config.strict else SetAside()


def _load_model(config, loaded=None):
    from coh.models import load_for_inference

    if loaded is not None:
        return loaded
    return load_for_inference(config.model, config.device, trust_remote_code=config.trust_remote_code,
                              label=f"model '{config.model}'")


def _load_scorer(config):
    from coh.eval.scorers import load_scorer

    return load_scorer(config.scorer, config.device, config.scorer_batch_size, _progress(config),
                       config.trust_remote_code)


def _result(protocol: str, config, model: str, metrics: dict, ci95: dict, counts: dict, lm=None) -> EvalResult:
    """The run's result; its settings are the options (a recipe that reruns it) and the phrases used."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}
    if lm is not None:
        settings["phrases"] = {"user": lm.phrases.user, "good": lm.phrases.good, "bad": lm.phrases.bad}
    return EvalResult(protocol, model, config.data, metrics, ci95, counts, settings)


def _finish(result: EvalResult, out: Path, set_aside=None) -> tuple[EvalResult, Path]:
    from coh.eval.report import INVALID_ROWS, write_result

    if set_aside:
        set_aside.write(out / INVALID_ROWS)
        result.notes.append(f"{set_aside.summary(INVALID_ROWS)} (--strict stops at such a row instead)")
    write_result(result, out)
    return result, out


# -- the protocols ------------------------------------------------------------------------------------------
def _harness(config: HarnessConfig) -> tuple[EvalResult, Path]:
    from coh.eval.harness import run_harness

    out = output_dir(config.output_dir, "harness")
    result, _ = run_harness(config, out)
    return _finish(result, out)


def _dialogue(config: DialogueConfig, loaded=None) -> tuple[EvalResult, Path]:
    from coh.eval.dialogue import eval_dialogue
    from coh.eval.examples import read_examples

    out, set_aside = _start(config, "dialogue")
    examples, counts = read_examples("dialogue", config.data, config.limit, set_aside)  # data first: it is cheap
    lm = _load_model(config, loaded)
    metrics, ci95 = eval_dialogue(lm, examples, config.batch_tokens, out, _progress(config))
    counts["pairs"] = len(examples)
    return _finish(_result("dialogue", config, config.model, metrics, ci95, counts, lm), out, set_aside)


def _summarization(config: SummarizationConfig, loaded=None) -> tuple[EvalResult, Path]:
    from coh.eval.examples import read_examples
    from coh.eval.summarization import eval_summarization

    out, set_aside = _start(config, "summarization")
    examples, counts = read_examples("summary", config.data, config.limit, set_aside)
    lm = _load_model(config, loaded)
    metrics, ci95, more = eval_summarization(lm, examples, config, config.feedback, config.task_phrase, out,
                                             _progress(config))
    return _finish(_result("summarization", config, config.model, metrics, ci95, {**counts, **more}, lm), out,
                   set_aside)


def _controllability(config: ControllabilityConfig, loaded=None) -> tuple[EvalResult, Path]:
    from coh.eval.controllability import eval_controllability
    from coh.eval.examples import read_examples

    out, set_aside = _start(config, "controllability")
    examples, counts = read_examples(config.kind, config.data, config.limit, set_aside)
    scorer = _load_scorer(config)  # before the model: a scorer that cannot load fails in seconds
    lm = _load_model(config, loaded)
    metrics, ci95, more = eval_controllability(lm, examples, scorer, config, out, _progress(config))
    return _finish(_result("controllability", config, config.model, metrics, ci95, {**counts, **more}, lm), out,
                   set_aside)


def _pairwise(config: PairwiseConfig) -> tuple[EvalResult, Path]:
    from coh.eval.examples import read_examples
    from coh.eval.pairwise import Side, eval_pairwise

    out, set_aside = _start(config, "pairwise")
    a, b = Side.open(config.a, set_aside), Side.open(config.b, set_aside)
    need_prompts = config.data or (a.replies is None and b.replies is None)
    examples, counts = read_examples(config.kind, config.data, config.limit, set_aside) if need_prompts else (None, {})
    scorer = _load_scorer(config)
    metrics, ci95, more = eval_pairwise(a, b, scorer, examples, config, config.feedback, config.device, out,
                                        _progress(config), config.limit, config.api_key_env, config.trust_remote_code)
    return _finish(_result("pairwise", config, f"{config.a} vs {config.b}", metrics, ci95, {**counts, **more}), out,
                   set_aside)
