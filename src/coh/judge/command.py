"""Pairwise human evaluation: people compare two outputs, their votes become feedback data.

  coh judge prepare --prompts PROMPTS --system NAME:url=URL --system NAME:url=URL,feedback=bad -o cmp.jsonl
  coh judge serve cmp.jsonl [--db cmp.sqlite] [--host 127.0.0.1] [--port 8010] [--password PW]
  coh judge results cmp.sqlite [--plot results.png] [--json]
  coh judge export cmp.sqlite -o prefs.jsonl   # then: coh data build -s preference:prefs.jsonl ...

A system is an OpenAI-compatible server (coh serve, vLLM, ...), optionally conditioned on a
feedback phrase (two phrases of one CoH model are two systems), or a file of prepared outputs.
Every action also takes its options from a YAML recipe (--config FILE, keys as the option names;
flags override it) and prints them resolved with --print-config (options: coh.judge.config).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import socket
import sqlite3
import sys
from pathlib import Path

from coh.judge.config import (
    PASSWORD_ENV,
    JudgeExportConfig,
    JudgePrepareConfig,
    JudgeResultsConfig,
    JudgeServeConfig,
)
from coh.options import add_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="judge_command", required=True, metavar="ACTION")

    p = sub.add_parser("prepare", help="the comparison set: every system's output for every prompt",
                       description="Ask each system for a reply to every prompt and write the comparisons "
                                   "(JSONL: id, prompt, outputs) that `coh judge serve` shows.")
    add_options(p, JudgePrepareConfig)
    p.set_defaults(func=_reporting_database_errors(_run_prepare))

    p = sub.add_parser("serve", help="the voting web app",
                       description="Serve the voting page. Votes go to an SQLite database; several people can "
                                   "vote at once, and a person who comes back with the same name goes on where "
                                   "they stopped. The shared password may also come from $" + PASSWORD_ENV + ".")
    add_options(p, JudgeServeConfig)
    p.set_defaults(func=_reporting_database_errors(_run_serve))

    p = sub.add_parser("results", help="win / tie / loss per pair of systems, with intervals and a plot",
                       description="Win / tie / loss / neither shares per pair of systems with 95% Wilson "
                                   "intervals, as a table (or JSON) and a PNG plot.")
    add_options(p, JudgeResultsConfig)
    p.set_defaults(func=_reporting_database_errors(_run_results))

    p = sub.add_parser("export", help="votes as preference rows for `coh data build -s preference:FILE`",
                       description="Write decisive votes as prompt/chosen/rejected rows (plus the voter's "
                                   "comment and provenance). Ties and 'neither' are counted, not written.")
    add_options(p, JudgeExportConfig)
    p.set_defaults(func=_reporting_database_errors(_run_export))



def _reporting_database_errors(func):
    """``func`` with a votes database that broke while in use (corrupt, disk full, locked) raised
    as ``ValueError``, which ``cli.main`` prints as ``coh judge: error: votes database: ...`` (it
    words OS errors itself)."""

    @functools.wraps(func)
    def reported(config) -> int:
        try:
            return func(config)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"votes database: {e}") from e

    return reported


def _output_file(path: str, flag: str = "--output") -> None:
    """Fail now, not after minutes of work, when ``path`` cannot be written as a file."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {path}: a folder; give a file name")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder")


def _run_prepare(config: JudgePrepareConfig) -> int:
    from coh.data.errors import SetAside
    from coh.judge.sources import prepare, read_prompts
    from coh.judge.systems import Generation

    _output_file(config.output)
    systems = config.systems()
    set_aside = None if config.strict else SetAside()
    prompts, skipped = read_prompts(config.prompts, config.limit, set_aside)
    gen = Generation(config.max_new_tokens, config.temperature, config.top_p, config.seed, config.timeout,
                     config.concurrency)
    summary = prepare(prompts, systems, gen, config.output, progress=config.progress and sys.stderr.isatty())
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
    print(f"comparisons: {len(prompts) * pairs} ({pairs} pair(s) of systems) -> {config.output}")
    print(f"next: coh judge serve {config.output}")
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
        family, socket_type, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise ValueError(f"--host {host}: not an address of this machine ({e})") from None
    with socket.socket(family, socket_type) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(address)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port or --host") from None


def _run_serve(config: JudgeServeConfig) -> int:
    import uvicorn

    from coh.judge.app import create_app
    from coh.judge.sources import read_comparisons
    from coh.judge.store import JudgeStore

    _check_bindable(config.host, config.port)
    db = config.db or str(Path(config.comparisons).with_suffix(".sqlite"))
    rows = read_comparisons(config.comparisons) if config.comparisons else []
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
    password = config.password or os.environ.get(PASSWORD_ENV) or None
    loopback = _is_loopback(config.host)
    if not loopback and not password:
        print(f"warning: {config.host} is reachable from other machines and there is no password; anyone who can "
              f"reach port {config.port} can vote (set --password or ${PASSWORD_ENV})", file=sys.stderr)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    allowed = sorted({"127.0.0.1", "localhost", "[::1]", shown}) if loopback else None
    app = create_app(store, password, config.max_votes, not config.hide_results, allowed)
    print(f"{total} comparisons, votes in {db}\njudge at http://{shown}:{config.port}/"
          + ("" if config.hide_results else f"  (results: http://{shown}:{config.port}/results)"), flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


def _open_store(path: str):
    from coh.judge.store import JudgeStore

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no votes database there (`coh judge serve` makes one)")
    return JudgeStore(path)


def _run_results(config: JudgeResultsConfig) -> int:
    from coh.judge.results import format_table, pair_results, plot

    if config.plot:
        _output_file(config.plot, "--plot")
    results = pair_results(_open_store(config.db).votes())
    if config.json:
        print(json.dumps({"pairs": [r.to_dict() for r in results]}, indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    if config.plot:
        plot(results, config.plot)
        print(f"plot -> {config.plot}", file=sys.stderr if config.json else sys.stdout)
    return 0


def _run_export(config: JudgeExportConfig) -> int:
    from coh.judge.export import export_preferences

    _output_file(config.output)
    s = export_preferences(_open_store(config.db), config.output, config.aggregate)
    print(f"votes: {s['votes']}; preference rows written: {s['rows']} -> {config.output}")
    print(f"not preferences, not written: tie {s['tie']}, neither {s['neither']}"
          + (f", comparisons split evenly {s['split_evenly']}" if "split_evenly" in s else ""))
    print(f"comments written: {s['comments']}, left out (on ties, 'neither' or the losing side): "
          f"{s['comments_left_out']}")
    if s["rows"]:
        print(f"next: coh data build -s preference:{config.output} -o DIR")
    else:
        print("no decisive vote yet, so no preference row: nothing to build training data from")
    return 0
