"""`coh data build` with tokenization against the bare tokenizer, on the same text, in one run.

The real hh-rlhf sample (../shared/data, else the bundled slice) is repeated to N rows (default
160,000, the size of hh-rlhf train) and built into CoH records (default feedback ``pn``: one record
per row), tokenized, and written (records JSONL + token ids on disk). The baseline is the same
tokenizer encoding the full text of those records in one batched call and nothing else.
Goal: build + tokenize at most 2x the bare tokenizer.

    python bench/data_build.py [--rows 160000] [--feedback pn] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz",
           REPO / "src" / "coh" / "data" / "builtin" / "hh-rlhf-harmless-sample.jsonl.gz"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=160_000)
    ap.add_argument("--feedback", default="pn")
    ap.add_argument("--num-proc", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--vocab", type=int, default=16_000, help="vocabulary of the offline-trained BPE tokenizer")
    args = ap.parse_args()

    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.records import read_records
    from coh.data.render import RenderSpec
    from coh.tiny import train_tiny_tokenizer

    sample = next(p for p in SAMPLES if p.exists())
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / "hh.jsonl"
        with open(raw, "w", encoding="utf-8") as f:
            for i in range(args.rows):
                f.write(lines[i % len(lines)])
        tok_dir = tmp / "tokenizer"
        tok = train_tiny_tokenizer((json.loads(line)["chosen"] for line in lines), args.vocab, "bpe", tok_dir)

        cfg = BuildConfig([SourceSpec.parse(f"dialogue:train={raw},eval={raw},limit={args.rows // 2}")],
                          str(tmp / "out"), render=RenderSpec(feedback=tuple(args.feedback.split(","))),
                          skip_invalid=True, num_proc=args.num_proc, tokenizer=str(tok_dir), progress=False)
        t0 = time.perf_counter()
        summary = build(cfg)
        ours = time.perf_counter() - t0

        texts = [r.text.replace("<eos>", tok.eos_token) for split in ("train", "eval")
                 for r in read_records(tmp / "out" / f"{split}.jsonl")]
        # The strictest baseline: the Rust tokenizer on whole texts, no Python wrapper.
        t0 = time.perf_counter()
        ids = [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok(texts, add_special_tokens=False)["input_ids"]
        bare_hf = time.perf_counter() - t0

    n_records = summary["records"]["train"] + summary["records"]["eval"]
    n_tokens = summary["tokens"]["train"]["tokens"] + summary["tokens"]["eval"]["tokens"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"rows {args.rows} -> records {n_records} (feedback {args.feedback}), tokens ours {n_tokens}, "
          f"bare {sum(map(len, ids))}, vocab {len(tok)}")
    print(f"coh data build + tokenize: {ours:8.2f} s  ({n_records / ours:,.0f} records/s)")
    print(f"bare tokenizer, same text: {bare:8.2f} s  ({n_records / bare:,.0f} records/s; "
          f"through transformers' tokenizer(...) call: {bare_hf:.2f} s)")
    print(f"ratio (goal <= 2.0):       {ours / bare:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
