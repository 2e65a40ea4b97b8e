"""`coh data build` with tokenization against the bare tokenizer, on the same text, in one run:
time and peak memory over a curve of sizes.

The real hh-rlhf sample (../shared/data, else the bundled slice) is repeated to N rows and built
into CoH records (default feedback ``p,n,pn,np``: four records per row), tokenized, and written
(records JSONL + token ids on disk). Each build runs in its own process; its peak resident memory
is sampled every few milliseconds over the whole process tree (the build and its workers, summed;
pages shared by forked workers count once per process, so the sum is an upper bound). The
baseline is the same tokenizer encoding the full text of those records with the Rust
``encode_batch`` and nothing else, run twice: on one thread (``TOKENIZERS_PARALLELISM=false``,
as the project's environment sets it, and as earlier figures of this script were taken) and on
as many threads as the build has processes. ``(write)`` is the part of the build's time after
the last row was read: the shuffle and the writing of the JSONL and ``tokenized/`` files.
Goals: peak memory that does not grow with N (under 2 GB at 160,000 rows x p,n,pn,np), and build
+ tokenize at most 1.5x the bare tokenizer.

    nice -n 10 python bench/data_build.py [--rows 10000,20000,40000,80000,160000]
        [--feedback p,n,pn,np] [--num-proc 2] [--rss-limit-gb 14]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz",
           REPO / "src" / "coh" / "data" / "builtin" / "hh-rlhf-harmless-sample.jsonl.gz"]
MB = 1 << 20


def child(spec: dict) -> int:
    """One build, in this (fresh) process; prints its time and the memory held before it started."""
    import psutil

    import coh.data.build as build_module
    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.render import RenderSpec
    from coh.models import load_tokenizer

    load_tokenizer(spec["tokenizer"])  # the floor: libraries imported and a tokenizer loaded, no data yet
    floor = psutil.Process().memory_info().rss
    cfg = BuildConfig([SourceSpec.parse(spec["source"])], spec["out"],
                      render=RenderSpec(feedback=tuple(spec["feedback"].split(","))), skip_invalid=True,
                      num_proc=spec["num_proc"], tokenizer=spec["tokenizer"], progress=False)
    read_done = []  # the final write (shuffle, JSONL, tokenized/) is what follows the last source
    build_source = build_module.build_source

    def timed_source(*args, **kwargs):
        build_source(*args, **kwargs)
        read_done.append(time.perf_counter())

    build_module.build_source = timed_source
    t0 = time.perf_counter()
    summary = build(cfg)
    end = time.perf_counter()
    print(json.dumps({"seconds": end - t0, "write": end - read_done[-1], "floor": floor, "records": summary["records"],
                      "tokens": {s: summary["tokens"][s]["tokens"] for s in ("train", "eval")}}))
    return 0


def tree_rss(proc) -> tuple[int, int]:
    """(resident bytes of ``proc``, of its descendants summed); processes that ended count 0."""
    import psutil

    def rss(p) -> int:
        try:
            return p.memory_info().rss
        except psutil.Error:
            return 0

    try:
        kids = proc.children(recursive=True)
    except psutil.Error:
        kids = []
    return rss(proc), sum(rss(k) for k in kids)


def run_build(spec: dict, limit: int, interval: float) -> dict:
    """Run ``child(spec)`` in a subprocess, sampling the tree's memory; stop it above ``limit`` bytes."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            text=True)
    ps = psutil.Process(proc.pid)
    peak = peak_parent = peak_workers = 0
    stopped = False
    while proc.poll() is None:
        parent, workers = tree_rss(ps)
        if parent + workers > peak:
            peak, peak_parent, peak_workers = parent + workers, parent, workers
        if peak > limit and not stopped:
            stopped = True
            for p in [ps, *ps.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        time.sleep(interval)
    out = proc.stdout.read()
    if stopped:
        return {"stopped": True, "peak": peak, "peak_parent": peak_parent, "peak_workers": peak_workers}
    if proc.returncode != 0:
        raise SystemExit(f"the build failed (exit {proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak": peak, "peak_parent": peak_parent,
            "peak_workers": peak_workers, "stopped": False}


def bare(spec: dict) -> int:
    """The baseline, in this (fresh) process: the Rust tokenizer alone on the full text of the
    build's records (read in batches; only the ``encode_batch`` calls timed). Prints its seconds
    and the tokens it made."""
    from coh.data.records import read_records
    from coh.models import load_tokenizer

    tok = load_tokenizer(spec["tokenizer"])
    seconds, tokens, texts = 0.0, 0, []

    def encode() -> None:
        nonlocal seconds, tokens
        t0 = time.perf_counter()
        ids = [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
        seconds += time.perf_counter() - t0
        tokens += sum(map(len, ids))
        texts.clear()

    for split in ("train", "eval"):
        for r in read_records(Path(spec["out"]) / f"{split}.jsonl"):
            texts.append(r.text.replace("<eos>", tok.eos_token))
            if len(texts) == 20_000:
                encode()
    if texts:
        encode()
    print(json.dumps({"seconds": seconds, "tokens": tokens}))
    return 0


def run_bare(spec: dict, threads: int) -> float:
    """Seconds of ``bare(spec)`` with the Rust tokenizer on ``threads`` threads."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false",
           "RAYON_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--bare", json.dumps(spec)], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="10000,20000,40000,80000,160000", help="comma-separated row counts")
    ap.add_argument("--feedback", default="p,n,pn,np")
    ap.add_argument("--num-proc", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--vocab", type=int, default=16_000, help="vocabulary of the offline-trained BPE tokenizer")
    ap.add_argument("--rss-limit-gb", type=float, default=14.0,
                    help="stop a build whose process tree holds more than this (a shared machine)")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between memory samples")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.bare:
        return bare(json.loads(args.bare))

    from coh.tiny import train_tiny_tokenizer

    sample = next(p for p in SAMPLES if p.exists())
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    sizes = [int(n) for n in args.rows.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f} at the start")
    threads = sorted({1, args.num_proc})
    print(f"feedback {args.feedback}, --num-proc {args.num_proc}; bare tokenizer on "
          f"{' and '.join(map(str, threads))} thread(s)")
    print(f"{'rows':>7} {'records':>8} {'tokens':>11} {'build s':>8} {'(write)':>8} {'peak MB':>8} {'(parent':>8} {'workers)':>9} "
          f"{'floor MB':>8} " + " ".join(f"{f'bare{t} s':>7} {'ratio':>6}" for t in threads), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = tmp / "tokenizer"
        train_tiny_tokenizer((json.loads(line)["chosen"] for line in lines), args.vocab, "bpe", tok_dir)
        for rows in sizes:
            raw, out = tmp / "hh.jsonl", tmp / "out"
            with open(raw, "w", encoding="utf-8") as f:
                for i in range(rows // 2):
                    f.write(lines[i % len(lines)])
            spec = {"source": f"dialogue:train={raw},eval={raw},limit={rows // 2}", "out": str(out),
                    "feedback": args.feedback, "num_proc": args.num_proc, "tokenizer": str(tok_dir)}
            r = run_build(spec, int(args.rss_limit_gb * 1024 * MB), args.interval)
            if r["stopped"]:
                print(f"{rows:>7} stopped above {args.rss_limit_gb} GB "
                      f"(parent {r['peak_parent'] / MB:,.0f} MB, workers {r['peak_workers'] / MB:,.0f} MB)", flush=True)
                results.append((rows, r))
                continue
            bares = {t: run_bare(spec, t) for t in threads}
            records = r["records"]["train"] + r["records"]["eval"]
            tokens = r["tokens"]["train"] + r["tokens"]["eval"]
            print(f"{rows:>7} {records:>8} {tokens:>11,} {r['seconds']:>8.1f} {r['write']:>8.1f} {r['peak'] / MB:>8,.0f} "
                  f"{r['peak_parent'] / MB:>8,.0f} {r['peak_workers'] / MB:>9,.0f} {r['floor'] / MB:>8,.0f} "
                  + " ".join(f"{bares[t]:>7.1f} {r['seconds'] / bares[t]:>5.2f}x" for t in threads), flush=True)
            results.append((rows, {**r, "bare": bares}))
            raw.unlink()
            shutil.rmtree(out)
    done = [(n, r) for n, r in results if not r["stopped"]]
    if len(done) > 1:
        (n0, first), (n1, last) = done[0], done[-1]
        print(f"peak memory at {n1:,} rows / at {n0:,} rows: {last['peak'] / first['peak']:.2f}x "
              f"({n1 / n0:.0f}x the rows); goal: flat, and under 2,048 MB")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
