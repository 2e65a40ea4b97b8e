"""``TrainConfig``: everything ``coh train`` needs, one YAML recipe plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coh.data.errors import describe

MODES = ("coh", "conditional-sft", "sft")
PRETRAIN_MODES = ("step", "ratio")
NORMALIZATIONS = ("step_tokens", "row")
DTYPES = ("float32", "bfloat16")
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")
DISTRIBUTED = ("ddp", "fsdp")
REPORT_TO = ("tensorboard", "wandb", "none")


@dataclass
class TrainConfig:
    """A training run. Units: ``micro_batch_tokens`` tokens per packed micro-batch (records are
    never split across micro-batches); ``max_length`` the longest record in tokens; ``lr`` peak
    learning rate after ``warmup_steps`` optimizer steps, then cosine down to ``min_lr_ratio`` x lr.

    Loss (``normalization``): ``step_tokens`` (default) divides the summed token losses by the
    number of target tokens in the whole optimizer step (all micro-batches, all processes), so
    gradient accumulation and process count do not change the update; ``row`` is the original's
    per-row mean (here: per micro-batch, whatever its layout), averaged over the step's micro-batches.
    """

    # model
    model: str = ""
    tokenizer: str | None = None  # defaults to the model's
    trust_remote_code: bool = False
    dtype: str = "float32"
    attention: str = "sdpa"
    gradient_checkpointing: bool = False
    distributed: str = "ddp"  # several processes (torchrun / accelerate launch): ddp, or fsdp (FSDP2 shards)
    # LoRA through peft (lora_r > 0): only the adapters train; checkpoints hold the adapter alone
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"  # peft's shorthand, or a comma list such as q_proj,v_proj
    lora_merge: bool = True  # also write final-merged/: the adapter merged into the base, a plain HF model
    # data
    train_data: str = ""  # records file (ours or the original's fields format) or a `coh data build` folder
    eval_data: str | None = None
    mode: str = "coh"
    resample_each_epoch: bool = False  # draw fresh phrasing every epoch (needs the build's examples/)
    max_length: int = 2048
    overlong: str = "error"  # records longer than max_length: error, split or skip
    micro_batch_tokens: int = 4096
    # objective
    normalization: str = "step_tokens"
    loss_chunk: int | None = 1024  # target positions per slice of the vocabulary projection (None: all at once)
    fcm_min_ratio: float = 0.0
    fcm_max_ratio: float = 0.0
    pretrain_data: str | None = None  # "c4", a hub id, or local text / jsonl files
    pretrain_eval_data: str | None = None  # held-out text for eval/pretrain_loss (default: pretrain_data's start)
    pretrain_mode: str = "step"  # step: a pretraining batch every step, loss += lambda * pt; ratio: mixed in
    pretrain_lambda: float = 0.01
    pretrain_ratio: float = 0.1  # ratio mode: share of micro-batches that are pretraining text
    # optimisation
    lr: float = 1e-5
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    warmup_steps: int = 100
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    seed: int = 0
    # evaluation, checkpoints, logging
    eval_every: int = 500
    eval_records: int | None = 2000  # cap on eval records (None: all)
    save_every: int = 500
    keep_last: int = 2
    output_dir: str = "runs/coh"
    resume: bool = True  # continue from the newest complete checkpoint in output_dir
    # A checkpoint trained with other settings (data, mode, lr, ...) is refused unless this is true;
    # then the new settings apply from the checkpoint's step on and coh.json records the change.
    resume_with_changes: bool = False
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    log_every: int = 10

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse incompatible or impossible settings before any compute is spent: a wrong type,
        a number that is not finite or out of its range, an unknown choice."""
        _check_types(self)
        choices = {"mode": MODES, "pretrain_mode": PRETRAIN_MODES, "normalization": NORMALIZATIONS,
                   "dtype": DTYPES, "attention": ATTENTION,
                   "distributed": DISTRIBUTED, "overlong": ("error", "split", "skip")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        unknown = sorted({t.lower() for t in self.report_to} - set(REPORT_TO))
        if unknown:
            raise ValueError(f"report_to: unknown {unknown}; choose from {list(REPORT_TO)}")
        # max_grad_norm may be .inf (no clipping); every other float must be finite.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value) and not (f.name == "max_grad_norm" and value > 0):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        at_least = {"gradient_accumulation_steps": 1, "max_length": 1, "eval_every": 1, "save_every": 1,
                     "log_every": 1, "keep_last": 1, "warmup_steps": 0, "lora_r": 0, "seed": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("max_steps", "eval_records", "loss_chunk"):  # null, or a positive count
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or null), got {getattr(self, name)}")
        if self.seed >= 2**32:
            raise ValueError(f"seed must be below 2**32, got {self.seed}")
        for name in ("lr", "epochs", "max_grad_norm", "lora_alpha"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "pretrain_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("adam_beta1", "adam_beta2", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.fcm_min_ratio <= self.fcm_max_ratio < 1:
            raise ValueError(f"need 0 <= fcm_min_ratio <= fcm_max_ratio < 1, got {self.fcm_min_ratio}, "
                             f"{self.fcm_max_ratio}")
        if self.micro_batch_tokens < self.max_length:
            raise ValueError(f"micro_batch_tokens ({self.micro_batch_tokens}) must be at least max_length "
                             f"({self.max_length}), so that every record fits in a micro-batch")
        if self.fcm_max_ratio > 0 and self.attention == "flash_attention_2":
            raise ValueError("FCM needs an arbitrary attention mask: use attention sdpa, eager or flex_attention, "
                             "not flash_attention_2")
        if self.lora_r and self.distributed == "fsdp":
            raise ValueError("LoRA with distributed=fsdp is not supported: use distributed=ddp (adapters are small)")
        if self.pretrain_mode == "ratio" and not 0 < self.pretrain_ratio < 1:
            raise ValueError(f"pretrain_ratio must be in (0, 1), got {self.pretrain_ratio}")
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")

    @property
    def fcm(self) -> bool:
        return self.fcm_max_ratio > 0

    @staticmethod
    def load(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
        """A recipe file (YAML) with ``key=value`` overrides (values parsed as YAML: ``lr=2e-5``,
        ``report_to=[none]``). Unknown keys, YAML that does not parse and values of the wrong type
        are ``ValueError``s naming the file or the override."""
        values: dict = {}
        raw_text: dict[str, str] = {}  # an override's value as typed, for options that are strings
        if path is not None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ValueError(f"recipe {path}: no such file") from None
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"recipe {path}: cannot read it ({e})") from None
            try:
                loaded = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"recipe {path}: not valid YAML: {_yaml_problem(e)}") from None
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of option to value, got {describe(loaded)}")
            values.update({str(k): v for k, v in loaded.items()})
        for item in overrides or []:
            key, eq, raw = item.partition("=")
            if not eq:
                raise ValueError(f"override {item!r}: expected key=value")
            key = key.strip().replace("-", "_")
            try:
                values[key] = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)}); "
                                 "quote it if it is meant as a string") from None
            raw_text[key] = raw
        known = {f.name: f for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}" + (f" in {path}" if path else ""))
        hints = _type_hints()
        return TrainConfig(**{key: _coerce(key, hints[key], value, raw_text.get(key)) for key, value in values.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What PyYAML found wrong, and where (1-based line and column)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}" + (f" ({context})" if context else "")


def _types(hint: object) -> tuple:
    """The types an option's hint allows: ``int | None`` -> (int, NoneType); ``list[str]`` -> (list[str],)."""
    return (hint,) if typing.get_origin(hint) is list else typing.get_args(hint) or (hint,)


def _coerce(key: str, hint: object, value: object, raw: str | None = None) -> object:
    """YAML reads ``1e-5`` as a string and ``1`` as an int: give each option its declared type
    where that is unambiguous; anything else is left for ``check`` to refuse by name. ``raw``: an
    override's text, taken as is for string options (``train_data=2024`` is a folder, not 2024)."""
    if value is None:
        return None
    types = _types(hint)
    if isinstance(value, bool):
        return value
    if float in types and isinstance(value, (int, float, str)):
        try:
            return float(value)
        except ValueError:
            return value
    if int in types and isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if math.isfinite(number) and number == int(number) else number
    if str in types and isinstance(value, (int, float)) and raw is not None:
        return raw.strip()
    if list[str] in types and isinstance(value, str):
        return [value]
    return value


_HINTS: dict[str, object] = {}


def _type_hints() -> dict[str, object]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainConfig))
    return _HINTS


def _check_types(cfg: TrainConfig) -> None:
    """Each option holds its declared type (``int`` is accepted for ``float``, ``bool`` for neither)."""
    for name, hint in _type_hints().items():
        value = getattr(cfg, name)
        types = _types(hint)
        if value is None and type(None) in types:
            continue
        if bool in types:
            ok, expected = isinstance(value, bool), "true or false"
        elif float in types:
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif int in types:
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif str in types:
            ok, expected = isinstance(value, str), "a string"
        elif list[str] in types:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            expected = f"a list of names ({', '.join(REPORT_TO)})"
        else:  # pragma: no cover - a new option with a type this check does not know
            raise TypeError(f"option {name}: no check for type {hint}")
        if not ok:
            expected += " or null" if type(None) in types else ""
            if str in types and isinstance(value, (int, float)):
                expected += " (quote it in YAML)"
            raise ValueError(f"option {name}: expected {expected}, got {describe(value)}")
