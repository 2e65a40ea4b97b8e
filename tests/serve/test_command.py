"""The ``coh serve`` command line: help, flags, and clear errors before any server starts."""

from __future__ import annotations

import pytest

from coh.cli import build_parser, main
from coh.options import options_from_args
from coh.serve.config import ServeConfig


def test_help_lists_the_agreed_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--host", "--port", "--api-key", "--prompt-format", "--dtype", "--device", "--trust-remote-code",
                 "--max-batch-size", "--queue-size", "--served-model-name", "feedback"):
        assert flag in text
    # The flags' defaults live in the config (the parser passes on only what was typed).
    args = options_from_args(ServeConfig, build_parser().parse_args(["serve", "some/model"]))
    assert (args.host, args.port, args.trust_remote_code, args.prompt_format) == ("127.0.0.1", 8000, False, "auto")


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert "cannot load the model" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-batch-size", "0"]) == 1
    assert "max_batch_size must be at least 1" in capsys.readouterr().err
