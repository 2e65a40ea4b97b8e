"""coh.options on a toy config: defaults < recipe < flags, checks, old spellings, required fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from coh.options import OptionError, add_options, check_fields, option, options_from_args, read_recipe


@dataclass
class Toy:
    model: str = option(help="a model", positional=True)
    lr: float = option(1e-3, "learning rate", low=0.0, low_open=True)
    steps: int = option(10, "optimizer steps", flags=("-n",), deprecated=("--max-steps",), low=1)
    feedback: list[str] = option(factory=lambda: ["p", "n"], help="feedback types", choices=("p", "n", "pn", "np"))
    name: str | None = option(None, "a name")

    def __post_init__(self) -> None:
        check_fields(self)


def resolve(argv: list[str]) -> Toy:
    parser = argparse.ArgumentParser(prog="toy")
    add_options(parser, Toy)
    return options_from_args(Toy, parser.parse_args(argv))


def test_defaults_recipe_and_flags_in_that_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\nlr: 2e-5\nsteps: 3\n")  # YAML reads 2e-5 as text: the option makes it a float
    assert resolve(["--config", str(recipe)]) == Toy("m", 2e-5, 3, ["p", "n"], None)
    cfg = resolve(["--config", str(recipe), "-n", "7", "--feedback", "pn,np", "--name", "none"])
    assert (cfg.model, cfg.lr, cfg.steps, cfg.feedback, cfg.name) == ("m", 2e-5, 7, ["pn", "np"], None)


def test_old_spelling_is_taken_with_a_note(capsys):
    assert resolve(["m", "--max-steps", "4"]).steps == 4
    assert "--max-steps" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["m", "--lr", "0"], ["m", "--steps", "0"], ["m", "--steps", "two"],
                                  ["m", "--feedback", "p,x"], []])
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        resolve(argv)
    assert e.value.code == 2
    assert "toy: error:" in capsys.readouterr().err


def test_python_and_recipe_values_get_the_same_checks(tmp_path):
    with pytest.raises(OptionError, match=r"option lr: must be in \(0.0, inf\]"):
        Toy("m", lr=0.0)
    with pytest.raises(OptionError, match="option steps: expected a whole number"):
        Toy("m", steps=2.5)
    with pytest.raises(OptionError, match="option lr: must be a finite number"):
        Toy("m", lr=float("nan"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\nbogus: 1\n")
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \['bogus'\] in recipe {recipe}"):
        read_recipe(recipe, Toy)
    recipe.write_text("model: [m\n")
    with pytest.raises(ValueError, match=f"recipe {recipe}.*line"):
        read_recipe(recipe, Toy)
