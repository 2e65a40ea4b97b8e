"""Console and logging services of ``coh train``: run log (metrics.jsonl, TensorBoard, wandb),
throughput, MFU, progress bar and loss plot. Optional packages are imported only when asked for."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import resource
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from coh.train.config import REPORT_TO

logger = logging.getLogger(__name__)

# bf16 dense peak (no sparsity), FLOP/s per device; the longest key contained in the device name wins.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "A100": 312e12}
# Model types whose MLP is up -> act -> down (2 matrices); any other model type is taken as gated (3).
_UNGATED_MLP = {"gpt2", "gptj", "gpt_neo", "gpt_neox", "gpt_bigcode", "codegen", "opt", "phi", "starcoder2"}


def check_trackers(report_to: Sequence[str], installed: bool = True) -> set[str]:
    """The trackers ``report_to`` asks for (lower case, without ``none``); ``ValueError`` for an
    unknown name and, with ``installed``, ``ImportError`` naming the pip command for one that is
    not installed."""
    targets = {t.lower() for t in report_to} - {"none"}
    if targets - set(REPORT_TO):
        raise ValueError(f"report_to: unknown {sorted(targets - set(REPORT_TO))}; choose from {list(REPORT_TO)}")
    for name in sorted(targets) if installed else []:
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"report_to has {name!r}, which is not installed: pip install {name}")
    return targets


class RunLog:
    """A run's metrics: ``output_dir/metrics.jsonl`` (one ``{"step": ..., **values}`` line per
    ``log``, flushed), TensorBoard (``output_dir/tensorboard``) and wandb as ``report_to`` asks.

    A fresh run starts the file anew; a resumed run appends once the trainer has called
    ``truncate_after(resumed_step)``, so the history is continuous, without duplicates; wandb keeps
    its run id in ``output_dir/wandb_run_id`` to continue the same run. A missing tracker package
    fails here, naming the pip command. ``enabled=False`` (non-main processes): no-op, no files.
    """

    def __init__(self, output_dir: str | Path, report_to: Sequence[str] = ("tensorboard",),
                 run_config: dict | None = None, resume: bool = False, enabled: bool = True) -> None:
        self.enabled, self.output_dir = enabled, Path(output_dir)
        self.path = self.output_dir / "metrics.jsonl"
        self._file: Any = None
        self._tb: Any = None
        self._wandb: Any = None
        targets = check_trackers(report_to, installed=enabled)
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if resume else "w", encoding="utf-8")
        if "tensorboard" in targets:
            self._open_tensorboard(purge_step=None)
        if "wandb" in targets:
            os.environ.setdefault("WANDB_MODE", "offline")  # never upload unless the user asked for it
            import wandb

            id_file = self.output_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if resume and id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "coh"), dir=str(self.output_dir),
                                     config=run_config, id=run_id, resume="allow")

    def _open_tensorboard(self, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self._tb is not None:
            self._tb.close()
        self._tb = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=purge_step)

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps > ``step`` (and torn lines) from metrics.jsonl; TensorBoard purges them too."""
        if not self.enabled:
            return
        self._file.close()
        kept = [json.dumps(row) + "\n" for row in read_metrics(self.path) if row["step"] <= step]
        self.path.write_text("".join(kept), encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")
        if self._tb is not None:
            self._open_tensorboard(purge_step=step + 1)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Record scalar ``values`` (floats, ints or 0-d tensors) at optimizer step ``step``."""
        if not self.enabled:
            return
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
        self._file.write(json.dumps({"step": step, **row}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        for sink in (self._file, self._tb):
            if sink is not None:
                sink.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._file = self._tb = self._wandb = None


def peak_memory_gb() -> float:
    """Peak memory in GB (1e9 bytes): with CUDA, ``torch.cuda.max_memory_allocated()`` (current
    device, tensors only); without, the process's peak RSS (``resource.getrusage``, host memory)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9  # bytes on macOS, KiB on Linux


def read_metrics(path: Path) -> list[dict]:
    """The entries of a metrics.jsonl that parse and have a ``step`` (a torn last line is skipped)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return [row for row in rows if isinstance(row, dict) and isinstance(row.get("step"), int)]


def _get(config: Any, *names: str) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def flops_per_token(config: Any, seq_len: float = 0.0) -> float:
    """Training FLOPs per token (forward + backward) of a decoder-only HF config: ``6*N + 12*L*H*S``.

    PaLM's convention (appendix B). ``N`` counts matmul parameters: attention projections (grouped
    KV heads included), the MLP (3 matrices if gated as in LLaMA/Qwen/Mistral, 2 for GPT-2/GPT-J/NeoX)
    and the LM head once; not embedding lookups, norms or biases. The attention term counts ``QK^T``
    and ``AV`` over the full ``S x S`` scores (no halving for causality): ``L`` layers, ``H = heads *
    head_dim``, ``S = seq_len``. For packed data (records never attend to one another) ``seq_len`` is
    the mean record length; 0 drops the term. ``config``: HF config or dict, LLaMA names
    (``num_hidden_layers``, ``hidden_size``, ``intermediate_size`` or 4*hidden, ...) or GPT-2/GPT-J
    names (``n_layer``, ``n_embd``, ``n_inner``, ``n_head``).
    """
    layers, hidden = _get(config, "num_hidden_layers", "n_layer"), _get(config, "hidden_size", "n_embd")
    heads, vocab = _get(config, "num_attention_heads", "n_head"), _get(config, "vocab_size")
    if None in (layers, hidden, heads, vocab):
        raise ValueError("config needs num_hidden_layers, hidden_size, num_attention_heads and vocab_size")
    kv_heads = _get(config, "num_key_value_heads") or heads
    head_dim = _get(config, "head_dim") or hidden // heads
    inner = _get(config, "intermediate_size", "n_inner") or 4 * hidden
    gated = _get(config, "model_type") not in _UNGATED_MLP and _get(config, "n_layer") is None
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o; k, v
    n = layers * (attention + (3 if gated else 2) * hidden * inner) + vocab * hidden
    return 6.0 * n + 12.0 * layers * heads * head_dim * seq_len


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation, a fraction: ``tokens_per_second * flops_per_token / peak_flops``.
    Per device: one device's tokens/s (global tokens/s / processes) against its peak FLOP/s."""
    return tokens_per_second * flops_per_token / peak_flops


def device_peak_flops() -> float | None:
    """bf16 dense peak FLOP/s of the CUDA device by name (``PEAK_FLOPS``); None on CPU or if unlisted."""
    if not torch.cuda.is_available():
        return None
    matches = [key for key in PEAK_FLOPS if key in torch.cuda.get_device_name()]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


class ProgressBar:
    """A tqdm bar of optimizer steps: ``step/total`` with elapsed time and ETA (``<remaining``), loss
    and tokens/s in the postfix. Shown only if ``enabled`` (the main process), ``shown`` (the user
    did not turn it off) and stderr is a tty; ``.enabled`` says whether it is shown."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train",
                 shown: bool = True) -> None:
        self.main, self.enabled = enabled, enabled and shown and sys.stderr.isatty()
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                         disable=not self.enabled)

    def update(self, step: int, values: Mapping[str, float] | None = None) -> None:
        """Move the bar to optimizer step ``step`` (absolute, not an increment); the postfix shows
        ``train/loss`` and ``perf/tokens_per_s`` (or ``.../tokens_per_second``) from ``values``."""
        values = values or {}
        loss = values.get("train/loss")
        tps = next((v for k, v in values.items() if k.endswith(("/tokens_per_s", "/tokens_per_second"))), None)
        postfix = {"loss": f"{loss:.4f}"} if loss is not None else {}
        if tps is not None:
            postfix["tok/s"] = f"{tps:,.0f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def write(self, message: str) -> None:
        """Print a line to stdout above the bar (on the main process only, bar shown or not)."""
        if self.main:
            tqdm.write(message)

    def close(self) -> None:
        self._bar.close()


def _is_loss_key(key: str) -> bool:
    return key.split("/")[0] in ("train", "eval") and "loss" in key.rsplit("/", 1)[-1]


def plot_loss_curves(metrics_jsonl: Path, png: Path, keys: Sequence[str] | None = None) -> Path | None:
    """Plot losses vs optimizer step from ``metrics.jsonl`` into ``png`` (matplotlib, Agg canvas).

    Top panel: ``keys``, by default every ``train/*loss*`` and ``eval/*loss*`` key (``train/loss``,
    ``train/loss_<source>``, ``train/pretrain_loss``, ``eval/loss``; eval with markers); bottom
    panel, if logged: ``.../lr`` or ``.../learning_rate``. Returns ``png``; without matplotlib, warns
    in one line, writes nothing and returns None.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed (pip install matplotlib): no loss plot written")
        return None
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in read_metrics(Path(metrics_jsonl)):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                series.setdefault(key, ([], []))[0].append(row["step"])
                series[key][1].append(value)
    loss_keys = [k for k in (keys or sorted(filter(_is_loss_key, series))) if k in series]
    lr_keys = sorted(k for k in series if k.rsplit("/", 1)[-1] in ("lr", "learning_rate"))
    fig = Figure(figsize=(10, 7 if lr_keys else 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if lr_keys else 1, 1, sharex=True, squeeze=False,
                        height_ratios=[3, 1] if lr_keys else None)[:, 0]
    for key in loss_keys:
        style = {"marker": "o", "markersize": 4} if key.startswith("eval/") else {"linewidth": 1.2}
        axes[0].plot(*series[key], label=key, **style)
    axes[0].set(ylabel="loss (nats per token)", title="Chain-of-Hindsight training")
    for ax in axes:
        ax.grid(alpha=0.3)
    if loss_keys:
        axes[0].legend(fontsize="small")
    for key in lr_keys:
        axes[1].plot(*series[key], label=key)
        axes[1].set_ylabel("learning rate")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[-1].set_xlabel("optimizer step")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    return png
