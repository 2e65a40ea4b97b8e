"""The pipeline in Python: the functions behind ``import coh`` that the commands do not already have
under a name of their own. Each calls the stage's own entry point, the one its command runs:

- ``build_records(rows_or_dataset, source=...)``: ``coh.data.build.build`` (``coh data build``) on
  in-memory rows, a ``datasets.Dataset`` / ``DatasetDict`` or a file, with the records handed back;
- ``load(path)``: ``coh.models.load_for_inference`` (what ``coh serve`` and ``coh eval`` load);
- ``generate(model, prompts, feedback=...)``: the inference prompt as training rendered context
  (``coh.eval.generations.prompt_ids``), continued through ``coh.generation``;
- ``evaluate(config)``: ``coh.eval.run.evaluate`` (``coh eval``'s actions), the result returned.

``coh.build(BuildConfig)`` and ``coh.train(TrainConfig)`` are the stages' own functions.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coh.data.errors import DataError
from coh.data.records import FeedbackRecord


@dataclass
class BuiltRecords:
    """What ``build_records`` built: the records of each split (in the order of ``train.jsonl`` /
    ``eval.jsonl``), the build summary (counts per source, skipped and invalid rows) and, with
    ``skip_invalid``, the rows set aside (``rejects.jsonl``'s entries)."""

    train: list[FeedbackRecord]
    eval: list[FeedbackRecord]
    summary: dict
    rejects: list[dict] = field(default_factory=list)

    def dataset(self, split: str = "train"):
        """A split as a ``datasets.Dataset``: ``id``, ``source``, ``split``, ``feedback``, ``text``
        (the full text, ``<eos>`` for each end-of-sequence token) and ``segments`` (role, text,
        loss, eos, label each). For TRL's token format see ``coh.to_trl_dataset``."""
        import datasets

        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return datasets.Dataset.from_list([
            {"id": r.id, "source": r.source, "split": r.split, "feedback": r.feedback, "text": r.text,
             "segments": [{"role": s.role, "text": s.text, "loss": s.loss, "eos": s.eos, "label": s.label}
                          for s in r.segments]} for r in getattr(self, split)])


def build_records(data: Iterable[dict] | Any | str | Path, source: str = "preference", *,
                  feedback: str | Sequence[str] = "p,n,pn,np", eval_fraction: float = 0.05, seed: int = 0,
                  phrases: str | dict | None = None, shared_prefix: str = "context", skip_invalid: bool = False,
                  name: str | None = None, output_dir: str | Path | None = None, num_proc: int = 1,
                  tokenizer: str | None = None) -> BuiltRecords:
    """Chain-of-Hindsight records from feedback data, exactly as ``coh data build`` makes them.

    ``data``: rows (dicts in the source kind's raw schema), a ``datasets.Dataset`` or
    ``DatasetDict`` (its own splits, see ``coh.data.from_disk``), or a path (a JSONL / JSON /
    parquet file or a ``save_to_disk`` folder). ``source``: the kind (``preference``, ``dialogue``,
    ``webgpt``, ``summary``, ``unpaired``, ``rated``). ``feedback``: the feedback types, a comma
    list or a sequence. Rows without a split of their own go to eval by a seeded hash of their
    prompt (``eval_fraction``). ``phrases``: a phrases file or a ready table (source kind ->
    ``PhraseSet``). ``output_dir``: keep the build folder there (what ``coh train`` reads);
    none: a temporary one. ``tokenizer``: also write token ids and loss masks (``tokenized/``).

    A bad row raises ``DataError`` naming it (``rows[3]``, ``dataset[3]`` or the file and line) and
    the field, unless ``skip_invalid`` sets it aside (``BuiltRecords.rejects``)."""
    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.records import read_records
    from coh.data.render import RenderSpec

    with tempfile.TemporaryDirectory(prefix="coh-build-") as tmp:
        files, label = _source_files(data, Path(tmp))
        render = RenderSpec(feedback=RenderSpec.parse_feedback(feedback) if isinstance(feedback, str)
                            else tuple(feedback), shared_prefix=shared_prefix)
        out = Path(output_dir) if output_dir is not None else Path(tmp) / "build"
        config = BuildConfig(sources=[SourceSpec(source, files=files, name=name)], output_dir=str(out), render=render,
                             phrases_file=phrases if isinstance(phrases, (str, Path)) else None,
                             phrases=phrases if isinstance(phrases, dict) else None, seed=seed,
                             eval_fraction=eval_fraction, skip_invalid=skip_invalid, num_proc=num_proc,
                             progress=False, tokenizer=tokenizer)
        try:
            summary = build(config)
        except DataError as e:
            raise _renamed(e, tmp, label) from None
        records = {split: list(read_records(out / f"{split}.jsonl")) for split in ("train", "eval")}
        rejects = []
        if (out / "rejects.jsonl").exists():
            rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
        for entry in rejects:
            entry.update(_renamed(DataError(entry["file"], entry["line"], entry["field"], entry["problem"]), tmp,
                                  label).as_dict())
        if label is not None:
            for report in summary["sources"].values():
                report["spec"]["files"] = {split: label for split in report["spec"]["files"]}
    return BuiltRecords(records["train"], records["eval"], summary, rejects)


def _source_files(data: object, tmp: Path) -> tuple[dict[str, str], str | None]:
    """The source's files for ``data``, written under ``tmp`` where it is in memory, and the name
    errors give it (None: a path of the user's, named as it is)."""
    if isinstance(data, (str, Path)):
        return {"train": str(data)}, None
    datasets = sys.modules.get("datasets")  # a Dataset in hand means it is imported; rows need not import it
    if datasets is not None and isinstance(data, (datasets.Dataset, datasets.DatasetDict)):
        data.save_to_disk(str(tmp / "dataset"))
        return {"train": str(tmp / "dataset")}, "dataset"
    if isinstance(data, dict):
        raise TypeError("expected rows (a list of dicts), a datasets.Dataset or a path, got one dict: wrap it in a list")
    path = tmp / "rows.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for row in data:  # default=str: dates and other non-JSON values, as the build writes rejects
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return {"train": str(path)}, "rows"


def _renamed(e: DataError, tmp: str, label: str | None) -> DataError:
    """``e`` naming the user's rows (``rows[i]``, 0-based as in the list) instead of our temporary file."""
    if label is None or not e.where.startswith(tmp):
        return e
    split = Path(e.where).relative_to(tmp).parts[1:]  # a DatasetDict's split: its folder
    name = label + "".join(f"[{s!r}]" for s in split)
    return DataError(f"{name}[{e.line - 1}]" if e.line is not None else name, None, e.field, e.problem)


def load(path: str | Path, device: str | None = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """A model folder (``coh train``'s ``OUTPUT/final``, or any HF causal LM) ready for generation
    and scoring: a ``coh.models.LoadedModel`` (model, tokenizer, trained phrases, device, mode)."""
    from coh.models import load_for_inference

    return load_for_inference(str(path), device=device, dtype=dtype, trust_remote_code=trust_remote_code)


Conversation = Sequence[dict]  # chat messages: {"role": "system" | "user" | "assistant", "content": str}


def generate(model, prompts: str | Conversation | Sequence[str | Conversation], feedback: str | None = None, *,
             max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             batch_size: int = 8, progress: bool = False) -> str | list[str]:
    """Replies of a trained model conditioned on a feedback phrase.

    ``model``: a ``LoadedModel`` (``coh.load``) or a model folder. ``prompts``: one prompt (a user
    message as text, or a conversation as chat messages ending with a user turn) or a list of
    them; one reply (a string) for one prompt, a list for a list. ``feedback``: ``good`` (the
    positive phrase the model was trained with), ``bad``, ``none`` (no phrase: an ``sft`` model),
    or any phrase text; None: the model's default (``good``; ``none`` for sft and dpo models).
    The prompt is rendered as training rendered context (``User:`` turns, earlier replies after
    the positive phrase and closed by EOS), and a reply ends at EOS, at the next ``User:`` or after
    ``max_new_tokens``. Greedy when ``temperature`` is 0; sampling draws from ``seed``."""
    from coh.eval.config import Sampling
    from coh.eval.generations import generate as generate_replies
    from coh.eval.generations import prompt_ids

    lm = load(model) if isinstance(model, (str, Path)) else model
    one = isinstance(prompts, str) or (isinstance(prompts, Sequence) and bool(prompts) and isinstance(prompts[0], dict))
    contexts = [_turns(p, i) for i, p in enumerate([prompts] if one else prompts)]
    if not contexts:
        return []
    if feedback is None:
        feedback = _default_feedback(lm)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
                        seed=seed)
    replies = generate_replies(lm, prompt_ids(lm, contexts, feedback), sampling, progress, f"generate ({feedback})")
    return replies[0] if one else replies


def _default_feedback(lm) -> str:
    from coh.cohjson import CohJson

    info = CohJson.read(lm.path) if Path(lm.path).is_dir() else None
    return info.default_feedback if info is not None else "good"


def _turns(prompt: str | Conversation, index: int) -> tuple:
    """A prompt as the turns of its context, checked (messages as OpenAI's chat format has them)."""
    from coh.data.feedback import Turn

    if isinstance(prompt, str):
        return (Turn("user", prompt),)
    turns = []
    for k, message in enumerate(prompt):
        where = f"prompt {index}, message {k}"
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: expected {{'role': 'system' | 'user' | 'assistant', 'content': str}}, got "
                             f"{message!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: 'content' must be a string, got {type(message.get('content')).__name__}")
        turns.append(Turn(message["role"], message["content"]))
    if not turns or turns[-1].role != "user":
        raise ValueError(f"prompt {index}: a conversation must end with a user message")
    return tuple(turns)


def evaluate(config, model=None):
    """Run the ``coh eval`` action that ``config`` describes (``DialogueConfig``,
    ``SummarizationConfig``, ``ControllabilityConfig``, ``PairwiseConfig``, ``HarnessConfig``) and
    return its ``EvalResult`` (metrics, 95 % intervals, counts), also written to its output folder.
    ``model``: a ``LoadedModel`` to evaluate instead of loading ``config.model`` again."""
    from coh.eval.run import evaluate as run_evaluation

    result, _ = run_evaluation(config, model)
    return result
