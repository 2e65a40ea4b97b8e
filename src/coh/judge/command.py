"""Pairwise human evaluation: people compare two outputs, their votes become feedback data.

  coh judge prepare --prompts PROMPTS --system NAME:url=URL --system NAME:url=URL,feedback=bad -o cmp.jsonl
  coh judge serve cmp.jsonl [--db cmp.sqlite] [--host 127.0.0.1] [--port 8010] [--password PW]
  coh judge results cmp.sqlite [--plot results.png] [--json]
  coh judge export cmp.sqlite -o prefs.jsonl   # then: coh data build -s preference:prefs.jsonl ...

A system is an OpenAI-compatible server (coh serve, vLLM, ...), optionally conditioned on a
feedback phrase (two phrases of one CoH model are two systems), or a file of prepared outputs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sqlite3
import sys
from pathlib import Path

from coh.cli import non_negative_float, positive_float, positive_int, probability, seed_int

DEFAULT_PORT = 8010
PASSWORD_ENV = "COH_JUDGE_PASSWORD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="judge_command", required=True, metavar="ACTION")

    p = sub.add_parser("prepare", help="the comparison set: every system's output for every prompt",
                       description="Ask each system for a reply to every prompt and write the comparisons "
                                   "(JSONL: id, prompt, outputs) that `coh judge serve` shows.")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompts: JSONL/JSON/parquet rows with 'prompt' (a string or chat messages) and an optional "
                        "'id'; or KIND:FILE for a `coh data` source kind (e.g. dialogue:hh-test.jsonl.gz), whose "
                        "context becomes the prompt")
    p.add_argument("--system", action="append", required=True, metavar="SPEC",
                   help="a system, twice or more: NAME:url=URL[,model=M][,feedback=good|bad|none|PHRASE]"
                        "[,api_key_env=VAR] (URL as for the OpenAI client, e.g. http://127.0.0.1:8000/v1) or "
                        "NAME:file=PATH (rows with 'prompt' and 'output')")
    p.add_argument("--output", "-o", required=True, help="comparisons file to write (.jsonl)")
    p.add_argument("--limit", type=positive_int, default=None, help="the first N prompts only")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first prompt row that cannot be used (an empty reply of a dialogue row, a "
                        "missing field), naming its file, line and field; by default such rows are skipped and "
                        "counted")
    p.add_argument("--max-tokens", type=positive_int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--temperature", type=non_negative_float, default=0.7, help="sampling temperature (default 0.7)")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling, in (0, 1] (default 1.0)")
    p.add_argument("--seed", type=seed_int, default=0, help="sampling seed sent with each request (default 0)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight per system (default 4)")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="seconds per request (default 300)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(judge_func=_run_prepare)

    p = sub.add_parser("serve", help="the voting web app",
                       description="Serve the voting page. Votes go to an SQLite database; several people can "
                                   "vote at once, and a person who comes back with the same name goes on where "
                                   "they stopped. The shared password may also come from $" + PASSWORD_ENV + ".")
    p.add_argument("comparisons", nargs="?", help="comparisons file (from `coh judge prepare`, or written by "
                                                   "hand); may be left out when --db already holds them")
    p.add_argument("--db", help="votes database (default: the comparisons file with suffix .sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port, 1 to 65535 (default {DEFAULT_PORT})")
    p.add_argument("--password", default=None, help=f"shared password for voters (or set ${PASSWORD_ENV})")
    p.add_argument("--max-votes", type=positive_int, default=None,
                   help="stop showing a comparison once it has this many votes (default: everyone judges all)")
    p.add_argument("--hide-results", action="store_true",
                   help="no results page while the study runs (so voters are not swayed)")
    p.set_defaults(judge_func=_run_serve)

    p = sub.add_parser("results", help="win / tie / loss per pair of systems, with intervals and a plot",
                       description="Win / tie / loss / neither shares per pair of systems with 95% Wilson "
                                   "intervals, as a table (or JSON) and a PNG plot.")
    p.add_argument("db", help="votes database")
    p.add_argument("--plot", metavar="PNG", help="write the plot here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(judge_func=_run_results)

    p = sub.add_parser("export", help="votes as preference rows for `coh data build -s preference:FILE`",
                       description="Write decisive votes as prompt/chosen/rejected rows (plus the voter's "
                                   "comment and provenance). Ties and 'neither' are counted, not written.")
    p.add_argument("db", help="votes database")
    p.add_argument("--output", "-o", required=True, help="preference file to write (.jsonl)")
    p.add_argument("--aggregate", choices=["vote", "majority"], default="vote",
                   help="one row per decisive vote (default) or one per comparison by majority")
    p.set_defaults(judge_func=_run_export)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        return args.judge_func(args)
    except sqlite3.DatabaseError as e:  # a database that broke while in use (corrupt, disk full, locked)
        raise ValueError(f"votes database: {e}") from e
    except OSError as e:  # a file named on the command line, or a disk that is full
        if isinstance(e, FileNotFoundError) and not e.filename:
            raise
        raise ValueError(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}") from e


def _output_file(path: str, flag: str = "--output") -> None:
    """Fail now, not after minutes of work, when ``path`` cannot be written as a file."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {path}: a folder; give a file name")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder")


def _run_prepare(args: argparse.Namespace) -> int:
    from coh.judge.sources import Generation, SetAside, SystemSpec, prepare, read_prompts

    _output_file(args.output)
    systems = [SystemSpec.parse(s) for s in args.system]
    set_aside = None if args.strict else SetAside()
    prompts, skipped = read_prompts(args.prompts, args.limit, set_aside)
    gen = Generation(args.max_tokens, args.temperature, args.top_p, args.seed, args.timeout, args.concurrency)
    summary = prepare(prompts, systems, gen, args.output, progress=not args.no_progress and sys.stderr.isatty())
    print(f"prompts: {len(prompts)}" + "".join(f"; skipped {n}: {why}" for why, n in skipped.items()))
    if set_aside:
        print(f"  {set_aside.summary()} (--strict stops at such a row instead)")
        for r in set_aside.rows[:5]:
            print(f"    line {r['line']}" + (f", field '{r['field']}'" if r["field"] else "") + f": {r['problem']}")
        if len(set_aside) > 5:
            print(f"    ... and {len(set_aside) - 5} more")
    for name, info in summary["systems"].items():
        notes = [f"{k}={v}" for k, v in info.items() if k not in ("empty",)]
        print(f"  {name}: {', '.join(notes)}; empty outputs: {info['empty']}")
    for pair, n in summary["identical"].items():
        if n:
            print(f"  {pair}: identical outputs for {n} prompt(s); those are not shown to voters")
    pairs = len(systems) * (len(systems) - 1) // 2
    print(f"comparisons: {len(prompts) * pairs} ({pairs} pair(s) of systems) -> {args.output}")
    print(f"next: coh judge serve {args.output}")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_bindable(host: str, port: int) -> None:
    """The address can be listened on now, so the page's URL is not printed for a server that cannot
    start (uvicorn would only log the error after it)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise ValueError(f"--host {host}: not an address of this machine ({e})") from None
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(address)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port or --host") from None


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from coh.judge.app import create_app
    from coh.judge.sources import read_comparisons
    from coh.judge.store import JudgeStore

    _check_bindable(args.host, args.port)
    if not args.comparisons and not args.db:
        raise ValueError("give a comparisons file (from `coh judge prepare`) or --db with comparisons in it")
    db = args.db or str(Path(args.comparisons).with_suffix(".sqlite"))
    rows = read_comparisons(args.comparisons) if args.comparisons else []
    store = JudgeStore(db)
    n = {"identical": 0}
    if rows:
        n = store.add_comparisons(rows)
        print(f"comparisons: {n['added']} added, {n['existing']} already in {db}"
              + (f"; {n['identical']} pair(s) with identical outputs left out" if n["identical"] else ""))
    total = store.count_comparisons()
    if total == 0 and n["identical"]:
        raise ValueError(f"nothing to judge: in every comparison the outputs are identical ({n['identical']} pair(s))")
    if total == 0:
        raise ValueError(f"{db}: no comparisons to judge; give the comparisons file")
    password = args.password or os.environ.get(PASSWORD_ENV) or None
    loopback = _is_loopback(args.host)
    if not loopback and not password:
        print(f"warning: {args.host} is reachable from other machines and there is no password; anyone who can "
              f"reach port {args.port} can vote (set --password or ${PASSWORD_ENV})", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    allowed = sorted({"127.0.0.1", "localhost", "[::1]", shown}) if loopback else None
    app = create_app(store, password, args.max_votes, not args.hide_results, allowed)
    print(f"{total} comparisons, votes in {db}\njudge at http://{shown}:{args.port}/"
          + ("" if args.hide_results else f"  (results: http://{shown}:{args.port}/results)"), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _open_store(path: str):
    from coh.judge.store import JudgeStore

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no votes database there (`coh judge serve` makes one)")
    return JudgeStore(path)


def _run_results(args: argparse.Namespace) -> int:
    from coh.judge.stats import format_table, pair_results, plot

    if args.plot:
        _output_file(args.plot, "--plot")
    results = pair_results(_open_store(args.db).votes())
    if args.json:
        print(json.dumps({"pairs": [r.to_dict() for r in results]}, indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    if args.plot:
        plot(results, args.plot)
        print(f"plot -> {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from coh.judge.export import export_preferences

    _output_file(args.output)
    s = export_preferences(_open_store(args.db), args.output, args.aggregate)
    print(f"votes: {s['votes']}; preference rows written: {s['rows']} -> {args.output}")
    print(f"not preferences, not written: tie {s['tie']}, neither {s['neither']}"
          + (f", comparisons split evenly {s['split_evenly']}" if "split_evenly" in s else ""))
    print(f"comments written: {s['comments']}, left out (on ties, 'neither' or the losing side): "
          f"{s['comments_left_out']}")
    if s["rows"]:
        print(f"next: coh data build -s preference:{args.output} -o DIR")
    else:
        print("no decisive vote yet, so no preference row: nothing to build training data from")
    return 0
