"""``TrainConfig``: everything ``coh train`` needs, as flags, a YAML recipe, or both.

Each field is a ``coh.options.option`` with its help text, choices and range, so ``coh.options``
builds the flags (``--lr 2e-5``), the ``--config`` recipe and ``--print-config`` from it, and
checks types, finite numbers, choices and ranges (``check_fields``) for the command line, a recipe
and a Python caller alike. ``check`` adds the rules that tie several options together.

Nothing heavy is imported here: ``coh --help`` builds the parser from this class.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from coh.options import OptionError, check_fields, option, options_from_args

MODES = ("coh", "conditional-sft", "sft")
PRETRAIN_MODES = ("step", "ratio")
NORMALIZATIONS = ("step_tokens", "row")
DTYPES = ("float32", "bfloat16")
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")
DISTRIBUTED = ("ddp", "fsdp")
REPORT_TO = ("tensorboard", "wandb", "none")
OVERLONG_POLICIES = ("error", "split", "skip")

AT_LEAST_0 = {"low": 0}
AT_LEAST_1 = {"low": 1}
POSITIVE = {"low": 0, "low_open": True}
SHARE = {"low": 0, "high": 1, "high_open": True}  # [0, 1)


@dataclass(kw_only=True)
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
    model: str = option(help="the model to fine-tune: a hub id or a folder (any AutoModelForCausalLM)",
                        metavar="PATH_OR_ID")
    tokenizer: str | None = option(None, "tokenizer, a hub id or a folder (none: the model's)", metavar="PATH_OR_ID")
    trust_remote_code: bool = option(False, "run the model's own code from its folder or the hub")
    dtype: str = option("float32", "float32, or bfloat16: bf16 compute under autocast with fp32 weights and "
                                   "optimizer (under FSDP, its mixed precision)", choices=DTYPES)
    attention: str = option("sdpa", "attention backend (flex_attention: GPUs only; flash_attention_2: where "
                                    "installed, no FCM)", choices=ATTENTION)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass: less memory, "
                                                 "more compute")
    distributed: str = option("ddp", "with several processes (torchrun, accelerate launch): ddp, or fsdp "
                                     "(FSDP2 shards)", choices=DISTRIBUTED)
    lora_r: int = option(0, "LoRA rank through peft, 0: full fine-tuning. With LoRA only the adapters train and "
                            "checkpoints hold the adapter alone", **AT_LEAST_0)
    lora_alpha: float = option(16.0, "LoRA alpha (the adapters' update is scaled by alpha / r)", **POSITIVE)
    lora_dropout: float = option(0.0, "dropout on the LoRA path, in [0, 1)", **SHARE)
    lora_target_modules: str = option("all-linear", "modules that get adapters: peft's all-linear, or a comma "
                                                    "list such as q_proj,v_proj")
    lora_merge: bool = option(True, "with LoRA, also write final-merged/: the adapter merged into the base, a "
                                    "plain HF model")
    # data
    train_data: str = option(help="training records: a `coh data build` folder (its train.jsonl) or a records "
                                  "file, ours or the original's fields format", metavar="RECORDS")
    eval_data: str | None = option(None, "held-out records (none: eval.jsonl of the train_data folder, if any)",
                                   metavar="RECORDS")
    mode: str = option("coh", "coh: the records as built; conditional-sft: only the preferred outputs, after the "
                              "positive phrase; sft: only the preferred outputs, without phrases", choices=MODES)
    resample_each_epoch: bool = option(False, "draw fresh phrasing and order every epoch (needs a build made "
                                              "with `coh data build --resample`)")
    max_length: int = option(2048, "longest record in tokens", **AT_LEAST_1)
    overlong: str = option("error", "records longer than max_length: error (stop before any compute), split "
                                    "into pieces, or skip (counted)", choices=OVERLONG_POLICIES)
    micro_batch_tokens: int = option(4096, "tokens per packed micro-batch and process, at least max_length "
                                           "(records are never split across micro-batches)", **AT_LEAST_1)
    # objective
    normalization: str = option("step_tokens", "step_tokens: the step's summed token losses over its target "
                                               "tokens (all micro-batches, all processes); row: the original's "
                                               "per-row mean (here per micro-batch), averaged over the step",
                                choices=NORMALIZATIONS)
    loss_chunk: int | None = option(1024, "target positions per slice of the vocabulary projection (none: all "
                                          "at once)", **AT_LEAST_1)
    fcm_min_ratio: float = option(0.0, "random past-token masking: each record drops keys at a ratio drawn from "
                                       "U(fcm_min_ratio, fcm_max_ratio); 0 <= min <= max < 1")
    fcm_max_ratio: float = option(0.0, "the largest masking ratio (the paper: 0.05); 0: no masking")
    pretrain_data: str | None = option(None, "pretraining text as a regulariser: c4 (streamed), a hub dataset, "
                                             "or local .txt / .jsonl files (none: no regulariser)")
    pretrain_eval_data: str | None = option(None, "held-out text for eval/pretrain_loss (none: the first "
                                                  "batches of pretrain_data)")
    pretrain_mode: str = option("step", "step: a pretraining micro-batch every step, loss += pretrain_lambda x "
                                        "its loss (the original); ratio: pretraining micro-batches mixed in",
                                choices=PRETRAIN_MODES)
    pretrain_lambda: float = option(0.01, "step mode: the weight of the pretraining loss", **AT_LEAST_0)
    pretrain_ratio: float = option(0.1, "ratio mode: the share of micro-batches that are pretraining text, in "
                                        "(0, 1)", low=0, high=1, low_open=True, high_open=True)
    # optimisation
    lr: float = option(1e-5, "peak learning rate, reached after warmup_steps", **POSITIVE)
    min_lr_ratio: float = option(0.1, "the cosine schedule ends at min_lr_ratio x lr", low=0, high=1)
    weight_decay: float = option(0.0, "AdamW weight decay (none on biases and norms)", **AT_LEAST_0)
    adam_beta1: float = option(0.9, "AdamW beta1, in [0, 1)", **SHARE)
    adam_beta2: float = option(0.95, "AdamW beta2, in [0, 1)", **SHARE)
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this (inf: no clipping)", allow_inf=True,
                                  **POSITIVE)
    warmup_steps: int = option(100, "optimizer steps of linear warmup", **AT_LEAST_0)
    gradient_accumulation_steps: int = option(1, "micro-batches per process in each optimizer step", **AT_LEAST_1)
    epochs: float = option(1.0, "passes over the training records, may be fractional (max_steps overrides it)",
                           **POSITIVE)
    max_steps: int | None = option(None, "optimizer steps (none: from epochs)", **AT_LEAST_1)
    seed: int = option(0, "seed of every random choice (packing order, FCM masks, ...), 0 to 2**32 - 1",
                       **AT_LEAST_0)
    # evaluation, checkpoints, logging
    eval_every: int = option(500, "evaluate every N optimizer steps, and at the end", **AT_LEAST_1)
    eval_records: int | None = option(2000, "evaluate on at most this many records (none: all)", **AT_LEAST_1)
    save_every: int = option(500, "write a checkpoint every N optimizer steps, and at the end", **AT_LEAST_1)
    keep_last: int = option(2, "complete checkpoints kept", **AT_LEAST_1)
    output_dir: str = option("runs/coh", "checkpoints, final/, metrics.jsonl and the loss curves", flags=("-o",),
                             metavar="DIR")
    resume: bool = option(True, "continue from the newest complete checkpoint in output_dir")
    resume_with_changes: bool = option(False, "continue from a checkpoint trained with other settings (data, "
                                              "mode, lr, ...): the new ones apply from its step on, and coh.json "
                                              "records the change. Without it such a checkpoint is refused")
    report_to: list[str] = option(help=f"where metrics go besides metrics.jsonl: {', '.join(REPORT_TO)} (a comma "
                                       "list)", factory=lambda: ["tensorboard"], choices=REPORT_TO,
                                  expected=f"a list of names ({', '.join(REPORT_TO)})")
    log_every: int = option(10, "log metrics every N optimizer steps", **AT_LEAST_1)
    progress: bool = option(True, "a progress bar on a terminal")
    # the Hub
    push_to_hub: str | None = option(None, "after training, upload final/ (with its model card) to this Hub model "
                                           "repository, created if missing", metavar="OWNER/NAME")
    hub_private: bool = option(False, "create the --push-to-hub repository private")
    hub_token_env: str = option("HF_TOKEN", "environment variable holding the Hub token for --push-to-hub (unset: "
                                            "the token of `hf auth login`)", metavar="VAR")

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse incompatible or impossible settings before any compute is spent: each option's
        type, finite numbers, choices and ranges (as declared on the fields), then the rules that
        tie options together."""
        if isinstance(self.report_to, list):  # tracker names in any case, as `coh.train.metrics` reads them
            self.report_to = [t.lower() if isinstance(t, str) else t for t in self.report_to]
        try:
            check_fields(self)
        except OptionError as e:
            raise ValueError(_in_train_words(e)) from None
        if self.seed >= 2**32:
            raise ValueError(f"seed must be below 2**32, got {self.seed}")
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
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")
        if self.push_to_hub:
            from coh.hub import check_repo_id

            check_repo_id(self.push_to_hub)

    @property
    def fcm(self) -> bool:
        return self.fcm_max_ratio > 0

    @staticmethod
    def load(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
        """A recipe file (YAML) under ``key=value`` overrides (values parsed as YAML: ``lr=2e-5``,
        ``report_to=[none]``), for Python callers. Unknown keys, YAML that does not parse and values
        of the wrong type are ``ValueError``s naming the file or the override."""
        return options_from_args(TrainConfig, argparse.Namespace(_recipe=path, _overrides=overrides or []))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _in_train_words(e: OptionError) -> str:
    """An option refused by ``check_fields``, in the words ``coh train`` used before coh.options
    (docs/reliability.md, tests/train/bad_options.py): "lr must be positive, got 0"."""
    if e.problem == "finite":
        return f"{e.name} must be a finite number, got {e.value}"
    if e.problem == "choice" and isinstance(e.value, list):
        return f"{e.name}: unknown {sorted(set(e.value) - set(e.choices))}; choose from {list(e.choices)}"
    if e.problem == "choice":
        return f"{e.name} must be one of {list(e.choices)}, got {e.value!r}"
    if e.problem == "range":
        low, high, low_open, _ = e.bounds
        if high is not None:
            words = f"in {e.span}"
        else:
            words = "positive" if low == 0 and low_open else f"{'above' if low_open else 'at least'} {low}"
        nullable = type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[e.name])
        return f"{e.name} must be {words}{' (or null)' if nullable else ''}, got {e.value}"
    return str(e)  # a wrong type: "option lr: expected a number, got str 'fast'"
