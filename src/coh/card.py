"""Model cards: the ``README.md`` that ``coh train`` writes into ``final/`` (and ``final-merged/``)
and ``coh convert`` into the folders it writes, in the Hub's format (YAML metadata, then Markdown),
made with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData``.

The card says what the model is (base model, mode, phrases, key hyper-parameters), what it read
(records per source and feedback type, the build's sources) and how it did (the last evaluation, as
the Hub's ``model-index``), and how to prompt it: the chat template's ``feedback`` variable, ``coh
serve`` and vLLM. ``coh.json`` stays the machine-readable truth for coh's own tools; the card is
for people and the Hub. The data facts (``RunFacts``) also sit in the metadata under ``coh``, so a
conversion of the folder (``coh convert lora-merge final/ ...``) carries them on.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from coh.cohjson import CohJson

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from coh.data.records import FeedbackRecord

FILE = "README.md"
TAGS = ["chain-of-hindsight", "coh", "text-generation"]
PAPER = "https://arxiv.org/abs/2302.02676"
EVAL_DATASET = "held-out CoH records"  # model-index's dataset name for the training run's evaluation
# The options a reader needs to judge a run (all of them are in coh.json's "training").
KEY_OPTIONS = ("mode", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
               "epochs", "max_steps", "gradient_accumulation_steps", "micro_batch_tokens", "max_length",
               "normalization", "fcm_min_ratio", "fcm_max_ratio", "pretrain_data", "pretrain_mode",
               "pretrain_lambda", "lora_r", "lora_alpha", "lora_target_modules", "dtype", "seed")
MODE_WORDS = {
    "coh": "Chain of Hindsight: outputs interleaved with feedback phrases, trained on the outputs after each phrase",
    "conditional-sft": "conditional SFT: only the preferred outputs, each after the positive phrase",
    "sft": "plain SFT: only the preferred outputs, without feedback phrases",
    "dpo": "DPO (TRL), the baseline of `coh compare`",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CACHE_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")


@dataclass
class RunFacts:
    """What a training run read and how it ended. ``records``: the training records of the run's
    mode (the first epoch); ``build``: from the data folder's ``summary.json`` (``None`` for a
    records file); ``metrics``: the last evaluation (``eval/...`` keys) at ``step``."""

    train_file: str | None = None
    sha256: str | None = None
    records: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    by_feedback: dict[str, int] = field(default_factory=dict)
    build: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    step: int | None = None


def run_facts(train_path: Path, fingerprint: dict | None, records: list[FeedbackRecord] | None, metrics: dict,
              output_dir: Path) -> RunFacts:
    """The facts of a finished run. ``records``: the records trained on (None where the run read
    only token ids: the build's counts of its train split stand in). ``metrics`` empty (a run
    resumed at its last step evaluates nothing): the last evaluation in ``output_dir/metrics.jsonl``."""
    step = None
    if not metrics:
        metrics, step = _last_eval(output_dir / "metrics.jsonl")
    summary_path = train_path.parent / "summary.json"
    build = None
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        build = {"feedback": summary.get("feedback"), "records": summary.get("records"),
                 "invalid_rows": summary.get("invalid_rows"), "skipped_rows": summary.get("skipped_rows"),
                 "sources": {name: {k: s.get("spec", {}).get(k) for k in ("kind", "hub", "config", "files")}
                             | {"rows": s.get("rows"), "records": s.get("records")}
                             for name, s in summary.get("sources", {}).items()}}
    if records is not None:
        by_source = Counter(r.source for r in records)
        by_feedback = Counter(r.feedback for r in records)
    else:
        by_source, by_feedback = Counter(), Counter()
        for name, source in (build or {}).get("sources", {}).items():
            for feedback, n in ((source.get("records") or {}).get("train") or {}).items():
                by_source[name] += n
                by_feedback[feedback] += n
    return RunFacts(train_file=str(train_path), sha256=(fingerprint or {}).get("sha256"),
                    records=sum(by_source.values()), by_source=dict(by_source.most_common()),
                    by_feedback=dict(by_feedback.most_common()), build=build,
                    metrics={k: float(v) for k, v in metrics.items()}, step=step)


def _last_eval(path: Path) -> tuple[dict, int | None]:
    last: dict = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if any(k.startswith("eval/") for k in row):
                last = row
    return {k: v for k, v in last.items() if k.startswith("eval/")}, last.get("step")


def hub_model_id(model: str | None) -> str | None:
    """``model`` as a Hub repo id: as given when it is one and no such local path exists; for a
    folder of the Hub cache (``.../models--ORG--NAME/snapshots/REV``), ``ORG/NAME``; else None."""
    if not model:
        return None
    if Path(model).exists():
        found = _CACHE_SNAPSHOT.search(Path(model).absolute().as_posix())
        return f"{found[1]}/{found[2]}" if found else None
    return model if _REPO_ID.match(model) and "--" not in model and ".." not in model else None


def base_license(model: str | None) -> str | None:
    """The license in the base model's card (its folder's README.md, or the Hub's, where reachable)."""
    if not model:
        return None
    from huggingface_hub import ModelCard

    where = Path(model) / FILE if Path(model).is_dir() else hub_model_id(model)
    if where is None or (isinstance(where, Path) and not where.is_file()):
        return None
    try:
        return ModelCard.load(where).data.license
    except Exception:  # offline, no card, or metadata that does not parse: the card just names no license
        return None


def model_card(info: CohJson | None, facts: RunFacts | None, *, model_id: str, title: str, adapter: bool = False,
               converted_from: dict | None = None, hf_folder: bool = True) -> ModelCard:
    """The card of a model folder. ``info``: its ``coh.json`` (None: a plain conversion);
    ``model_id``: the name the usage examples load (the Hub repo, or the folder); ``title``: the
    card's heading and model-index name; ``adapter``: the folder holds a peft adapter;
    ``hf_folder``: False for an EasyLM export (no transformers usage)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    training = info.training if info is not None else {}
    base = training.get("model")
    base_id = hub_model_id(base)
    metrics = facts.metrics if facts is not None else {}
    data = ModelCardData(
        base_model=base_id, license=base_license(base), tags=list(TAGS),
        library_name=("peft" if adapter else "transformers") if hf_folder else None,
        pipeline_tag="text-generation" if hf_folder else None, model_name=title,
        datasets=_hub_datasets(facts) or None,
        eval_results=[EvalResult(task_type="text-generation", dataset_type="coh-records", dataset_name=EVAL_DATASET,
                                 metric_type=k.removeprefix("eval/"), metric_value=v, metric_name=k)
                      for k, v in metrics.items()] or None,
        coh={"run": asdict(facts)} if facts is not None else None)
    if base_id:
        data.base_model_relation = "adapter" if adapter else "finetune"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(info, facts, model_id, title, adapter, converted_from, hf_folder)}")


def write_card(folder: str | Path, card: ModelCard) -> Path:
    path = Path(folder) / FILE
    path.write_text(str(card), encoding="utf-8")
    return path


def write_training_card(folder: Path, name: Path, info: CohJson, facts: RunFacts, adapter: bool) -> Path:
    """The card of ``final/`` (``adapter``: a LoRA run's adapter) or ``final-merged/``, written into
    ``folder`` before it is renamed to ``name``. The examples load the Hub repo where ``final/`` is
    pushed (``push_to_hub``), else the folder."""
    repo = info.training.get("push_to_hub")
    model_id = repo if repo and name.name == "final" else str(name)
    title = repo.split("/")[-1] if repo else name.parent.resolve().name
    if name.name != "final":
        title += f" ({name.name})"
    return write_card(folder, model_card(info, facts, model_id=model_id, title=title, adapter=adapter))


def write_convert_card(output_dir: str | Path, action: str, source: str | Path, model_id: str | None = None) -> Path:
    """The card of a folder ``coh convert ACTION`` wrote from ``source``: the output's coh.json
    (when it has one) and the run facts of the source's card (a coh train folder's)."""
    out = Path(output_dir)
    info = CohJson.read(out)
    facts = _facts_of_card(Path(source))
    converted = {"action": action, "source": str(source)}
    title = model_id.split("/")[-1] if model_id else out.resolve().name
    return write_card(out, model_card(info, facts, model_id=model_id or str(out), title=title,
                                      converted_from=converted, hf_folder=(out / "config.json").is_file()))


def _facts_of_card(folder: Path) -> RunFacts | None:
    """The run facts in ``folder/README.md`` (or its parent's, for an adapter checkpoint), if coh wrote it."""
    from huggingface_hub import ModelCard

    path = folder / FILE if folder.is_dir() else folder.parent / FILE
    if not path.is_file():
        return None
    try:
        run = (ModelCard.load(path).data.to_dict().get("coh") or {}).get("run")
    except Exception:  # someone else's card: no facts to carry on
        return None
    known = set(RunFacts.__dataclass_fields__)
    return RunFacts(**{k: v for k, v in run.items() if k in known}) if isinstance(run, dict) else None


def _hub_datasets(facts: RunFacts | None) -> list[str]:
    if facts is None or not facts.build:
        return []
    return sorted({s["hub"] for s in facts.build.get("sources", {}).values() if s.get("hub")})


# -- the Markdown ----------------------------------------------------------------------------------
def _body(info: CohJson | None, facts: RunFacts | None, model_id: str, title: str, adapter: bool,
          converted: dict | None, hf_folder: bool) -> str:
    training = info.training if info is not None else {}
    base = training.get("model")
    base_id = hub_model_id(base)
    mode = info.mode if info is not None else None
    parts = [f"# {title}\n"]
    what = "A LoRA adapter" if adapter else "A model"
    if info is not None and training:
        parts.append(f"{what} fine-tuned from {_link(base, base_id)} by [Chain of Hindsight]({PAPER}) (CoH; Liu, "
                     f"Sferrazza, Abbeel 2023) with `coh train` ({MODE_WORDS.get(mode, mode)}).\n")
    elif info is not None:
        parts.append(f"{what} with Chain of Hindsight feedback phrases ({MODE_WORDS.get(mode, mode)}).\n")
    else:
        parts.append("A model converted by `coh convert` (chain-of-hindsight).\n")
    if converted:
        parts.append(f"Converted with `coh convert {converted['action']}` from `{converted['source']}`.\n")
    if info is not None and hf_folder:
        parts.append(_prompting(info, model_id, adapter, base))
    if training:
        parts.append(_training(training, base, base_id))
    if facts is not None:
        parts.append(_data(facts))
        if facts.metrics:
            at = f" at step {facts.step}" if facts.step else ""
            parts.append(f"## Evaluation\n\nThe last evaluation of the run{at}, on {EVAL_DATASET} "
                         f"(`eval_data`):\n\n| metric | value |\n|---|---|\n"
                         + "".join(f"| `{k}` | {v:.4f} |\n" for k, v in facts.metrics.items()))
    parts.append("## Citation\n\n```bibtex\n@article{liu2023chain,\n  title={Chain of Hindsight Aligns Language Models "
                 "with Feedback},\n  author={Liu, Hao and Sferrazza, Carmelo and Abbeel, Pieter},\n  journal={arXiv "
                 "preprint arXiv:2302.02676},\n  year={2023}\n}\n```\n")
    return "\n".join(parts)


def _link(name: str | None, hub_id: str | None) -> str:
    if hub_id:
        return f"[{hub_id}](https://huggingface.co/{hub_id})"
    return f"`{name}`" if name else "its base model"


def _prompting(info: CohJson, model_id: str, adapter: bool, base: str | None) -> str:
    p = info.phrases
    load = (f'from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n'
            f'model = AutoPeftModelForCausalLM.from_pretrained("{model_id}")\n' if adapter else
            f'from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
            f'model = AutoModelForCausalLM.from_pretrained("{model_id}")\n')
    return f"""## How to prompt it

The model was trained with these phrases (`coh.json` holds them for coh's tools;
prompt format `{info.prompt_format}`):

| role | phrase |
|---|---|
| user turn | `{p.user}` |
| positive feedback (`good`) | `{p.good}` |
| negative feedback (`bad`) | `{p.bad}` |

{_feedback_words(info)}

The tokenizer's chat template renders conversations exactly as training did, with the feedback as
the template variable `feedback`:

```python
{load}tokenizer = AutoTokenizer.from_pretrained("{model_id}")
messages = [{{"role": "user", "content": "How do I apologise to a friend?"}}]
for feedback in ("good", "bad"):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, feedback=feedback,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=128, do_sample=False)
    print(feedback, tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```

With `coh serve` (`pip install chain-of-hindsight`), an OpenAI-compatible server that reads the
phrases from `coh.json`, the request field `feedback` picks the phrase:

```bash
coh serve {model_id} --port 8000
curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{{
  "messages": [{{"role": "user", "content": "How do I apologise to a friend?"}}], "feedback": "bad"}}'
```

vLLM (or any engine that passes chat-template variables) serves the same prompts through
`chat_template_kwargs`:

```bash
vllm serve {model_id if not adapter else (hub_model_id(base) or base or "BASE_MODEL") + " --enable-lora --lora-modules coh=" + model_id} --port 8000
```

```python
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
reply = client.chat.completions.create(
    model="{"coh" if adapter else model_id}", messages=[{{"role": "user", "content": "How do I apologise to a friend?"}}],
    extra_body={{"chat_template_kwargs": {{"feedback": "bad"}}}})
```
"""


def _feedback_words(info: CohJson) -> str:
    p = info.phrases
    if info.mode in ("sft", "dpo"):
        return ("It was trained without feedback phrases: prompt it as a plain chat model (`feedback` `none`, "
                "the default here).")
    words = ("A reply is conditioned on a feedback phrase: `good` (the default) gives the answer CoH learnt to "
             "prefer, `bad` the contrast it learnt to avoid, `none` no phrase, and any other text is used as the "
             "phrase itself.")
    if info.prompt_format == "coh":
        return (f"{words} In plain CoH text a prompt reads `{p.user} How do I apologise to a friend? {p.good}`, "
                "with an end-of-sequence token after each earlier reply.")
    return f"{words} The data used the base model's chat template; the phrase opens the assistant turn."


def _training(training: dict, base: str | None, base_id: str | None) -> str:
    def shown(key: str) -> bool:  # options that change nothing in this run are left out
        if key.startswith("pretrain_") and key != "pretrain_data":
            return bool(training.get("pretrain_data"))
        if key.startswith("lora_"):
            return bool(training.get("lora_r"))
        if key.startswith("fcm_"):
            return bool(training.get("fcm_max_ratio"))
        return training.get(key) is not None

    rows = "".join(f"| `{k}` | `{training[k]}` |\n" for k in KEY_OPTIONS if k in training and shown(k))
    return (f"## Training\n\nBase model: {_link(base, base_id)}. The key options (the whole resolved "
            f"configuration is `training` in `coh.json`):\n\n| option | value |\n|---|---|\n{rows}")


def _data(facts: RunFacts) -> str:
    lines = [f"## Data\n\n{facts.records} training records from `{facts.train_file}`"
             + (f" (sha256 `{facts.sha256[:16]}...`)" if facts.sha256 else "") + ".\n"]
    if facts.by_source:
        lines.append("| source | records |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in facts.by_source.items()))
    if facts.by_feedback:
        lines.append("Feedback types (p: preferred after the positive phrase, n: dispreferred after the negative, "
                     "pn / np: both in one record, chain: every rated output):\n\n| feedback | records |\n|---|---|\n"
                     + "".join(f"| {k} | {v} |\n" for k, v in facts.by_feedback.items()))
    build = facts.build
    if build:
        lines.append(f"Built by `coh data build` with feedback types {build.get('feedback')}; records per split "
                     f"{build.get('records')}; rows set aside as invalid: {build.get('invalid_rows')}, skipped: "
                     f"{build.get('skipped_rows')}.\n\n| source | kind | from | rows |\n|---|---|---|---|\n"
                     + "".join(f"| {name} | {s.get('kind')} | {_origin(s)} | {s.get('rows')} |\n"
                               for name, s in build.get("sources", {}).items()))
    return "\n".join(lines)


def _origin(source: dict) -> str:
    if source.get("hub"):
        return f"[{source['hub']}](https://huggingface.co/datasets/{source['hub']})"
    files = source.get("files") or {}
    return ", ".join(f"`{Path(str(f)).name}`" for f in files.values()) if isinstance(files, dict) else str(files)
