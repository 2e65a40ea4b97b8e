"""Results of ``coh eval`` runs: ``results.json`` plus ``results.md`` per run, and ``coh eval table``
(:func:`write_table`), which puts several runs side by side in a markdown table and a PNG (one
small bar chart per metric, :func:`metrics_plot`, which ``coh compare`` draws its metrics with too).

``results.json``::

    {"protocol": "dialogue", "model": "out/final", "data": "hh.jsonl.gz", "created": "2026-11-02T10:00:00",
     "metrics": {"preference_accuracy": 0.61, ...},
     "ci95": {"preference_accuracy": [0.57, 0.65], ...},      # only metrics that have one
     "counts": {"pairs": 500, "skipped": 0, ...},
     "settings": {...}}                                        # everything needed to rerun it
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from coh.data.io import atomic_writer

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
INVALID_ROWS = "invalid_rows.jsonl"  # rows set aside as unusable: file, line, field, problem


@dataclass
class EvalResult:
    """One evaluation run: metric values, 95 % intervals where known, counts and settings."""

    protocol: str
    model: str
    data: str | None
    metrics: dict[str, float]
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a reader must know, such as rows left out
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> dict:
        """Standard JSON: a value that is not a number (nan, say an accuracy over no pairs) is null."""
        return {"protocol": self.protocol, "model": self.model, "data": self.data, "created": self.created,
                "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
                "ci95": {k: [_json_number(x) for x in v] for k, v in self.ci95.items()},
                "counts": self.counts, "notes": self.notes, "settings": self.settings}

    @staticmethod
    def from_json(obj: object, where: str = "<results>") -> EvalResult:
        """A result from its JSON; a file that is not one of ours is refused naming the field."""
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: not a coh eval results file (expected a JSON object, got {type(obj).__name__})")
        for key in ("protocol", "metrics"):
            if key not in obj:
                raise ValueError(f"{where}: not a coh eval results file (no '{key}')")

        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{where}, field '{name}': expected {expected}")

        def number(v: object) -> bool:
            return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

        metrics, ci95, counts = obj["metrics"], obj.get("ci95", {}), obj.get("counts", {})
        if not isinstance(metrics, dict) or not all(number(v) for v in metrics.values()):
            raise bad("metrics", "an object of metric: number")
        if not isinstance(ci95, dict) or not all(isinstance(v, list) and len(v) == 2 and all(map(number, v))
                                                 for v in ci95.values()):
            raise bad("ci95", "an object of metric: [low, high]")
        if not isinstance(counts, dict):
            raise bad("counts", "an object")
        for key in ("protocol", "model", "created"):
            if not isinstance(obj.get(key, ""), str):
                raise bad(key, "a string")
        return EvalResult(protocol=obj["protocol"], model=obj.get("model", ""), data=obj.get("data"),
                          metrics={k: (float("nan") if v is None else v) for k, v in metrics.items()},
                          ci95={k: tuple(v) for k, v in ci95.items()}, counts=dict(counts),
                          settings=dict(obj.get("settings") or {}) if isinstance(obj.get("settings"), dict) else {},
                          notes=[str(n) for n in obj.get("notes", [])] if isinstance(obj.get("notes"), list) else [],
                          created=obj.get("created", ""))

    def to_markdown(self) -> str:
        lines = [f"# coh eval {self.protocol}", "", f"- model: `{self.model}`"]
        if self.data:
            lines.append(f"- data: `{self.data}`")
        if self.counts:
            lines.append("- counts: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        lines += [f"- {note}" for note in self.notes]
        lines += ["", "| metric | value | 95% CI |", "|---|---:|---|"]
        for name, value in self.metrics.items():
            ci = self.ci95.get(name)
            lines.append(f"| {name} | {fmt(value)} | {f'{fmt(ci[0])} to {fmt(ci[1])}' if ci else ''} |")
        return "\n".join(lines) + "\n"


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def write_result(result: EvalResult, output_dir: str | Path) -> Path:
    """Write ``results.json`` and ``results.md`` into ``output_dir``; returns the JSON path."""
    out = Path(output_dir)
    with atomic_writer(out / RESULTS_JSON) as f:
        json.dump(result.to_json(), f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    with atomic_writer(out / RESULTS_MD) as f:
        f.write(result.to_markdown())
    return out / RESULTS_JSON


def read_result(path: str | Path) -> EvalResult:
    """A run folder (its ``results.json``) or a results file."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file (give a `coh eval` output folder or its results.json)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON (line {e.lineno}: {e.msg})") from None
    return EvalResult.from_json(obj, str(path))


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short unique labels: each run's folder name (a results.json names its parent folder)."""
    names = [(Path(p).parent if Path(p).name == RESULTS_JSON else Path(p)).name or str(p) for p in paths]
    return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]


def table_markdown(results: Sequence[EvalResult], labels: Sequence[str]) -> str:
    """Metrics as rows, runs as columns (``value [low, high]``); a missing metric shows as ``-``."""
    metrics: list[str] = []
    for r in results:
        metrics += [m for m in r.metrics if m not in metrics]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for m in metrics:
        cells = []
        for r in results:
            if m not in r.metrics:
                cells.append("-")
                continue
            ci = r.ci95.get(m)
            cells.append(fmt(r.metrics[m]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {label}: {r.protocol}, model `{r.model}`" + (f", data `{r.data}`" if r.data else "")
              for label, r in zip(labels, results)]
    return "\n".join(lines) + "\n"


def metrics_plot(results: Sequence[EvalResult], labels: Sequence[str], png: str | Path) -> Path:
    """One bar chart per metric (metrics differ in scale), a bar per run, 95 % intervals as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics: list[str] = []
    for r in results:
        metrics += [m for m in r.metrics if m not in metrics]
    cols = min(3, max(1, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / cols))
    fig = Figure(figsize=(4.2 * cols, 2.2 + 1.2 * max(1, len(labels)) * rows / 2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for ax, m in zip(axes, metrics):
        ys, values, errors, shown = [], [], [[], []], []
        for i, r in enumerate(results):
            v = r.metrics.get(m)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            lo, hi = r.ci95.get(m, (v, v))
            ys.append(len(ys))
            values.append(v)
            errors[0].append(max(0.0, v - lo))
            errors[1].append(max(0.0, hi - v))
            shown.append(i)
        ax.barh(ys, values, xerr=errors, color=[colors[i] for i in shown], capsize=3)
        ax.set_yticks(ys, [labels[i] for i in shown], fontsize="small")
        ax.invert_yaxis()
        ax.set_title(m, fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    return png


def write_table(paths: Sequence[str | Path], output_dir: str | Path, labels: Sequence[str] | None = None,
                name: str = "table") -> tuple[Path, Path]:
    """Read runs, write ``NAME.md`` (:func:`table_markdown`) and ``NAME.png`` (:func:`metrics_plot`)
    into ``output_dir``; returns both paths. (``name`` "compare": the files of the old spelling,
    ``coh eval compare``.)"""
    results = [read_result(p) for p in paths]
    labels = list(labels) if labels else run_labels(paths)
    if len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} runs")
    out = Path(output_dir)
    md = out / f"{name}.md"
    with atomic_writer(md) as f:
        f.write(table_markdown(results, labels))
    return md, metrics_plot(results, labels, out / f"{name}.png")
