"""The options of ``coh compare``: the recipe (``CompareConfig``, with ``MethodSpec`` per compared
system and ``ScorerSpec`` for what scores replies) and the command line (``CompareOptions``: which
recipe, and the few of its keys a flag overrides). Fields are made with ``coh.options.option``
(help text, default, range) and checked by ``coh.options.check_fields`` plus the rules of their
own, so a recipe, the flags and a Python caller get the same checks. Reading a recipe file (its
``extends:``, presets by name, the old key spellings) is ``coh.compare.recipe``.

Nothing heavy is imported here: ``coh --help`` builds these parsers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from coh.data.errors import describe
from coh.data.sources import CONVERTERS
from coh.options import check_fields, coerce, option

METHODS = ("coh", "conditional-sft", "sft", "dpo", "base")
COH_MODES = ("coh", "conditional-sft", "sft")  # trained by `coh train` in that mode
AT_LEAST_0 = {"low": 0, "expected": "a whole number of at least 0"}
AT_LEAST_1 = {"low": 1, "expected": "a whole number of at least 1"}
ABOVE_0 = {"low": 0, "low_open": True, "expected": "a number above 0"}


@dataclass
class MethodSpec:
    """One system to compare: a recipe's ``methods:`` item, a method name or a mapping of these keys."""

    method: str = option(help=f"what is trained: one of {', '.join(METHODS)}")
    name: str = option("", "its label in the report and its folder (none: the method)")
    feedback: str | None = option(None, "the CoH feedback mix of its records, for coh runs such as the paper's "
                                        "p/n/pn/np ablations (none: the recipe's feedback)")
    train: dict = option(factory=dict, help="coh train (TrainConfig) options for this run only, e.g. fcm_max_ratio: "
                                            "0.05; pretrain: true turns on the regulariser with the recipe's plain "
                                            "text", cli=False)
    dpo: dict = option(factory=dict, help="TRL DPOConfig options for a dpo run, e.g. beta: 0.1", cli=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: expected one of {list(METHODS)}")
        check_fields(self)
        for key in ("train", "dpo"):
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"method {self.name or self.method}: '{key}': expected a mapping of options, got "
                                 f"{describe(getattr(self, key))}")
        self.name = self.name or self.method
        if self.feedback is not None and self.method != "coh":
            raise ValueError(f"method {self.name}: 'feedback' (the record mix) applies to coh runs only")
        if self.dpo and self.method != "dpo":
            raise ValueError(f"method {self.name}: 'dpo' options apply to dpo runs only")
        if self.train and self.method == "base":
            raise ValueError(f"method {self.name}: the base model is not trained; it takes no 'train' options")

    @property
    def prompt_feedback(self) -> str:
        """The phrase its replies follow at evaluation: the positive one for models trained with
        phrases, none (the plain prompt) for the others."""
        return "good" if self.method in ("coh", "conditional-sft") else "none"


@dataclass
class ScorerSpec:
    """What scores replies for the win rates: a recipe's ``scorer:``, a spec string or a mapping of
    these keys. With ``spec`` empty, a reward model is trained here with TRL's ``RewardTrainer``
    on the scorer rows, from the same base model, with the recipe's LoRA setting."""

    spec: str | None = option(None, "a reward model (hub id or folder) or MODULE:FUNCTION, as coh eval's --scorer "
                                    "(coh.eval.scorers.load_scorer); none: train a reward model here")
    steps: int = option(100, "the trained reward model's optimizer steps", **AT_LEAST_1)
    tokens_per_step: int = option(2048, "about this many tokens per reward-model step", **AT_LEAST_1)
    lr: float | None = option(None, "the reward model's learning rate (none: the recipe's lr)", **ABOVE_0)
    batch_size: int = option(8, "replies per scoring batch", **AT_LEAST_1)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class CompareConfig:
    """A comparison run. Units: ``steps`` optimizer steps of ``tokens_per_step`` tokens (packed
    records for ``coh train``; about as many tokens, counted from the data, for DPO); every method
    gets the same steps, tokens, learning rate schedule, LoRA setting and seed.

    Splits (fractions of prompts, decided by a seeded hash of each prompt, so no prompt lands in
    two): ``eval_fraction`` held out for evaluation, ``scorer_fraction`` to train the reward model
    (the split called ``judge`` in ``split/``), the rest trains the policies. ``max_record_tokens``
    keeps examples whose longest CoH record (``pn``) fits; the others are counted, per split, in
    ``split/summary.json``."""

    model: str = option("smollm2", "the base model: a folder or hub id; smollm2 (coh.smollm2) or tiny (a tiny "
                                   "LLaMA built from config, coh.tiny)")
    data: str = option("", "raw hh-rlhf rows (jsonl/json/parquet, gzip allowed)")
    kind: str = option("dialogue", "`coh data` source kind of the data", choices=sorted(CONVERTERS))
    skip_invalid: bool = option(True, "malformed rows go to split/rejects.jsonl, counted, instead of stopping")
    output_dir: str = option("runs/compare", "where everything goes")
    split_seed: int = option(0, "seed of the split by prompt (and of the records and plain text)")
    eval_fraction: float = option(0.15, "share of prompts held out for evaluation", low=0, high=1, low_open=True,
                                  high_open=True, expected="a number between 0 and 1")
    scorer_fraction: float = option(0.25, "share of prompts that train the reward model (0: give a scorer spec)",
                                    low=0, high=1, high_open=True, expected="a number from 0 to below 1")
    max_record_tokens: int | None = option(384, "keep examples whose longest CoH record fits (none: all)",
                                           **AT_LEAST_1)
    feedback: str = option("p,n,pn,np", "the CoH feedback mix of coh runs' records")
    methods: list[MethodSpec] = option(factory=lambda: [MethodSpec(m) for m in METHODS],
                                       help="the systems compared, in report order", cli=False)
    seeds: list[int] = option(factory=lambda: [0], help="training seeds: every method is trained once per seed")
    # the one budget and setting
    steps: int = option(100, "optimizer steps of every trained method", **AT_LEAST_1)
    tokens_per_step: int = option(2048, "tokens per optimizer step", **AT_LEAST_1)
    lr: float = option(1e-4, "peak learning rate", **ABOVE_0)
    warmup_steps: int = option(10, "linear warmup steps", **AT_LEAST_0)
    min_lr_ratio: float = option(0.1, "cosine decay down to this share of lr", low=0, high=1,
                                 expected="a number from 0 to 1")
    lora_r: int = option(8, "LoRA rank (0: full fine-tuning)", **AT_LEAST_0)
    lora_alpha: float = option(16.0, "LoRA alpha", **ABOVE_0)
    lora_target_modules: str = option("all-linear", "LoRA target modules: all-linear or a comma list of names")
    dtype: str = option("float32", "training dtype (bf16 is emulated on most CPUs, and slow)")
    train: dict = option(factory=dict, help="more coh train (TrainConfig) options for every coh-mode run", cli=False)
    # plain text: held-out loss (before / after), and the pretraining stream when a run asks for it
    plain_text_tokens: int = option(8192, "held-out plain-text tokens scored per model", **AT_LEAST_1)
    pretrain_lambda: float = option(0.01, "weight of the pretraining loss in runs with pretrain: true", low=0,
                                    expected="a number of at least 0")
    # evaluation
    eval_pairs: int | None = option(200, "held-out pairs for the likelihood protocols (none: all)", **AT_LEAST_1)
    generation_prompts: int = option(64, "held-out prompts answered and scored", **AT_LEAST_1)
    max_new_tokens: int = option(64, "longest reply in tokens", **AT_LEAST_1)
    generation_batch_size: int = option(16, "prompts generated together", **AT_LEAST_1)
    scorer: ScorerSpec = option(factory=ScorerSpec, help="what scores replies (a spec string or a mapping)",
                                cli=False)
    device: str | None = option(None, "cuda, cuda:1, cpu ... for evaluation (none: cuda when there is one)")
    # tiny base model (model: tiny), for the smoke preset
    tiny_vocab: int = option(300, "model tiny: vocabulary size", **AT_LEAST_1)
    tiny_hidden: int = option(32, "model tiny: hidden size", **AT_LEAST_1)
    tiny_layers: int = option(1, "model tiny: layers", **AT_LEAST_1)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_fields(self)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"option seeds: expected a list of whole numbers, got {self.seeds!r}")
        if not isinstance(self.train, dict):
            raise ValueError(f"option train: expected a mapping of coh train options, got {describe(self.train)}")
        if not all(isinstance(m, MethodSpec) for m in self.methods) or not isinstance(self.scorer, ScorerSpec):
            raise ValueError("methods and scorer: expected MethodSpec items and a ScorerSpec (a recipe gives mappings: "
                             "CompareConfig.from_dict)")
        if self.eval_fraction + self.scorer_fraction >= 1:
            raise ValueError(f"need 0 < eval_fraction, 0 <= scorer_fraction and their sum < 1 (the rest trains the "
                             f"policies), got {self.eval_fraction} and {self.scorer_fraction}")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must differ, got {names}; give repeated methods a name")
        if not self.methods:
            raise ValueError("methods: give at least one")
        if not self.seeds:
            raise ValueError("seeds: give at least one")
        if self.scorer.spec is None and self.scorer_fraction == 0:
            raise ValueError("the reward model is trained on the scorer rows: give scorer_fraction > 0, or a scorer "
                             "spec")
        if self.max_record_tokens is not None and self.max_record_tokens > self.tokens_per_step:
            raise ValueError(f"max_record_tokens ({self.max_record_tokens}) must fit in tokens_per_step "
                             f"({self.tokens_per_step})")
        for m in self.methods:
            self.train_config(m, 0, "data", "out", "base")  # every run's TrainConfig must validate now

    def max_length(self) -> int:
        return self.max_record_tokens or self.tokens_per_step

    def train_config(self, method: MethodSpec, seed: int, data: str, output_dir: str, model: str,
                     pretrain_data: str | None = None):
        """The ``coh train`` configuration of a coh-mode method (also checks DPO's shared options)."""
        from coh.train.config import TrainConfig

        options = {**self.train, **method.train}
        pretrain = options.pop("pretrain", False)  # ours: turn on the regulariser with the recipe's plain text
        values = dict(model=model, train_data=data, mode=method.method if method.method in COH_MODES else "coh",
                      max_steps=self.steps, micro_batch_tokens=self.tokens_per_step, max_length=self.max_length(),
                      lr=self.lr, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio, seed=seed,
                      lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_target_modules=self.lora_target_modules,
                      dtype=self.dtype, output_dir=output_dir, report_to=["none"], eval_every=10**9,
                      save_every=max(1, self.steps // 4), log_every=max(1, self.steps // 50), keep_last=1,
                      pretrain_lambda=self.pretrain_lambda)
        if pretrain:
            values["pretrain_data"] = pretrain_data or "plain-text"
        values.update(options)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"method {method.name}: unknown train option(s) {unknown}")
        return TrainConfig(**values)

    # -- recipes (coh.compare.recipe) -----------------------------------------------------------------
    @staticmethod
    def load(path: str | Path, overrides: dict | None = None) -> CompareConfig:
        """A recipe file, or the name of a preset in ``configs/compare/`` (``smoke``, ``cpu``, ``gpu``),
        with ``overrides`` (recipe keys) on top."""
        from coh.compare.recipe import load_recipe

        return load_recipe(path, overrides)

    @staticmethod
    def from_dict(values: dict, where: str = "recipe") -> CompareConfig:
        """A config from a recipe's mapping (methods and the scorer as names, strings or mappings)."""
        from coh.compare.recipe import config_from_dict

        return config_from_dict(values, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CompareOptions:
    """``coh compare``'s command line: a recipe and the keys of it that a flag may override."""

    recipe: str = option(help="a recipe YAML file, or a preset name: smoke, cpu, cpu-knobs, gpu (configs/compare/)",
                         positional=True)
    output_dir: str | None = option(None, "where everything goes (none: the recipe's output_dir)", flags=("-o",),
                                    metavar="DIR")
    data: str | None = option(None, "raw hh-rlhf rows (none: the recipe's data)", metavar="FILE")
    seeds: list[int] | None = option(None, "training seeds, a comma list (none: the recipe's seeds)")
    device: str | None = option(None, "cuda, cuda:1, cpu ... for evaluation (none: the recipe's, else cuda when there "
                                      "is one)")
    progress: bool = option(True, "progress bars on a terminal")

    def __post_init__(self) -> None:
        if self.seeds is not None:  # command-line text: whole numbers wanted
            self.seeds = [coerce("seeds", int, s) for s in self.seeds]
        check_fields(self)
        if self.seeds is not None and not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"option seeds: expected whole numbers, got {self.seeds!r}")

    def overrides(self) -> dict:
        """The recipe keys these flags set (those given)."""
        return {k: getattr(self, k) for k in ("output_dir", "data", "seeds", "device") if getattr(self, k) is not None}

    def resolve(self) -> CompareConfig:
        """The recipe with the flags on top."""
        return CompareConfig.load(self.recipe, self.overrides())
