"""``TrainConfig``: everything ``coh train`` needs, one YAML recipe plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MODES = ("coh", "conditional-sft", "sft")
PRETRAIN_MODES = ("step", "ratio")
NORMALIZATIONS = ("step_tokens", "row")
DTYPES = ("float32", "bfloat16")
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")
DISTRIBUTED = ("ddp", "fsdp")


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
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    log_every: int = 10

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse incompatible or impossible settings before any compute is spent."""
        choices = {"mode": MODES, "pretrain_mode": PRETRAIN_MODES, "normalization": NORMALIZATIONS,
                   "dtype": DTYPES, "attention": ATTENTION,
                   "distributed": DISTRIBUTED, "overlong": ("error", "split", "skip")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0 <= self.fcm_min_ratio <= self.fcm_max_ratio < 1:
            raise ValueError(f"need 0 <= fcm_min_ratio <= fcm_max_ratio < 1, got {self.fcm_min_ratio}, "
                             f"{self.fcm_max_ratio}")
        if self.micro_batch_tokens < self.max_length:
            raise ValueError(f"micro_batch_tokens ({self.micro_batch_tokens}) must be at least max_length "
                             f"({self.max_length}), so that every record fits in a micro-batch")
        if self.fcm_max_ratio > 0 and self.attention == "flash_attention_2":
            raise ValueError("FCM needs an arbitrary attention mask: use attention sdpa, eager or flex_attention, "
                             "not flash_attention_2")
        if self.loss_chunk is not None and self.loss_chunk < 1:
            raise ValueError(f"loss_chunk must be positive or null, got {self.loss_chunk}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be 0 (off) or positive, got {self.lora_r}")
        if self.lora_r and self.distributed == "fsdp":
            raise ValueError("LoRA with distributed=fsdp is not supported: use distributed=ddp (adapters are small)")
        if self.pretrain_mode == "ratio" and not 0 < self.pretrain_ratio < 1:
            raise ValueError(f"pretrain_ratio must be in (0, 1), got {self.pretrain_ratio}")
        for name in ("gradient_accumulation_steps", "max_length", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def fcm(self) -> bool:
        return self.fcm_max_ratio > 0

    @staticmethod
    def load(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
        """A recipe file (YAML) with ``key=value`` overrides (values parsed as YAML: ``lr=2e-5``,
        ``report_to=[none]``). Unknown keys are errors naming the key."""
        values: dict = {}
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of option to value")
            values.update(loaded)
        for item in overrides or []:
            key, eq, raw = item.partition("=")
            if not eq:
                raise ValueError(f"override {item!r}: expected key=value")
            values[key.strip().replace("-", "_")] = yaml.safe_load(raw)
        known = {f.name: f for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}" + (f" in {path}" if path else ""))
        hints = typing.get_type_hints(TrainConfig)
        return TrainConfig(**{key: _coerce(key, hints[key], value) for key, value in values.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(key: str, hint: object, value: object) -> object:
    """YAML reads ``1e-5`` as a string and ``1`` as an int: give each option its declared type."""
    if value is None:
        return None
    types = typing.get_args(hint) or (hint,)
    try:
        if float in types and not isinstance(value, bool):
            return float(value)
        if int in types and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"option {key}: expected a number, got {value!r}") from None
    if bool in types and not isinstance(value, bool):
        raise ValueError(f"option {key}: expected true or false, got {value!r}")
    if list[str] in types and isinstance(value, str):
        return [value]
    return value
