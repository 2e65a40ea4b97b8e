"""The original's data script, same flags and file names, built on ``coh data build``.

    python -m coh.data.pack_hf --output_dir=DIR --dataset=dialogue,webgpt,summary \\
        --include_feedback=p,n,pn,np,aux

writes, in the original's ``fields`` format: ``train_{include_feedback}.jsonl`` and
``eval_{include_feedback}.jsonl`` (every dataset, not only the last one as in the original),
their ``_shuffled`` copies, and one file per dataset (``hh_dialogue_train_...``,
``webgpt_train_...``, ``summary_train_...`` and the eval files). Differences from the original:
a seed (``--seed``, default 0) makes the output reproducible; hh-rlhf turns shared by both
transcripts are context without loss unless ``--shared_prefix=original``; WebGPT, which has no
eval split, gets a seeded held-out split; invalid rows are set aside and counted instead of
being written. A ``--dataset`` entry may also be a ``coh data build`` source spec
(``dialogue:train=FILE,eval=FILE``) to read local files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.phrases import DEFAULT_PHRASES
from coh.data.render import RenderSpec

_FILE_STEM = {"dialogue": "hh_dialogue", "webgpt": "webgpt", "summary": "summary"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coh.data.pack_hf", description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default=".")
    p.add_argument("--dataset", default="dialogue,webgpt,summary")
    p.add_argument("--include_feedback", default="p,n,pn,np,aux")
    p.add_argument("--gpt_marker", default="A helpful answer:")
    p.add_argument("--gpt_bad_marker", default="An unhelpful answer:")
    p.add_argument("--user_marker", default="User:")
    # Key-naming flags of the original; our writer uses the original's default key names.
    for flag, default in (("user_field_id", "marker_user"), ("gpt_field_id", "marker_gpt"),
                          ("gpt_bad_field_id", "marker_gpt_bad"), ("user_data_id", "human"),
                          ("gpt_data_id", "gpt"), ("gpt_bad_data_id", "gpt_bad")):
        p.add_argument(f"--{flag}", default=default, choices=[default],
                       help="accepted for compatibility; only the default key name is supported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared_prefix", choices=["context", "original"], default="context")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    specs = [SourceSpec.parse(d) for d in args.dataset.split(",") if d] if ":" not in args.dataset else [
        SourceSpec.parse(d) for d in args.dataset.split(";") if d
    ]
    phrases = {name: replace(ps, user=args.user_marker, good=args.gpt_marker, bad=args.gpt_bad_marker)
               for name, ps in DEFAULT_PHRASES.items()}
    fb = args.include_feedback
    cfg = BuildConfig(
        sources=specs, output_dir=str(out), phrases=phrases, seed=args.seed, skip_invalid=True,
        render=RenderSpec(feedback=RenderSpec.parse_feedback(fb), shared_prefix=args.shared_prefix),
        output_format="fields", progress=sys.stderr.isatty(),
    )
    summary = build(cfg)
    for split, theirs in (("train", "train"), ("eval", "eval")):
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        shutil.copyfile(out / f"{split}.jsonl", out / f"{theirs}_{fb}_shuffled.jsonl")
        # The unshuffled combined file lists datasets in the order given, as the original did.
        order = {s.name: i for i, s in enumerate(specs)}
        by_source = sorted(lines, key=lambda line: order.get(_source_of(line), len(order)))
        (out / f"{theirs}_{fb}.jsonl").write_text("".join(by_source), encoding="utf-8")
        for spec in specs:
            mine = [line for line in lines if _source_of(line) == spec.name]
            if mine:
                stem = _FILE_STEM.get(spec.name, spec.name)
                (out / f"{stem}_{theirs}_{fb}.jsonl").write_text("".join(mine), encoding="utf-8")
    print(f"records: train {summary['records']['train']}, eval {summary['records']['eval']}; "
          f"invalid rows set aside: {summary['invalid_rows']}; skipped: {summary['skipped_rows']} -> {out}")
    return 0


def _source_of(line: str) -> str:
    import json

    return json.loads(line).get("source", "")


if __name__ == "__main__":
    sys.exit(main())
