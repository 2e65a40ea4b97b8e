"""The comparison set: prompts, and each system's output for every prompt (the systems and
their client are ``coh.judge.systems``).

Files:

- prompts: JSONL / JSON / parquet rows with ``prompt`` (a string or a list of
  ``{"role", "content"}`` messages ending with a user turn), optional ``id``; or, as
  ``KIND:FILE``, rows of any ``coh data`` source kind (``dialogue:hh-test.jsonl.gz``), whose
  shared context becomes the prompt.
- a system's outputs (``NAME:file=PATH``): rows with ``prompt`` and ``output``, matched to the
  prompts by prompt text.
- rows that cannot be used are recorded in a ``SetAside`` (file, line, field, problem) when the
  caller gives one, and stop the reading with a ``DataError`` when it does not.
- comparisons (what ``coh judge prepare`` writes and ``coh judge serve`` reads):
  ``{"id", "prompt": [messages], "outputs": {"SYSTEM": "text", ...}}``, two systems or more;
  every pair of systems becomes one comparison.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from coh.data.conversations import prompt_turns
from coh.data.errors import DataError, RowError, SetAside, describe
from coh.data.io import atomic_writer, iter_local_raw_rows, iter_local_rows
from coh.data.sources import CONVERTERS, Skip, convert_rows
from coh.judge.systems import SYSTEM_NAME, Generation, SystemSpec, generate

# coh.eval imports these two from here; their home is coh.judge.systems
from coh.judge.systems import served_model as served_model
from coh.judge.systems import unreachable as unreachable


@dataclass(frozen=True)
class Prompt:
    """A prompt as chat messages (``{"role", "content"}``), the last one a user turn."""

    id: str
    messages: list[dict]

    @property
    def key(self) -> str:
        """The prompt's text identity, used to match prepared outputs to prompts."""
        return json.dumps(self.messages, ensure_ascii=False, sort_keys=True)


def _as_messages(turns) -> list[dict]:
    """``coh.data`` turns as chat messages."""
    return [{"role": t.role, "content": t.text} for t in turns]


def _messages(row: dict) -> list[dict]:
    """A row's ``prompt`` (a string or chat messages) as chat messages."""
    return _as_messages(prompt_turns(row))


def _row_id(row: dict, line: int) -> str:
    """The row's ``id``, or its line number."""
    pid = row.get("id", line)
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise RowError("id", f"expected a string or an integer, got {describe(pid)}")
    return str(pid)


def read_prompts(spec: str, limit: int | None = None, set_aside: SetAside | None = None
                 ) -> tuple[list[Prompt], dict[str, int]]:
    """Prompts from ``FILE`` (rows with ``prompt``) or ``KIND:FILE`` (a ``coh data`` source kind).
    Returns the prompts and counts of rows left out on purpose (by reason). A bad row raises
    DataError with file, line and field, or with ``set_aside`` is recorded there and skipped."""
    # source_kind: the name of a coh.data converter (dialogue, webgpt, ...), or "" for prompt rows
    source_kind, sep, path = spec.partition(":")
    if sep and source_kind not in CONVERTERS and source_kind.isidentifier() and len(source_kind) > 1 \
            and not Path(spec).exists():
        raise ValueError(f"--prompts {spec}: unknown kind '{source_kind}'; expected a file, or KIND:FILE with KIND "
                         f"one of {', '.join(sorted(CONVERTERS))}")
    if not sep or source_kind not in CONVERTERS:
        source_kind, path = "", spec
    prompts: list[Prompt] = []
    skipped: dict[str, int] = {}
    seen: set[str] = set()

    def to_prompt(row: dict, line: int) -> tuple[int, Prompt] | Skip:
        if source_kind:
            ex = CONVERTERS[source_kind](row, str(line), "eval")
            if isinstance(ex, Skip):
                return ex
            messages = _as_messages(ex.context)
        else:
            messages = _messages(row)
        return line, Prompt(_row_id(row, line), messages)

    def rows():  # no row past the limit is read
        for line, row, _ in iter_local_raw_rows(path):
            if limit is not None and len(prompts) >= limit:
                return
            yield path, line, row

    for line, prompt in convert_rows(rows(), to_prompt, set_aside, skipped):
        if prompt.id in seen:
            raise DataError(path, line, "id", f"id '{prompt.id}' appears twice; prompt ids must be unique")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        found = f"; {set_aside.summary()}" if set_aside else ""
        raise DataError(path, None, None, f"no prompts found{found}" + (
            f" (is '{source_kind}' the right kind?)" if source_kind and set_aside else ""))
    return prompts, skipped


def read_outputs(system: SystemSpec, prompts: list[Prompt]) -> tuple[list[str], int]:
    """A prepared file's output for each prompt (matched by prompt text). Returns the outputs and
    the count of file rows whose prompt is not in the set (unused)."""
    by_prompt: dict[str, tuple[str, int]] = {}
    path = system.file
    for line, row in iter_local_rows(path):
        try:
            if not isinstance(row, dict):
                raise RowError(None, f"expected a JSON object, got {describe(row)}")
            key = Prompt("", _messages(row)).key
            output = row.get("output")
            if not isinstance(output, str):
                raise RowError("output", f"expected a string, got {describe(output)}")
        except RowError as e:
            raise e.at(path, line) from None
        if key in by_prompt and by_prompt[key][0] != output.strip():
            raise DataError(path, line, "prompt", f"the same prompt has another output on line {by_prompt[key][1]}")
        by_prompt[key] = (output.strip(), line)
    missing = [p.id for p in prompts if p.key not in by_prompt]
    if missing:
        raise DataError(path, None, "prompt", f"no output for {len(missing)} of {len(prompts)} prompts "
                                              f"(first: prompt '{missing[0]}'); rows are matched by prompt text")
    used = {p.key for p in prompts}
    return [by_prompt[p.key][0] for p in prompts], sum(k not in used for k in by_prompt)


def prepare(prompts: list[Prompt], systems: list[SystemSpec], gen: Generation, output: str | Path,
            progress: bool = True) -> dict:
    """Every system's output for every prompt, written to ``output`` as comparisons JSONL.
    Returns a summary: per system its source, empty outputs and outputs cut at ``max_tokens``;
    per pair of systems the prompts where both gave the same text (``coh judge serve`` leaves
    those out)."""
    from tqdm import tqdm

    names = [s.name for s in systems]
    if len(systems) < 2 or len(set(names)) != len(names):
        raise ValueError(f"give two or more systems with distinct names, got {names}")
    outputs: dict[str, list[str]] = {}
    summary: dict = {"prompts": len(prompts), "systems": {}}
    remote = [s for s in systems if s.url]
    with tqdm(total=len(prompts) * len(remote), desc="generate", unit=" outputs", disable=not progress or not remote,
              file=sys.stderr) as bar:
        for system in systems:
            if system.url:
                outputs[system.name], cut = generate(system, prompts, gen, bar)
                info = {**system.describe(), "cut_at_max_tokens": cut}
            else:
                outputs[system.name], unused = read_outputs(system, prompts)
                info = {**system.describe(), "unused_rows": unused}
            info["empty"] = sum(not o for o in outputs[system.name])
            summary["systems"][system.name] = info
    summary["identical"] = {
        f"{a} / {b}": sum(x == y for x, y in zip(outputs[a], outputs[b]))
        for i, a in enumerate(names) for b in names[i + 1 :]
    }
    with atomic_writer(output) as f:
        for i, p in enumerate(prompts):
            row = {"id": p.id, "prompt": p.messages, "outputs": {n: outputs[n][i] for n in names}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return summary


def read_comparisons(path: str | Path) -> list[tuple[str, list[dict], dict[str, str]]]:
    """``(prompt id, prompt messages, {system: output})`` per row of a comparisons file."""
    rows = []
    seen: dict[str, int] = {}
    for line, row in iter_local_rows(path):
        try:
            if not isinstance(row, dict):
                raise RowError(None, f"expected a JSON object, got {describe(row)}")
            messages = _messages(row)
            outputs = row.get("outputs")
            if not isinstance(outputs, dict) or len(outputs) < 2:
                raise RowError("outputs", f"expected an object of two or more system: output, got {describe(outputs)}")
            for name, text in outputs.items():
                if not SYSTEM_NAME.match(name):
                    raise RowError(f"outputs.{name}", "system names are 1-64 letters, digits and _ . + -")
                if not isinstance(text, str):
                    raise RowError(f"outputs.{name}", f"expected a string, got {describe(text)}")
            pid = _row_id(row, line)
        except RowError as e:
            raise e.at(str(path), line) from None
        if pid in seen:
            raise DataError(str(path), line, "id", f"id '{pid}' was used on line {seen[pid]} already")
        seen[pid] = line
        rows.append((pid, messages, {k: v.strip() for k, v in outputs.items()}))
    if not rows:
        raise DataError(str(path), None, None, "no comparisons found")
    return rows
