"""`coh eval`'s options: one config dataclass per action (coh.eval.config), every option in
--help with its help and default, a YAML recipe under the flags, --print-config, the old
spellings with a note, and the same checks from Python."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from coh.cli import main
from coh.eval.config import (
    ControllabilityConfig,
    DialogueConfig,
    HarnessConfig,
    PairwiseConfig,
    Sampling,
    SummarizationConfig,
    TableConfig,
)
from tests.eval.conftest import HH_81_92
from tests.help_text import assert_lists_every_option, help_text

ACTIONS = {("harness",): HarnessConfig, ("feedback", "dialogue"): DialogueConfig,
           ("feedback", "summarization"): SummarizationConfig, ("feedback", "controllability"): ControllabilityConfig,
           ("feedback", "pairwise"): PairwiseConfig, ("compare",): TableConfig}  # compare: old spelling of table
SCORER = "tests.eval.scorer_functions:prompt_words"


def _help(capsys, monkeypatch, action: tuple[str, ...]) -> str:
    return help_text(capsys, monkeypatch, ["eval", *action])


@pytest.mark.parametrize("action", ACTIONS, ids=" ".join)
def test_help_lists_every_option_with_help_and_default(action, capsys, monkeypatch):
    text = _help(capsys, monkeypatch, action)
    assert set(assert_lists_every_option(text, ACTIONS[action])) <= {"extra"}
    assert "--config FILE" in text and "--print-config" in text


def test_shared_flags_are_spelled_alike(capsys, monkeypatch):
    for action in ACTIONS:
        text = _help(capsys, monkeypatch, action)
        assert "--output-dir DIR, -o DIR" in text
        if action != ("compare",):
            assert "--no-progress" in text and "--trust-remote-code" in text
        if action[-1] in ("summarization", "controllability", "pairwise"):
            assert "--max-new-tokens" in text
    assert "--api-key-env VAR" in _help(capsys, monkeypatch, ("harness",))
    assert "--api-key-env VAR" in _help(capsys, monkeypatch, ("feedback", "pairwise"))


def test_recipe_under_flags_and_the_printed_config_is_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "ctl.yaml"
    recipe.write_text(yaml.safe_dump({"model": "runs/coh/final", "scorer": SCORER, "temperature": 0.2,
                                      "top-p": 0.9, "max_new_tokens": 16}))
    assert main(["eval", "feedback", "controllability", "--config", str(recipe), "--temperature", "0.5",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"], printed["temperature"], printed["top_p"], printed["max_new_tokens"]) == \
        ("runs/coh/final", 0.5, 0.9, 16)
    assert printed == dataclasses.asdict(ControllabilityConfig(**printed))
    recipe.write_text(yaml.safe_dump({"runs": ["a", "b"], "labels": ["A", "B"]}))
    assert main(["eval", "compare", "c", "--config", str(recipe), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["runs"] == ["c"]  # the command line's runs win


def test_harness_tasks_and_defaults(capsys):
    assert main(["eval", "harness", "--model", "m", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tasks"] == ["wsc", "piqa", "winogrande", "openbookqa", "logiqa"] and printed["extra"] == {}
    assert main(["eval", "harness", "--base-url", "http://h/v1", "--tasks", "a,b", "--tasks", "c",
                 "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["tasks"] == ["a", "b", "c"]
    assert main(["eval", "harness", "--print-config"]) == 1
    assert "give exactly one of a model (--model) or a server (--base-url)" in capsys.readouterr().err


def test_old_judge_spellings_still_work_with_a_note(capsys):
    argv = ["eval", "feedback", "controllability", "--model", "m", "--judge", SCORER, "--judge-batch-size", "3",
            "--print-config"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    printed = yaml.safe_load(out)
    assert (printed["scorer"], printed["scorer_batch_size"]) == (SCORER, 3)
    assert "--judge is deprecated" in err and "use --scorer" in err and "use --scorer-batch-size" in err


def test_required_options_from_neither_flags_nor_recipe(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "feedback", "controllability", "--model", "m"])
    assert stop.value.code == 2
    assert "the following arguments are required: --scorer" in capsys.readouterr().err
    recipe = tmp_path / "pairwise.yaml"
    recipe.write_text(yaml.safe_dump({"a": "x.jsonl", "scorer": SCORER}))
    with pytest.raises(SystemExit):
        main(["eval", "feedback", "pairwise", "--config", str(recipe)])
    assert "required: --b" in capsys.readouterr().err


def test_recipe_values_are_checked_naming_the_option(tmp_path, capsys):
    recipe = tmp_path / "summary.yaml"
    for text, message in (("top_p: 1.5\n", "option top_p: must be in (0, 1], got 1.5"),
                          ("feedback: '  '\n", "option feedback: expected good, bad, none or a phrase"),
                          ("judge: x\n", "unknown option(s) ['judge']"),
                          ("kind: dialog\n", "unknown option(s) ['kind']")):
        recipe.write_text(text)
        assert main(["eval", "feedback", "summarization", "--model", "m", "--config", str(recipe)]) == 1
        assert message in capsys.readouterr().err, text


def test_python_callers_get_the_same_checks():
    assert Sampling().max_new_tokens == 128 and SummarizationConfig(model="m").max_new_tokens == 64
    assert HarnessConfig(model="m", tasks=("t",)).tasks == ["t"]  # a tuple is taken as a list
    for make, message in ((lambda: Sampling(top_p=1.5), "option top_p: must be in (0, 1]"),
                          (lambda: Sampling(max_new_tokens=0), "option max_new_tokens: must be in [1, inf]"),
                          (lambda: Sampling(temperature=float("nan")), "option temperature: must be a finite number"),
                          (lambda: Sampling(seed=2**32), "option seed: must be in [0, 4294967295]"),
                          (lambda: SummarizationConfig(model="m", feedback=""), "option feedback: expected good"),
                          (lambda: ControllabilityConfig(model="m", scorer="s", kind="dialog"),
                           "option kind: must be one of"),
                          (lambda: DialogueConfig(model="m", batch_tokens=0), "option batch_tokens: must be in"),
                          (lambda: PairwiseConfig(a="x", b="y", scorer="s", limit=0), "option limit: must be in"),
                          (lambda: HarnessConfig(model="m", num_fewshot=-1), "option num_fewshot: must be in"),
                          (lambda: HarnessConfig(model="m", tasks=[]), "no tasks given"),
                          (lambda: TableConfig(runs="a"), "option runs: expected a list of strings")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            make()


def test_results_settings_are_the_options_that_rerun_it(tiny_bpe_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "feedback", "dialogue", "--model", str(tiny_bpe_dir), "--data", str(HH_81_92),
                 "--limit", "2", "--no-progress", "-o", str(out)]) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings.pop("phrases")["good"] == "A helpful answer:"
    assert DialogueConfig(**settings, progress=False) == DialogueConfig(
        model=str(tiny_bpe_dir), data=str(HH_81_92), limit=2, output_dir=str(out), progress=False)
