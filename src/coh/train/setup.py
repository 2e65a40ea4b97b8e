"""What the training loop is built from: the tokenizer, the model (with LoRA adapters), the
optimizer and schedule, the pretraining streams, and the coh.json every checkpoint carries."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from coh import models
from coh.cohjson import CohJson
from coh.data.chat_template import with_base_template
from coh.data.phrases import PhraseSet
from coh.data.records import FeedbackRecord
from coh.data.tokenize import RecordTokenizer
from coh.train.config import TrainConfig
from coh.train.data import phrases_of
from coh.train.preflight import RunPlan, TrainingError


def load_tokenizer(cfg: TrainConfig):
    name = cfg.tokenizer or cfg.model
    try:
        tok = models.load_tokenizer(name, cfg.trust_remote_code, f"{'tokenizer' if cfg.tokenizer else 'model'} {name}")
    except ValueError as e:
        raise TrainingError(str(e)) from None
    return with_base_template(tok)  # from a CoH checkpoint: chat data through its base template


def load_model(name: str, cfg: TrainConfig):
    """The model of folder or hub id ``name`` for training (fp32 weights), with gradient
    checkpointing if asked for."""
    try:
        model = models.load_model(name, attention=cfg.attention, trust_remote_code=cfg.trust_remote_code,
                                  training=True)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def add_lora(model, cfg: TrainConfig, adapter: Path | None = None):
    """Wrap ``model`` with peft LoRA adapters: fresh ones as configured, or the trained ones of a
    checkpoint (``adapter``) when resuming. Only the adapters require gradients."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    targets = cfg.lora_target_modules
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")])
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules that the model does not have
        raise TrainingError(f"cannot add LoRA adapters ({targets}): {e}") from None


def compile_decoder_layers(model) -> int:
    """``torch.compile`` each decoder layer in place (``nn.Module.compile``: parameter names and
    checkpoints unchanged), as torchtitan does: one graph that every layer reuses, while the
    output-layer swap of ``coh.train.loss`` and the FCM masks stay outside compiled code. Returns
    the number of layers compiled."""
    from coh.train.distributed import decoder_layer_classes

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft keeps the model inside
    try:
        names = decoder_layer_classes(base)
    except ValueError as e:
        raise TrainingError(str(e).replace("cannot shard it layer by layer; use distributed=ddp",
                                           "cannot compile it layer by layer; leave compile off")) from None
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.compile(dynamic=True)  # packed micro-batches change shape every step: one graph for all
    return len(layers)


def check_position_resets(model) -> None:
    """:func:`coh.models.check_position_resets`, as a ``TrainingError``."""
    try:
        models.check_position_resets(model)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def make_optimizer(model, cfg: TrainConfig, total_steps: int):
    """AdamW over the trainable parameters (no weight decay on biases and norms: tensors of one
    dimension) and transformers' linear warmup then cosine down to ``min_lr_ratio`` x lr."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
    )
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, min(cfg.warmup_steps, total_steps), total_steps, min_lr_rate=cfg.min_lr_ratio
    )
    return optimizer, scheduler


def apply_optimizer_settings(optimizer, scheduler, cfg: TrainConfig) -> None:
    """After resuming with changed settings: the checkpoint's optimizer and scheduler state hold the
    old lr, betas and weight decay; put this run's in, with the lr of the current step under this
    run's schedule, so that what coh.json records is what runs."""
    for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
        group.update(initial_lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=decay)
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    lrs = [cfg.lr * schedule(scheduler.last_epoch) for schedule in scheduler.lr_lambdas]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next scheduler.step()


def pretrain_streams(cfg: TrainConfig, tokenizer, shard: tuple[int, int]):
    """The training pretraining stream (this process's shard), and the eval stream whose first
    batches are the fixed pretraining eval set: ``pretrain_eval_data`` when given, else the start
    of the training text (which the model also trains on: say so in results). ``(None, None)``
    without ``pretrain_data``."""
    if not cfg.pretrain_data:
        return None, None
    from coh.train.pretrain import PretrainStream

    train_stream = PretrainStream(cfg.pretrain_data, tokenizer, cfg.max_length, seed=cfg.seed, shard=shard)
    eval_stream = PretrainStream(cfg.pretrain_eval_data or cfg.pretrain_data, tokenizer, cfg.max_length,
                                 seed=cfg.seed, shard=shard)
    return train_stream, eval_stream


def run_coh_json(cfg: TrainConfig, run: RunPlan, records: list[FeedbackRecord], rtok: RecordTokenizer) -> CohJson:
    """The coh.json of this run's checkpoints. ``prompt_format`` tells `coh serve` how the model saw
    its context: the CoH text, or the chat template. ``training``: the settings in force from the
    last resume on; ``resumed``: each resume and what changed at it."""
    templated = any(rtok.uses_template(r) for r in records[:5000])
    return CohJson(phrases=replace(PhraseSet(), **phrases_of(records)), mode=cfg.mode,
                   prompt_format="chat-template" if templated else "coh", training=cfg.to_dict(),
                   data=run.fingerprint, resumed=run.resumed)
