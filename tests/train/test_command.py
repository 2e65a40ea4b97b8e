"""`coh train`'s command line: every TrainConfig option as a flag with help and default, a recipe
under the flags (--config or -c), --print-config, and the old KEY=VALUE arguments with a note."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from coh.cli import main
from coh.train.config import TrainConfig

BASE = ["--model", "m", "--train-data", "d"]


def resolved(capsys, *argv: str) -> tuple[dict, str]:
    """``coh train ARGV --print-config``: the resolved options, and stderr."""
    assert main(["train", *argv, "--print-config"]) == 0
    out, err = capsys.readouterr()
    return yaml.safe_load(out), err


def test_help_lists_every_option_with_its_help_and_default(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        assert flag in text, flag
        assert f.metadata["help"].split()[0] in text, f.name
    assert "(default: 1e-05)" in text and "(default: tensorboard)" in text and "(required)" in text
    assert "--config FILE, -c FILE" in text and "--print-config" in text


def test_flags_resolve_over_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ntrain_data: d\nlr: 1.0e-3\nmax_steps: 5\nreport_to: [wandb]\n")
    for spelling in ("--config", "-c"):
        options, err = resolved(capsys, spelling, str(recipe), "--lr", "2e-5", "--max-steps", "10")
        assert (options["lr"], options["max_steps"], options["report_to"]) == (2e-5, 10, ["wandb"])
        assert err == ""
    options, _ = resolved(capsys, *BASE, "--report-to", "none", "--no-resume", "--max-grad-norm", "inf",
                          "--eval-records", "none", "-o", "runs/x", "--no-progress")
    assert options["report_to"] == ["none"] and options["resume"] is False and options["progress"] is False
    assert options["max_grad_norm"] == float("inf") and options["eval_records"] is None
    assert options["output_dir"] == "runs/x"
    assert TrainConfig(**options).to_dict() == options  # what --print-config prints is a recipe of the run


def test_key_value_arguments_still_work_with_a_note_after_the_outcome(capsys):
    options, err = resolved(capsys, "model=m", "train_data=d", "lr=3e-5", "resume=false", "report_to=[none]")
    assert (options["lr"], options["resume"], options["report_to"]) == (3e-5, False, ["none"])
    assert "KEY=VALUE arguments are deprecated" in err
    assert "--model m --train-data d --lr 3e-5 --no-resume --report-to none" in err

    assert main(["train", "model=m", "train_data=d", "lr=0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("coh train: error: lr must be positive") and "deprecated" in err.splitlines()[-1]


def test_bad_flag_values_are_usage_errors_naming_the_flag(capsys):
    for argv, message in ((["--lr", "0"], "argument --lr: expected a number in (0, inf]"),
                          (["--max-steps", "2.5"], "argument --max-steps: expected a whole number or null"),
                          (["--mode", "dpo"], "argument --mode: invalid choice: 'dpo'"),
                          (["--adam-beta1", "1"], "argument --adam-beta1: expected a number in [0, 1)")):
        with pytest.raises(SystemExit) as stop:
            main(["train", *BASE, *argv])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["train", "--lr", "1e-5"])
    assert stop.value.code == 2
    assert "required: --model, --train-data" in capsys.readouterr().err


def test_python_callers_get_the_same_checks_in_the_same_words():
    good = {"model": "m", "train_data": "d"}
    for bad, message in (({"lr": 0.0}, "lr must be positive, got 0.0"),
                         ({"max_steps": 0}, r"max_steps must be at least 1 \(or null\), got 0"),
                         ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\), got 1.0"),
                         ({"max_grad_norm": float("nan")}, "max_grad_norm must be a finite number, got nan"),
                         ({"report_to": ["none", "mlflow"]}, r"report_to: unknown \['mlflow'\]"),
                         ({"overlong": "truncate"}, r"overlong must be one of \['error', 'split', 'skip'\]"),
                         ({"pretrain_ratio": 1.0}, r"pretrain_ratio must be in \(0, 1\)"),
                         ({"seed": 2**32}, r"seed must be below 2\*\*32")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**good, **bad)
    assert TrainConfig(**good, max_grad_norm=float("inf"), report_to=["TensorBoard"]).report_to == ["tensorboard"]
    with pytest.raises(TypeError):
        TrainConfig(model="m")  # train_data is required
