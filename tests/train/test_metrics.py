"""Run log (metrics.jsonl, TensorBoard, wandb), throughput, FLOPs/MFU, progress bar and loss plot."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import logging
import os
import sys
import types

import pytest
import torch

from coh.train.metrics import (
    PEAK_FLOPS,
    ProgressBar,
    RunLog,
    device_peak_flops,
    flops_per_token,
    mfu,
    peak_memory_gb,
    plot_loss_curves,
)

from .models import tiny_gptj, tiny_llama

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- RunLog -----------------------------------------------------------------------------------------


def test_metrics_jsonl_one_line_per_log(tmp_path):
    log = RunLog(tmp_path / "run", report_to=["none"])
    log.log(1, {"train/loss": 2.5, "train/lr": 1e-4})
    log.log(2, {"train/loss": torch.tensor(2.25), "train/tokens_per_second": 1000})
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[0] == {"step": 1, "train/loss": 2.5, "train/lr": 1e-4}
    log.close()
    log.close()  # twice is fine
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows == [{"step": 1, "train/loss": 2.5, "train/lr": 1e-4},
                    {"step": 2, "train/loss": 2.25, "train/tokens_per_second": 1000}]


def test_fresh_run_starts_the_file_anew(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "train/loss": 1.0}\n')
    log = RunLog(tmp_path, report_to=[])
    log.log(1, {"train/loss": 3.0})
    log.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def test_resume_truncates_after_the_checkpoint_step(tmp_path):
    first = RunLog(tmp_path, report_to=["none"])
    for step in range(1, 6):
        first.log(step, {"train/loss": float(step)})
    first.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train/lo')  # torn line from a crash
    resumed = RunLog(tmp_path, report_to=["none"], resume=True)
    resumed.truncate_after(3)
    for step in (4, 5, 6):
        resumed.log(step, {"train/loss": 10.0 * step})
    resumed.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["train/loss"] for r in rows] == [1.0, 2.0, 3.0, 40.0, 50.0, 60.0]


@pytest.mark.parametrize("report_to", [[], ["none"], ("none",), ["NONE"]])
def test_report_to_none_writes_only_the_jsonl(tmp_path, report_to):
    log = RunLog(tmp_path, report_to=report_to)
    log.log(1, {"train/loss": 1.0})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_unknown_tracker_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="mlflow"):
        RunLog(tmp_path, report_to=["mlflow"])


def test_disabled_log_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not even a missing tracker matters
    log = RunLog(tmp_path / "run", report_to=["tensorboard", "wandb"], enabled=False)
    log.log(1, {"train/loss": 1.0})
    log.truncate_after(0)
    log.close()
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard not installed (pip install tensorboard)")
def test_tensorboard_writes_events_and_purges_on_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path, report_to=["tensorboard"], run_config={"lr": 1e-4})
    for step in range(1, 6):
        log.log(step, {"train/loss": float(step)})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    resumed = RunLog(tmp_path, report_to=["tensorboard"], resume=True)
    resumed.truncate_after(3)
    for step in (4, 5):
        resumed.log(step, {"train/loss": 10.0 * step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert scalars == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        RunLog(tmp_path, report_to=["tensorboard"])


def test_missing_wandb_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        RunLog(tmp_path, report_to=["wandb"])
    assert not (tmp_path / "metrics.jsonl").exists()  # failed before writing anything


class FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.calls: list[tuple] = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs, os.environ.get("WANDB_MODE")))
        return self

    def log(self, row, step):
        self.calls.append(("log", row, step))

    def finish(self):
        self.calls.append(("finish",))


@pytest.mark.parametrize("user_mode", [None, "online"])
def test_wandb_is_offline_unless_the_user_says_otherwise(tmp_path, monkeypatch, user_mode):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "placeholder")  # so monkeypatch restores the variable afterwards
    if user_mode is None:
        monkeypatch.delenv("WANDB_MODE")
    else:
        monkeypatch.setenv("WANDB_MODE", user_mode)
    log = RunLog(tmp_path, report_to=["wandb"], run_config={"lr": 1e-4})
    log.log(7, {"train/loss": 1.5})
    log.close()
    (_, init, mode), logged, finished = fake.calls
    assert mode == (user_mode or "offline")
    assert init["config"] == {"lr": 1e-4} and init["dir"] == str(tmp_path)
    assert logged == ("log", {"train/loss": 1.5}, 7) and finished == ("finish",)
    resumed = RunLog(tmp_path, report_to=["wandb"], resume=True)
    resumed.close()
    assert fake.calls[3][1]["id"] == init["id"]  # a resumed run continues the same wandb run


# --- throughput and memory --------------------------------------------------------------------------


def test_peak_memory_is_positive_gigabytes():
    assert 0.001 < peak_memory_gb() < 10_000


# --- FLOPs and MFU ------------------------------------------------------------------------------------


def matmul_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_flops_per_token_llama_7b_is_near_6n():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    assert flops_per_token(config) == pytest.approx(6 * 6.7e9, rel=0.15)
    assert flops_per_token(config, seq_len=2048) == pytest.approx(6 * 6.7e9, rel=0.15)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gptj])
def test_flops_per_token_counts_every_matmul_parameter(make):
    model = make(vocab_size=97)
    assert flops_per_token(model.config) == 6 * matmul_params(model)
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    extra = flops_per_token(model.config, seq_len=100) - flops_per_token(model.config)
    assert extra == 12 * layers * hidden * 100


def test_flops_per_token_with_a_decoupled_head_dim():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    assert flops_per_token(config) == 6 * matmul_params(Qwen3ForCausalLM(config))


def test_flops_per_token_gpt_style_names_and_dicts():
    gpt = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_inner": None, "vocab_size": 100}
    n = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 100 * 64  # attention, 2-matrix MLP of 4*hidden, LM head
    assert flops_per_token(gpt) == 6 * n
    assert flops_per_token(types.SimpleNamespace(**gpt)) == 6 * n
    with pytest.raises(ValueError, match="hidden_size"):
        flops_per_token({"vocab_size": 10})


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert mfu(0.0, 6e9, PEAK_FLOPS["H100"]) == 0.0
    assert mfu(2e4, 4e10, 989e12) == pytest.approx(8e14 / 989e12)


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                            ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
                                            ("Tesla T4", None)])
def test_device_peak_flops_by_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    assert device_peak_flops() == peak


def test_device_peak_flops_is_none_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_peak_flops() is None


# --- progress bar -----------------------------------------------------------------------------------


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_can_be_disabled(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", TtyStream())
    bar = ProgressBar(total=10, enabled=False)
    bar.update(3, {"train/loss": 1.0, "perf/tokens_per_s": 5.0})
    bar.write("step 3: eval/loss 1.0")
    bar.close()
    assert not bar.enabled and sys.stderr.getvalue() == "" and capsys.readouterr().out == ""


def test_progress_bar_is_off_when_stderr_is_not_a_tty(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = ProgressBar(total=10)
    bar.update(3, {"train/loss": 1.0})
    bar.update(4)
    bar.write("step 4: eval/loss 1.0")  # the main process still prints its lines
    bar.close()
    assert not bar.enabled and sys.stderr.getvalue() == ""
    assert capsys.readouterr().out == "step 4: eval/loss 1.0\n"


def test_progress_bar_shows_step_loss_and_throughput(monkeypatch):
    monkeypatch.setattr(sys, "stderr", TtyStream())
    bar = ProgressBar(total=10, initial=2)
    bar.update(4, {"train/loss": 1.23456, "perf/tokens_per_s": 12345.6, "train/lr": 1e-4})
    bar.close()
    shown = sys.stderr.getvalue()
    assert bar.enabled and "4/10" in shown and "loss=1.2346" in shown and "tok/s=12,346" in shown


# --- loss plot --------------------------------------------------------------------------------------


def write_history(path) -> None:
    rows = []
    for step in range(1, 41):
        row = {"step": step, "train/loss": 3 / step**0.3, "train/loss_hh": 3.2 / step**0.3,
               "train/pretrain_loss": 3.5 / step**0.2, "train/lr": 1e-4 * min(1.0, step / 10)}
        if step % 10 == 0:
            row["eval/loss"] = 3.1 / step**0.3
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")


def test_plot_loss_curves_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install matplotlib)")
    from PIL import Image

    write_history(tmp_path / "metrics.jsonl")
    out = plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "loss.png")
    assert out == tmp_path / "plots" / "loss.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300
    only = plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "eval.png", keys=["eval/loss", "nope"])
    assert only is not None and only.exists()


def test_plot_without_matplotlib_warns_and_writes_nothing(tmp_path, monkeypatch, caplog):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    write_history(tmp_path / "metrics.jsonl")
    with caplog.at_level(logging.WARNING, logger="coh.train.metrics"):
        assert plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "loss.png") is None
    assert "pip install matplotlib" in caplog.text and not (tmp_path / "loss.png").exists()
