"""`coh train` start-up on a large tokenized build: from launch to the first optimizer step
(seconds) and peak memory, reading the build's ``tokenized/`` folder memory-mapped ("after") vs
tokenizing the records again ("before": ``tokenized/coh_tokenize.json`` hidden for that run, so
training says why and tokenizes), in one run; prints the ratio.

The data: hh-rlhf rows from ../shared/data (else the bundled slice) repeated to N/4 rows (each
repeat a new line of the file, so every record has its own id) and built by ``coh data build
--tokenizer`` with feedback ``p,n,pn,np`` into N records, no eval split. The model: a tiny LLaMA
from ``coh.tiny`` with an offline-trained BPE tokenizer (vocabulary 16,000). The build is kept
in ``--work-dir`` and reused by later runs.

Each training run is a fresh process (``coh train`` with ``--max-steps 1``; under ``--nproc`` > 1
``torchrun`` on CPU, gloo). The time is from just before the process is started to the end of
the first ``optimizer.step`` (a global optimizer step hook in each training process writes the
time and ends the process: saving the final model is not part of start-up); the CPU seconds
(user + system, of the training processes and their finished workers) are shown beside it, as
wall time on a shared machine is mostly waiting for a core. Memory is sampled
every 20 ms over the whole process tree (psutil RSS, summed: pages of the memory-mapped files
and of libraries shared between processes count once per process, so the sum is an upper
bound). ``--today-src`` also runs another checkout's ``src`` (e.g. /work/main/src, which
tokenizes in memory on every rank) under the same memory limit. Goals (issue 18): under 30 s and
2 GB for 640,000 records.

    nice -n 10 python bench/train_startup.py [--records 640000] [--work-dir /tmp/coh-startup]
        [--nproc 1] [--build-only] [--today-src /work/main/src] [--rss-limit-gb 12]
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz",
           REPO / "src" / "coh" / "data" / "builtin" / "hh-rlhf-harmless-sample.jsonl.gz"]
MB = 1 << 20


def make_build(work: Path, records: int, num_proc: int) -> Path:
    """``work/data-<records>``: a tokenized build of ``records`` records (and the tiny model)."""
    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.render import RenderSpec
    from coh.tiny import make_tiny_model, train_tiny_tokenizer

    out = work / f"data-{records}"
    model = work / "model"
    sample = next(p for p in SAMPLES if p.exists())
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if not (model / "config.json").exists():
        tok = train_tiny_tokenizer((json.loads(line)["chosen"] for line in lines), 16_000, "bpe")
        make_tiny_model(model, tok, "llama", hidden=32, layers=2, heads=2)
    if (out / "summary.json").exists():
        return out
    raw = work / f"hh-{records}.jsonl"
    rows = records // 4
    with open(raw, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(lines[i % len(lines)])
    t0 = time.perf_counter()
    summary = build(BuildConfig([SourceSpec.parse(f"dialogue:{raw}")], str(out), eval_fraction=0.0, skip_invalid=True,
                                render=RenderSpec(feedback=("p", "n", "pn", "np")), num_proc=num_proc,
                                tokenizer=str(model), progress=False))
    raw.unlink()
    print(f"built {summary['records']['train']} records from {rows} rows in {time.perf_counter() - t0:.0f} s "
          f"({summary['skipped_rows']} rows skipped, {summary['invalid_rows']} invalid)", flush=True)
    return out


def child(spec: dict) -> int:
    """One `coh train` in this process, ended at its first optimizer step (the time to ``spec['mark']``)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def first_step(optimizer, args, kwargs) -> None:
        import resource

        used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = sum(u.ru_utime + u.ru_stime for u in used)
        Path(spec["mark"] + f".{os.environ.get('RANK', '0')}").write_text(json.dumps({"time": time.time(), "cpu": cpu}))
        os._exit(0)

    register_optimizer_step_post_hook(first_step)
    from coh.cli import main

    return main(["train", *spec["argv"]])


def tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *_children(proc)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def run_training(model: Path, data: Path, out: Path, nproc: int, limit: int, src: Path) -> dict:
    """Launch one training run; its seconds to the first optimizer step and peak tree RSS."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    mark = str(out) + ".first-step"
    for old in Path(mark).parent.glob(Path(mark).name + ".*"):
        old.unlink()
    argv = ["--model", str(model), "--train-data", str(data), "-o", str(out), "--max-steps", "1", "--max-length", "2048",
            "--overlong", "skip", "--save-every", "1000", "--log-every", "1", "--report-to", "none", "--no-progress"]
    spec = json.dumps({"argv": argv, "mark": mark})
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
               "--child", spec]
    else:
        cmd = [sys.executable, __file__, "--child", spec]
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak, stopped = 0, False
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        if peak > limit and not stopped:
            stopped = True
            for p in [ps, *_children(ps)]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        time.sleep(0.02)
    log = proc.stdout.read()
    marks = sorted(Path(mark).parent.glob(Path(mark).name + ".*"))
    if stopped:
        return {"stopped": True, "peak": peak, "log": log}
    if len(marks) < nproc:
        raise SystemExit(f"the training run failed (exit {proc.returncode}):\n{log[-3000:]}")
    ends = [json.loads(m.read_text()) for m in marks]
    seconds = max(e["time"] for e in ends) - t0
    return {"stopped": False, "seconds": seconds, "cpu": sum(e["cpu"] for e in ends), "peak": peak, "log": log}


def said(log: str) -> str:
    """What the run said about its training tokens."""
    return next((line for line in log.splitlines() if line.startswith(("training tokens:", "tokenizing "))),
                "(nothing said: a checkout that always tokenizes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=640_000, help="records in the build (rows x p,n,pn,np)")
    ap.add_argument("--work-dir", default="/tmp/coh-startup", help="where the build and the runs go (kept)")
    ap.add_argument("--nproc", type=int, default=1, help="training processes (torchrun on CPU)")
    ap.add_argument("--num-proc", type=int, default=min(2, os.cpu_count() or 1), help="build worker processes")
    ap.add_argument("--build-only", action="store_true", help="make the build and stop")
    ap.add_argument("--skip-before", action="store_true", help="only the run from the tokenized build")
    ap.add_argument("--today-src", help="also run the training of another checkout's src folder")
    ap.add_argument("--rss-limit-gb", type=float, default=12.0, help="stop a run whose process tree holds more")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f} at the start; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    data = make_build(work, args.records, args.num_proc)
    if args.build_only:
        return 0
    model, limit = work / "model", int(args.rss_limit_gb * 1024 * MB)
    rows = []
    runs = [("after", data, REPO / "src", False)]
    if not args.skip_before:
        runs.append(("before", data, REPO / "src", True))
    if args.today_src:
        runs.append((f"today ({args.today_src})", data, Path(args.today_src), False))
    for name, folder, src, hide in runs:
        config = folder / "tokenized" / "coh_tokenize.json"
        hidden = config.with_name(config.name + ".hidden")
        if hide:
            config.rename(hidden)
        try:
            r = run_training(model, folder, work / "run", args.nproc, limit, src)
        finally:
            if hide:
                hidden.rename(config)
        rows.append((name, r))
        shown = "stopped above the limit" if r["stopped"] else f"{r['seconds']:.1f} s ({r['cpu']:.1f} CPU s)"
        print(f"{name}: {shown}, peak {r['peak'] / MB:,.0f} MB; {said(r['log'])}", flush=True)
    done = dict(rows)
    if "before" in done and not done["before"]["stopped"] and not done["after"]["stopped"]:
        b, a = done["before"], done["after"]
        print(f"{args.records} records, {args.nproc} process(es): launch -> first optimizer step "
              f"{b['seconds']:.1f} s -> {a['seconds']:.1f} s ({b['seconds'] / a['seconds']:.1f}x faster; CPU "
              f"{b['cpu']:.1f} s -> {a['cpu']:.1f} s, {b['cpu'] / a['cpu']:.1f}x), "
              f"peak RSS {b['peak'] / MB:,.0f} MB -> {a['peak'] / MB:,.0f} MB ({b['peak'] / a['peak']:.1f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
