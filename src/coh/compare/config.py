"""``CompareConfig``: one YAML recipe for ``coh compare`` (see ``configs/compare/``).

A recipe names a base model, raw feedback data, how it is split by prompt, one training budget
and setting (LoRA or full fine-tuning) shared by every method, the methods, the judge and the
evaluation sizes. ``extends: OTHER.yaml`` starts from another recipe (mappings merge key by key,
lists and values are replaced).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METHODS = ("coh", "conditional-sft", "sft", "dpo", "base")
COH_MODES = ("coh", "conditional-sft", "sft")  # trained by `coh train` in that mode
PRESETS_DIR = Path(__file__).resolve().parents[3] / "configs" / "compare"  # in a source checkout


@dataclass
class MethodSpec:
    """One system to compare. ``method``: one of ``METHODS``; ``name`` labels it (default: the
    method). ``feedback``: the CoH feedback mix of its records (default: the recipe's), for
    ``coh``-mode runs such as the paper's p/n/pn/np ablations. ``train``: ``TrainConfig`` options
    for this run only (e.g. ``fcm_max_ratio: 0.05``, ``pretrain: true``); ``dpo``: ``DPOConfig``
    options (e.g. ``beta: 0.1``)."""

    method: str
    name: str = ""
    feedback: str | None = None
    train: dict = field(default_factory=dict)
    dpo: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: expected one of {list(METHODS)}")
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
class JudgeSpec:
    """Scores replies for the win rates. ``spec``: a reward model (hub id or folder) or a
    ``MODULE:FUNCTION`` judge (``coh.eval.judges.load_judge``); or, with ``spec`` empty, a reward
    model trained here with TRL's ``RewardTrainer`` on the judge rows, from the same base model,
    with the recipe's LoRA setting, for ``steps`` steps of about ``tokens_per_step`` tokens."""

    spec: str | None = None
    steps: int = 100
    tokens_per_step: int = 2048
    lr: float | None = None  # default: the recipe's lr
    batch_size: int = 8  # replies per scoring batch


@dataclass
class CompareConfig:
    """A comparison run. Units: ``steps`` optimizer steps of ``tokens_per_step`` tokens (packed
    records for ``coh train``; about as many tokens, counted from the data, for DPO); every method
    gets the same steps, tokens, learning rate schedule, LoRA setting and seed.

    Splits (fractions of prompts, decided by a seeded hash of each prompt, so no prompt lands in
    two): ``eval_fraction`` held out for evaluation, ``judge_fraction`` for the reward model, the
    rest trains the policies. ``max_record_tokens`` keeps examples whose longest CoH record
    (``pn``) fits; the others are counted, per split, in ``split/summary.json``."""

    model: str = "smollm2"  # a folder or hub id; "smollm2" (coh.smollm2), "tiny" (a tiny LLaMA, coh.tiny)
    data: str = ""  # raw hh-rlhf rows (jsonl/json/parquet, gzip allowed)
    kind: str = "dialogue"
    skip_invalid: bool = True  # malformed rows go to split/rejects.jsonl, counted, instead of stopping
    output_dir: str = "runs/compare"
    split_seed: int = 0
    eval_fraction: float = 0.15
    judge_fraction: float = 0.25
    max_record_tokens: int | None = 384
    feedback: str = "p,n,pn,np"
    methods: list[MethodSpec] = field(default_factory=lambda: [MethodSpec(m) for m in METHODS])
    seeds: list[int] = field(default_factory=lambda: [0])
    # the one budget and setting
    steps: int = 100
    tokens_per_step: int = 2048
    lr: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    lora_r: int = 8  # 0: full fine-tuning
    lora_alpha: float = 16.0
    lora_target_modules: str = "all-linear"
    dtype: str = "float32"
    train: dict = field(default_factory=dict)  # more TrainConfig options for every coh-mode run
    # plain text: held-out loss (before / after), and the pretraining stream when a run asks for it
    plain_text_tokens: int = 8192  # held-out plain text scored per model
    pretrain_lambda: float = 0.01
    # evaluation
    eval_pairs: int | None = 200  # held-out pairs for the likelihood protocols (None: all)
    generation_prompts: int = 64  # held-out prompts answered and judged
    max_new_tokens: int = 64
    generation_batch_size: int = 16
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    device: str | None = None
    # tiny base model (model: tiny), for the smoke preset
    tiny_vocab: int = 300
    tiny_hidden: int = 32
    tiny_layers: int = 1

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not 0 < self.eval_fraction < 1 or not 0 <= self.judge_fraction < 1 \
                or self.eval_fraction + self.judge_fraction >= 1:
            raise ValueError(f"need 0 < eval_fraction, 0 <= judge_fraction and their sum < 1 (the rest trains the "
                             f"policies), got {self.eval_fraction} and {self.judge_fraction}")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must differ, got {names}; give repeated methods a name")
        if not self.methods:
            raise ValueError("methods: give at least one")
        if not self.seeds:
            raise ValueError("seeds: give at least one")
        if self.judge.spec is None and self.judge_fraction == 0:
            raise ValueError("the judge is trained on the judge rows: give judge_fraction > 0, or a judge spec")
        for name in ("steps", "tokens_per_step", "plain_text_tokens", "generation_prompts", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
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

    # -- loading ------------------------------------------------------------------------------------
    @staticmethod
    def load(path: str | Path, overrides: dict | None = None) -> CompareConfig:
        """A recipe file, or the name of a preset in ``configs/compare/`` (``smoke``, ``cpu``, ``gpu``)."""
        values = _read_recipe(resolve_recipe(path))
        values = _merge(values, overrides or {})
        return CompareConfig.from_dict(values, str(path))

    @staticmethod
    def from_dict(values: dict, where: str = "recipe") -> CompareConfig:
        values = dict(values)
        known = {f.name for f in dataclasses.fields(CompareConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown}; expected some of {sorted(known)}")
        if "methods" in values:
            values["methods"] = [MethodSpec(**_checked(m, MethodSpec, where)) if isinstance(m, dict)
                                 else MethodSpec(str(m)) for m in values["methods"]]
        if "judge" in values:
            j = values["judge"]
            values["judge"] = JudgeSpec(spec=j) if isinstance(j, str) else JudgeSpec(**_checked(j or {}, JudgeSpec, where))
        if "seeds" in values and isinstance(values["seeds"], int):
            values["seeds"] = [values["seeds"]]
        for key in ("eval_fraction", "judge_fraction", "lr", "min_lr_ratio", "lora_alpha", "pretrain_lambda"):
            if key in values and values[key] is not None:
                values[key] = float(values[key])
        return CompareConfig(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _checked(values: dict, cls: type, where: str) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} option(s) {unknown}; expected some of {sorted(known)}")
    return values


def resolve_recipe(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    preset = PRESETS_DIR / f"{path}.yaml"
    if preset.exists():
        return preset
    names = sorted(q.stem for q in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.exists() else []
    raise FileNotFoundError(f"{path}: no such recipe file" + (f" or preset (presets: {', '.join(names)})" if names else ""))


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise ValueError(f"{path}: 'extends' loops back to itself")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of option to value")
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    return _merge(_read_recipe(path.parent / parent, (*seen, path.resolve())), loaded)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
