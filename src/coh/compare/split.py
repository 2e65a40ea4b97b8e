"""Raw feedback rows split by prompt into policy training, scorer training and held-out rows.

Each row goes to one split by a seeded hash of its prompt (``coh.data.build.held_out``, the same
hash ``coh data build`` uses): below ``eval_fraction`` it is held out, below ``eval_fraction +
scorer_fraction`` it trains the reward model that scores replies (the split is called ``judge``,
its name in the files and results of earlier runs), else the policies. The same digest is compared with both
thresholds, so the three splits partition the prompts: rows sharing a prompt share a split.

Rows whose longest CoH record (``pn``, tokenized as training will) exceeds ``max_record_tokens``
are left out of every split and counted; nothing is cut. Rows the converter skips are counted too.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

SPLITS = ("policy", "judge", "eval")  # "judge": the reward model's (the scorer's) training rows


def split_of(seed: int, example, eval_fraction: float, scorer_fraction: float) -> str:
    from coh.data.build import held_out

    if held_out(seed, example, eval_fraction):
        return "eval"
    if held_out(seed, example, eval_fraction + scorer_fraction):
        return "judge"
    return "policy"


def split_rows(data: str, kind: str, out_dir: Path, tokenizer, seed: int, eval_fraction: float,
               scorer_fraction: float, max_record_tokens: int | None, skip_invalid: bool = False) -> dict:
    """Write ``out_dir/{policy,judge,eval}.jsonl`` (the raw rows, unchanged) and return the counts
    (also written to ``out_dir/summary.json``). A malformed row stops with its file, line and field,
    or with ``skip_invalid`` goes to ``out_dir/rejects.jsonl`` (with the problem) and is counted."""
    from coh.data.build import write_jsonl
    from coh.data.errors import DataError, RowError
    from coh.data.io import iter_local_rows
    from coh.data.phrases import DEFAULT_PHRASES, phrases_for
    from coh.data.render import RenderSpec, render_records
    from coh.data.sources import CONVERTERS, Skip
    from coh.data.tokenize import RecordTokenizer, tokenize_many

    convert = CONVERTERS[kind]
    phrases = phrases_for(kind, DEFAULT_PHRASES)
    kept: list[tuple[str, object, object]] = []  # (split, row, example)
    skipped: Counter = Counter()
    rejects: list[dict] = []
    rows = 0
    for line, row in iter_local_rows(data):
        rows += 1
        if not isinstance(row, dict):
            raise DataError(data, line, None, f"expected a JSON object, got {type(row).__name__}")
        try:
            ex = convert(row, f"{kind}/{line}", "train")
        except RowError as e:
            if not skip_invalid:
                raise e.at(data, line) from None
            rejects.append({**e.at(data, line).as_dict(), "row": row})
            continue
        if isinstance(ex, Skip):
            skipped[ex.reason] += 1
            continue
        kept.append((split_of(seed, ex, eval_fraction, scorer_fraction), row, ex))
    if not kept:
        raise ValueError(f"{data}: no {kind} examples ({rows} rows read)")
    rtok = RecordTokenizer(tokenizer, chat_template="never")
    longest = [max(len(t.input_ids) for t in tokenize_many(render_records(ex, RenderSpec(("pn", "np")), phrases, seed),
                                                           rtok))
               for _, _, ex in kept]
    out: dict[str, list] = {s: [] for s in SPLITS}
    too_long: Counter = Counter()
    for (split, row, _), n in zip(kept, longest):
        if max_record_tokens is not None and n > max_record_tokens:
            too_long[split] += 1
        else:
            out[split].append(row)
    for split in SPLITS:
        write_jsonl(out[split], out_dir / f"{split}.jsonl")
    if rejects:
        write_jsonl(rejects, out_dir / "rejects.jsonl")
    summary = {"data": data, "rows": rows, "skipped": dict(skipped), "invalid": len(rejects), "seed": seed,
               "fractions": {"eval": eval_fraction, "judge": scorer_fraction},
               "max_record_tokens": max_record_tokens,
               "rows_per_split": {s: len(out[s]) for s in SPLITS},
               "left_out_too_long": {s: too_long[s] for s in SPLITS}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
