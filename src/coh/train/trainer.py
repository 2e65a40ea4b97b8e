"""The ``coh train`` loop, top to bottom: load, check, pack, step, evaluate, save.

A loop of our own on ``accelerate`` (devices, DDP/FSDP, mixed precision, no-sync accumulation)
with torch's AdamW and transformers' cosine schedule, rather than transformers' ``Trainer``,
for three reasons: the data position must resume in O(1) (``Trainer`` replays the dataloader to
skip consumed batches); an optimizer step may combine two streams normalised separately
(feedback tokens, and lambda x pretraining tokens); and the loss is normalised by the target
tokens of the whole step, which the packing plan knows before the step starts.

Every random choice is derived from (seed, step): the micro-batch order from the epoch plan, the
FCM masks from a generator seeded per micro-batch. A resumed run therefore repeats exactly what
an uninterrupted run does.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from coh import models
from coh.cohjson import CohJson
from coh.data.phrases import PhraseSet
from coh.data.records import FeedbackRecord
from coh.data.tokenize import RecordTokenizer
from coh.eval.preference import pairs_from_records, preference_accuracy
from coh.train.checkpoint import (
    RESUME_MAY_CHANGE,
    complete_checkpoints,
    config_changes,
    data_fingerprint,
    load_trainer_state,
    publish_folder,
    save_checkpoint,
    save_model_folder,
    temporary_folder,
)
from coh.train.config import TrainConfig
from coh.train.data import (
    TokenizedSet,
    TrainingEpochs,
    for_mode,
    phrases_of,
    read_training_records,
    records_file,
    tokenize_set,
)
from coh.train.distributed import clip_grad_norm, gradient_sync, is_sharded, shard_model
from coh.train.loss import target_loss
from coh.train.masks import fcm_attention_mask
from coh.train.packing import collate_packed, dense_attention, pack_documents


class TrainingError(ValueError):
    """A problem that stops training with a message: bad paths, options, model or data found
    before training starts, or (``NonFiniteError``) non-finite numbers during it."""


class NonFiniteError(TrainingError):
    """A loss, gradient norm or weight that is NaN or infinite: training stops before it is saved."""


# -- loading and checks ------------------------------------------------------------------------------
def load_tokenizer(cfg: TrainConfig):
    name = cfg.tokenizer or cfg.model
    try:
        return models.load_tokenizer(name, cfg.trust_remote_code, f"{'tokenizer' if cfg.tokenizer else 'model'} {name}")
    except ValueError as e:
        raise TrainingError(str(e)) from None


def load_model(name: str, cfg: TrainConfig):
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


def check_position_resets(model) -> None:
    """:func:`coh.models.check_position_resets`, as a ``TrainingError``."""
    try:
        models.check_position_resets(model)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def load_eval(cfg: TrainConfig, path: Path, tokenizer: RecordTokenizer) -> TokenizedSet:
    """Held-out records (at most ``eval_records``); too-long ones are split so nothing errors mid-run."""
    records = for_mode(read_training_records(path), cfg.mode)[: cfg.eval_records or None]
    if not records:
        raise TrainingError(f"{path}: no eval records for mode '{cfg.mode}'")
    data, _, _ = tokenize_set(records, tokenizer, cfg.max_length, "split")
    return data


# -- before anything is loaded ---------------------------------------------------------------------------
@dataclass
class RunPlan:
    """What ``preflight`` found: the records files, the checkpoint to resume from (and the settings
    that changed since it), the history of resumes for coh.json, and notes for the console."""

    train_path: Path
    eval_path: Path | None
    fingerprint: dict
    resume_from: Path | None = None
    changes: dict = field(default_factory=dict)
    resumed: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def preflight(cfg: TrainConfig) -> RunPlan:
    """Everything that can be wrong with the options, paths, output folder and the checkpoint to
    resume from, found before a tokenizer or model is loaded. Raises ``TrainingError`` (or
    ``FileNotFoundError`` for a missing records file) with a message that says what to do."""
    from coh.train.metrics import check_trackers
    from coh.train.pretrain import JSONL_SUFFIXES, TEXT_SUFFIXES

    cfg.check()
    if not cfg.model or not cfg.train_data:
        raise TrainingError("give model=NAME_OR_PATH and train_data=RECORDS (a `coh data build` folder or .jsonl)")
    try:
        models.check_model_folder(cfg.model)
        role = "tokenizer" if cfg.tokenizer else "model"
        models.check_tokenizer_folder(cfg.tokenizer or cfg.model, f"{role} {cfg.tokenizer or cfg.model}", role)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    train_path = records_file(cfg.train_data, "train")
    notes = []
    if cfg.eval_data:
        eval_path = records_file(cfg.eval_data, "eval", "eval_data")
        if eval_path.stat().st_size == 0:
            raise TrainingError(f"eval_data {eval_path}: the file is empty")
    else:
        built = Path(cfg.train_data) / "eval.jsonl"
        eval_path = built if Path(cfg.train_data).is_dir() and built.exists() and built.stat().st_size else None
        if eval_path is None:
            notes.append("no evaluation: " + (f"{built} is empty" if built.exists() else
                                              "give eval_data=RECORDS, or a `coh data build` folder with eval.jsonl"))
    for option in ("pretrain_data", "pretrain_eval_data"):
        source = getattr(cfg, option)
        if source and source != "c4" and not source.startswith("hub:") and not Path(source).exists() and (
                source.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES) or models.looks_like_path(source)):
            raise TrainingError(f"{option} {source}: no such file or folder")
    try:
        check_trackers(cfg.report_to)
    except ImportError as e:
        raise TrainingError(str(e)) from None
    out = Path(cfg.output_dir)
    existing = next(p for p in (out, *out.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise TrainingError(f"output_dir {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"output_dir {out}: {existing} is not writable")
    plan = RunPlan(train_path, eval_path, data_fingerprint(train_path), notes=notes)
    checkpoints = complete_checkpoints(out) if cfg.resume and out.is_dir() else []
    if checkpoints:
        plan.resume_from = checkpoints[-1]
        try:
            saved = CohJson.read(plan.resume_from)
            if saved is None:
                raise ValueError(f"{plan.resume_from}: no coh.json")
        except ValueError as e:
            raise TrainingError(f"cannot read the checkpoint's settings ({e}); resume=false starts afresh, or use "
                                "another output_dir") from None
        plan.changes = config_changes(saved.training, cfg.to_dict(), saved.data, plan.fingerprint)
        refused = {k: v for k, v in plan.changes.items() if k not in RESUME_MAY_CHANGE}
        if refused and not cfg.resume_with_changes:
            listed = "\n".join(f"  {k}: {old!r} (checkpoint) -> {new!r} (now)" for k, (old, new) in refused.items())
            raise TrainingError(
                f"output_dir {out} holds {plan.resume_from.name} of a run with other settings:\n{listed}\n"
                "Continuing it would silently mix the two. Use another output_dir for a new run, put the "
                "checkpoint's settings back, or give resume_with_changes=true to continue from it with the new "
                "settings (coh.json records the change).")
        step = json.loads((plan.resume_from / "coh_state.json").read_text(encoding="utf-8"))["step"]
        plan.resumed = [*saved.resumed, {
            "step": step, "checkpoint": plan.resume_from.name,
            "changes": {k: {"checkpoint": old, "now": new} for k, (old, new) in plan.changes.items()}}]
    return plan


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


def nonfinite_weights(model, accelerator) -> int:
    """Trainable weights that are NaN or infinite, over every process (FSDP: each process's shards).
    One float64 sum per tensor finds them (a NaN or inf makes the sum non-finite) without a
    tensor-sized temporary; only then are they counted one by one."""
    sharded = accelerator.num_processes > 1 and is_sharded(model)
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if p.requires_grad]
    sums = torch.stack([p.detach().sum(dtype=torch.float64) for p in local]) if local else torch.zeros(1)
    suspect = (~torch.isfinite(sums)).sum().to(accelerator.device)
    if sharded:  # every process takes the same branch below: the count is a collective too
        suspect = accelerator.reduce(suspect, "sum")
    if not int(suspect):
        return 0
    bad = sum(((~torch.isfinite(p.detach())).sum() for p in local), torch.zeros((), dtype=torch.int64))
    bad = bad.to(accelerator.device)
    return int(accelerator.reduce(bad, "sum") if sharded else bad)


def _nonfinite_advice(cfg: TrainConfig, last_checkpoint: Path | None) -> str:
    where = (f"The last good checkpoint is {last_checkpoint}; lower lr (now {cfg.lr:g}) or max_grad_norm, or "
             "check the data, then run again with resume_with_changes=true to continue from it."
             if last_checkpoint is not None else
             f"No checkpoint was written before it (save_every={cfg.save_every}); lower lr (now {cfg.lr:g}) or "
             "max_grad_norm, or check the data, and start again.")
    return f"Nothing of this step was saved. {where}"


# -- the loop ------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, _stop_after: int | None = None) -> dict:
    """Train as configured; returns the final evaluation. ``_stop_after`` (tests) raises right
    after that step's checkpoint is written, as a crash would. Stops with ``NonFiniteError`` at
    the first NaN or infinite loss or gradient norm (before the update) or weight (before saving)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from coh.train.metrics import (
        ProgressBar,
        RunLog,
        device_peak_flops,
        flops_per_token,
        mfu,
        peak_memory_gb,
        plot_loss_curves,
    )

    # Everything that can be wrong with paths, options and the checkpoint is found before any model is loaded.
    run = preflight(cfg)
    train_path, eval_path, resume_from = run.train_path, run.eval_path, run.resume_from
    set_seed(cfg.seed)
    fsdp = cfg.distributed == "fsdp"
    # cpu=True on machines without CUDA: accelerate then runs several processes over gloo (MULTI_CPU).
    # bf16 is autocast in `step_loss` (or FSDP's own mixed precision), not accelerate's setting: that
    # is process-wide state, and one process may train twice (the demo, tests) with different dtypes.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if cfg.attention == "flex_attention" and accelerator.device.type == "cpu":
        raise TrainingError("attention flex_attention trains on GPUs only (torch has no CPU backward for it): "
                            "use attention=sdpa on a CPU")
    out_dir = Path(cfg.output_dir)
    tokenizer = load_tokenizer(cfg)
    rtok = RecordTokenizer(tokenizer)
    epochs = TrainingEpochs(train_path, cfg.mode, rtok, cfg.micro_batch_tokens, cfg.max_length, cfg.overlong,
                            cfg.seed, cfg.resample_each_epoch)
    records, data, plan = epochs.get(0)
    eval_set = None
    if eval_path is not None:
        pairs = pairs_from_records(read_training_records(eval_path)[: cfg.eval_records or None])
        eval_set = prepare_eval(load_eval(cfg, eval_path, rtok), pairs, rtok, cfg.micro_batch_tokens)

    world = accelerator.num_processes
    per_step = cfg.gradient_accumulation_steps * world
    steps_per_epoch = math.ceil(len(plan.bins) / per_step)  # of epoch 0; resampled epochs may differ a little
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    resume_step = run.resumed[-1]["step"] if resume_from is not None else 0
    if resume_step > total_steps:
        raise TrainingError(f"output_dir {out_dir} holds {resume_from.name}, past the {total_steps} steps of this "
                            "run: raise max_steps (or epochs), or use another output_dir")
    # Under FSDP a checkpoint holds shards, with LoRA only the adapter: load the base model, then
    # read the shards into it or put the adapter on it.
    from_checkpoint = resume_from is not None and not fsdp and not cfg.lora_r
    model = load_model(str(resume_from) if from_checkpoint else cfg.model, cfg)
    check_position_resets(model)
    split_rows = dense_attention(model)  # see coh.train.packing: rows as long as the longest record
    if cfg.lora_r:
        model = add_lora(model, cfg, resume_from)
    if fsdp:
        model = shard_model(model, accelerator.device, accelerator.num_processes, cfg.dtype == "bfloat16")
    pretrain, pretrain_eval = _pretrain_streams(cfg, tokenizer, (accelerator.process_index, accelerator.num_processes))

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
    if not fsdp:
        model, optimizer = accelerator.prepare(model, optimizer)

    start_step, epoch, epoch_start = 0, 0, 0
    last_checkpoint = resume_from
    if resume_from is not None:
        state = load_trainer_state(resume_from, model, optimizer, scheduler, accelerator.process_index)
        start_step, epoch, epoch_start = state["step"], state["epoch"], state["epoch_start"]
        if pretrain is not None and state.get("pretrain") is not None:
            pretrain.load_state_dict(state["pretrain"])
        if run.changes:
            apply_optimizer_settings(optimizer, scheduler, cfg)
    # prompt_format tells `coh serve` how the model saw its context: the CoH text, or the chat template.
    # training: the settings in force from the last resume on; resumed: each resume and what changed at it.
    templated = any(rtok.uses_template(r) for r in records[:5000])
    coh_info = CohJson(phrases=replace(PhraseSet(), **phrases_of(records)), mode=cfg.mode,
                       prompt_format="chat-template" if templated else "coh", training=cfg.to_dict(),
                       data=run.fingerprint, resumed=run.resumed)
    log = RunLog(out_dir, cfg.report_to, cfg.to_dict(), resume=resume_from is not None, enabled=main)
    if resume_from is not None:
        log.truncate_after(start_step)
    if main:
        print(plan.report.describe())
        print(f"{len(data)} training records, {total_steps} optimizer steps ({steps_per_epoch} per epoch), "
              f"{per_step} micro-batches per step" + (f"; resuming from {resume_from.name}" if resume_from else ""))
        if run.changes:
            print(f"settings changed since {resume_from.name}: "
                  + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in run.changes.items()))
        for note in run.notes:
            print(note)

    _, data, plan = epochs.get(epoch)
    peak_flops = device_peak_flops()
    flops_token = flops_per_token(accelerator.unwrap_model(model).config, plan.report.tokens / max(1, len(data)))
    window: dict[str, float] = defaultdict(float)
    t_window = time.perf_counter()
    bar = ProgressBar(total_steps, initial=start_step, enabled=main)
    final_metrics: dict = {}
    try:
        for step in range(start_step, total_steps):
            model.train()
            if (step - epoch_start) * per_step >= len(plan.bins):  # an epoch's last step may be short
                epoch, epoch_start = epoch + 1, step
                _, data, plan = epochs.get(epoch)
            first = (step - epoch_start) * per_step
            bins = plan.bins[first : first + per_step]
            mine = bins[accelerator.process_index * cfg.gradient_accumulation_steps:][: cfg.gradient_accumulation_steps]
            # An epoch's last step may leave a process short: target-free micro-batches keep every process
            # running the same forwards and backwards, which DDP's and FSDP's collectives need.
            mine += [[]] * (cfg.gradient_accumulation_steps - len(mine))
            batches = [collate_packed([(data.input_ids[i], data.loss_mask[i]) for i in b] or [([0], [0])], split_rows)
                       for b in mine]
            pt_batches = []
            if pretrain is not None:
                n_pt = 1 if cfg.pretrain_mode == "step" else _ratio_slots(step, cfg)
                pt_batches = [pretrain.next_batch(cfg.micro_batch_tokens, split_rows) for _ in range(n_pt)]
            fb_targets = sum(data.targets(i) for b in bins for i in b)  # the whole step, every process
            pt_targets = int(accelerator.reduce(torch.tensor(sum(int(b["target_mask"].sum()) for b in pt_batches),
                                                             device=accelerator.device), "sum")) if pretrain else 0
            work = [(b, "feedback", bin_) for b, bin_ in zip(batches, mine)] + [(b, "pretrain", None) for b in pt_batches]
            losses = []
            for result, stream, bin_, batch in accumulate_gradients(model, work, cfg, step, fb_targets, pt_targets,
                                                                    accelerator):
                _account(window, result, stream, bin_, data, batch)
                losses.append(float(result.loss_sum.detach()))
            grad_norm = clip_grad_norm(model, accelerator, cfg.max_grad_norm)
            done = step + 1
            _stop_if_not_finite(done, losses, grad_norm, cfg, accelerator, last_checkpoint)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window["steps"] += 1
            if done % cfg.log_every == 0 or done == total_steps:
                elapsed = time.perf_counter() - t_window
                values = _window_values(_sum_over_processes(window, accelerator), elapsed)
                values.update({"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                               "train/epoch": done / steps_per_epoch, "perf/peak_memory_gb": peak_memory_gb()})
                if peak_flops:  # GPUs only: per device, mean record length as the attention span
                    values["perf/mfu"] = mfu(values["perf/tokens_per_s"] / world, flops_token, peak_flops)
                log.log(done, values)
                bar.update(done, values)
                window.clear()
                t_window = time.perf_counter()
            if eval_set is not None and (done % cfg.eval_every == 0 or done == total_steps):
                final_metrics = evaluate(model, eval_set, cfg, accelerator, pretrain_eval)
                log.log(done, final_metrics)
                if main:
                    bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in final_metrics.items()))
            if done % cfg.save_every == 0 or done == total_steps:
                bad = nonfinite_weights(model, accelerator)
                if bad:
                    raise NonFiniteError(f"step {done}: after the update, {bad} weights are NaN or infinite. "
                                         + _nonfinite_advice(cfg, last_checkpoint))
                state = {"step": done, "epoch": epoch, "epoch_start": epoch_start,
                         "pretrain": pretrain.state_dict() if pretrain else None}
                last_checkpoint = save_checkpoint(out_dir, done, model, tokenizer, optimizer, scheduler, state,
                                                  coh_info, cfg.keep_last, accelerator)
                if _stop_after is not None and done >= _stop_after:
                    raise RuntimeError(f"stopped after step {done} (test)")
    except BaseException:  # a stopped run keeps its metrics and TensorBoard events up to the stop
        bar.close()
        log.close()
        raise
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        save_final(out_dir, accelerator, model, tokenizer, coh_info, last_checkpoint, cfg)
        log.close()
        png = plot_loss_curves(out_dir / "metrics.jsonl", out_dir / "loss_curves.png")
        print(f"model saved to {out_dir / 'final'}" + (f"; loss curves in {png}" if png else ""))
    return final_metrics


def save_final(out_dir: Path, accelerator, model, tokenizer, coh_info: CohJson, last_checkpoint: Path | None,
               cfg: TrainConfig) -> None:
    """``final/`` (and with LoRA ``final-merged/``), each written under a temporary name and renamed
    after a ``COMPLETE`` marker like the checkpoints: an earlier run's final/ stays whole until the
    new one is. Under FSDP it is exported from the last checkpoint's shards, never gathered in memory."""
    tmp = temporary_folder(out_dir / "final")
    if is_sharded(model):
        from coh.convert.sharded import export_sharded_checkpoint

        export_sharded_checkpoint(last_checkpoint, tmp)
    else:
        save_model_folder(tmp, accelerator.unwrap_model(model), tokenizer, coh_info)
    publish_folder(tmp, out_dir / "final")
    if cfg.lora_r and cfg.lora_merge:  # a plain HF model as well, for tools that do not read adapters
        tmp = temporary_folder(out_dir / "final-merged")
        save_model_folder(tmp, accelerator.unwrap_model(model).merge_and_unload(), tokenizer, coh_info)
        publish_folder(tmp, out_dir / "final-merged")


def _stop_if_not_finite(step: int, losses: list[float], grad_norm: float, cfg: TrainConfig, accelerator,
                        last_checkpoint: Path | None) -> None:
    """Before step ``step``'s update: stop on every process at once if any process saw a NaN or
    infinite loss, or the (global) gradient norm is not finite."""
    local_bad = not all(math.isfinite(x) for x in losses)
    if accelerator.num_processes > 1:  # the losses are each process's own: agree, or the others would hang
        local_bad = bool(accelerator.reduce(torch.tensor(float(local_bad), device=accelerator.device), "sum"))
    if local_bad or not math.isfinite(grad_norm):
        found = (f"the loss is not finite (summed loss of each micro-batch: {losses}; gradient norm {grad_norm})"
                 if local_bad else f"the gradient norm is {grad_norm} (the loss was finite)")
        raise NonFiniteError(f"step {step}: {found}; stopped before the update. "
                             + _nonfinite_advice(cfg, last_checkpoint))


def accumulate_gradients(model, work: list, cfg: TrainConfig, step: int, fb_targets: int, pt_targets: int,
                         accelerator) -> list:
    """Forward and backward every micro-batch of one optimizer step; gradients are synchronised
    across processes on the last one only. ``work``: ``(batch, stream, record indices)`` with stream
    ``feedback`` or ``pretrain``. ``fb_targets`` / ``pt_targets``: target tokens of the whole step
    on every process. Returns ``(TargetLoss, stream, record indices, batch)`` per micro-batch."""
    world = accelerator.num_processes
    out = []
    for k, (batch, stream, bin_) in enumerate(work):
        batch = {key: v.to(accelerator.device) for key, v in batch.items()}
        mask = None
        if cfg.fcm and stream == "feedback":
            # From (seed, step, the micro-batch's place in the whole step) alone: exact resume, and the
            # same masks whatever the split between processes and accumulation.
            micro = accelerator.process_index * cfg.gradient_accumulation_steps + k
            micro_seed = (cfg.seed * 1_000_003 + step) * 1009 + micro
            mask = fcm_attention_mask(accelerator.unwrap_model(model), batch["position_ids"], cfg.fcm_min_ratio, cfg.fcm_max_ratio,
                                      seed=micro_seed, generator=torch.Generator().manual_seed(micro_seed))
        with gradient_sync(model, accelerator, sync=k == len(work) - 1):
            result = step_loss(model, batch, cfg, mask)
            # DDP averages gradients over processes: scale by the process count to keep sums.
            loss = _scaled_loss(result, stream, cfg, fb_targets, pt_targets, len(work) * world) * world
            accelerator.backward(loss)
        out.append((result, stream, bin_, batch))
    return out


def step_loss(model, batch: dict, cfg: TrainConfig, attention_mask: object = None):
    """``target_loss`` as configured: bf16 autocast for ``dtype=bfloat16`` (fp32 weights and
    optimizer; under FSDP its mixed precision does this instead), the chunked projection."""
    device_type = batch["input_ids"].device.type
    autocast = cfg.dtype == "bfloat16" and not is_sharded(model)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        return target_loss(model, batch, attention_mask, chunk=cfg.loss_chunk)


def _ratio_slots(step: int, cfg: TrainConfig) -> int:
    """Pretraining micro-batches for this step in ratio mode: the share ``pretrain_ratio`` of all
    micro-batches, spread evenly over the steps (Bresenham)."""
    per_step = cfg.gradient_accumulation_steps * cfg.pretrain_ratio / (1 - cfg.pretrain_ratio)
    return math.floor((step + 1) * per_step) - math.floor(step * per_step)


def _scaled_loss(result, stream: str, cfg: TrainConfig, fb_targets: int, pt_targets: int, n_micro: int
                 ) -> torch.Tensor:
    """This micro-batch's share of the step loss (see ``TrainConfig``: normalization, pretraining)."""
    if cfg.normalization == "row":
        per_row = result.loss_sum / max(1, result.targets)
        return per_row / n_micro * (cfg.pretrain_lambda if stream == "pretrain" and cfg.pretrain_mode == "step" else 1)
    if stream == "pretrain" and cfg.pretrain_mode == "step":
        return cfg.pretrain_lambda * result.loss_sum / max(1, pt_targets)
    if cfg.pretrain_mode == "ratio":
        return result.loss_sum / max(1, fb_targets + pt_targets)
    return result.loss_sum / max(1, fb_targets)


def _account(window: dict, result, stream: str, bin_: list[int] | None, data: TokenizedSet, batch: dict) -> None:
    """Add one micro-batch to the logging window: losses per stream and per source, token counts."""
    window["tokens"] += int((batch["record_index"] >= 0).sum())  # not the padding of split rows
    window["slots"] += batch["input_ids"].numel()
    if stream == "pretrain":
        window["pretrain_loss_sum"] += float(result.loss_sum.detach())
        window["pretrain_targets"] += result.targets
        return
    window["loss_sum"] += float(result.loss_sum.detach())
    window["targets"] += result.targets
    window["correct"] += result.correct
    for rec_index, nll in zip(bin_, result.per_record.tolist()):
        src = data.sources[rec_index]
        window[f"src_sum/{src}"] += nll
        window[f"src_n/{src}"] += data.targets(rec_index)


def _sum_over_processes(window: dict, accelerator) -> dict:
    """The logging window summed over processes (keys may differ: sources seen by each)."""
    if accelerator.num_processes == 1:
        return window
    from accelerate.utils import gather_object

    total: dict[str, float] = defaultdict(float)
    for part in gather_object([dict(window)]):
        for key, value in part.items():
            total[key] += value
    total["steps"] = window["steps"]  # steps are shared, not summed
    return total


def _window_values(window: dict, elapsed: float) -> dict[str, float]:
    values = {
        "train/loss": window["loss_sum"] / max(1, window["targets"]),
        "train/token_accuracy": window["correct"] / max(1, window["targets"]),
        "perf/tokens": window["tokens"],  # non-padding tokens in the window, all processes
        "perf/tokens_per_s": window["tokens"] / max(elapsed, 1e-9),
        "perf/loss_tokens_per_s": window["targets"] / max(elapsed, 1e-9),
        "perf/padding": 1 - window["tokens"] / max(1, window["slots"]),  # share of rows that is padding
    }
    if window.get("pretrain_targets"):
        values["train/pretrain_loss"] = window["pretrain_loss_sum"] / window["pretrain_targets"]
    for key in list(window):
        if key.startswith("src_sum/"):
            src = key.split("/", 1)[1]
            values[f"train/loss_{src}"] = window[key] / max(1, window[f"src_n/{src}"])
    return values


def _pretrain_streams(cfg: TrainConfig, tokenizer, shard: tuple[int, int]):
    """The training pretraining stream (this process's shard), and the eval stream whose first
    batches are the fixed pretraining eval set: ``pretrain_eval_data`` when given, else the start
    of the training text (which the model also trains on: say so in results)."""
    if not cfg.pretrain_data:
        return None, None
    from coh.train.pretrain import PretrainStream

    train_stream = PretrainStream(cfg.pretrain_data, tokenizer, cfg.max_length, seed=cfg.seed, shard=shard)
    eval_stream = PretrainStream(cfg.pretrain_eval_data or cfg.pretrain_data, tokenizer, cfg.max_length,
                                 seed=cfg.seed, shard=shard)
    return train_stream, eval_stream


# -- evaluation --------------------------------------------------------------------------------------
def _share(bins: list[list[int]], accelerator) -> list[list[int]]:
    """This process's bins, padded with empty ones so that every process runs as many forwards
    (FSDP gathers parameters in each)."""
    world = accelerator.num_processes
    mine = bins[accelerator.process_index :: world]
    return mine + [[]] * (-(-len(bins) // world) - len(mine))


@dataclass
class EvalSet:
    """Held-out records and preference pairs, tokenized and packed once for every evaluation.
    ``pairs`` holds (preferred, dispreferred) records interleaved: record 2k is preferred over 2k+1."""

    data: TokenizedSet
    bins: list[list[int]]
    pairs: TokenizedSet | None
    pair_bins: list[list[int]]


def prepare_eval(data: TokenizedSet, pairs: list[tuple[FeedbackRecord, FeedbackRecord]], rtok: RecordTokenizer,
                 capacity: int) -> EvalSet:
    bins = pack_documents([len(x) for x in data.input_ids], capacity)
    if not pairs:
        return EvalSet(data, bins, None, [])
    pair_data, _, _ = tokenize_set([rec for pair in pairs for rec in pair], rtok, 10**9, "error")
    lengths = [len(x) for x in pair_data.input_ids]
    return EvalSet(data, bins, pair_data, pack_documents(lengths, max(capacity, *lengths)))


def evaluate(model, ev: EvalSet, cfg: TrainConfig, accelerator, pretrain_eval=None, pretrain_batches: int = 4
             ) -> dict[str, float]:
    """Held-out feedback loss and token accuracy (no FCM, token-weighted: packing does not change
    it), per-source losses, pretraining loss, and preference accuracy: how often the preferred
    output gets a higher likelihood than the dispreferred one, both after the positive phrase."""
    model.eval()
    device = accelerator.device
    split_rows = dense_attention(model)
    totals: dict[str, float] = defaultdict(float)
    pref: dict[str, float] = {}
    data = ev.data
    with torch.no_grad():
        for b in _share(ev.bins, accelerator):
            pieces = [(data.input_ids[i], data.loss_mask[i]) for i in b] or [([0], [0])]
            batch = {k: v.to(device) for k, v in collate_packed(pieces, split_rows).items()}
            r = step_loss(model, batch, cfg)
            totals["loss_sum"] += float(r.loss_sum)
            totals["targets"] += r.targets
            totals["correct"] += r.correct
            for i, nll in zip(b, r.per_record.tolist()):
                totals[f"src_sum/{data.sources[i]}"] += nll
                totals[f"src_n/{data.sources[i]}"] += data.targets(i)
        if pretrain_eval is not None:
            state = pretrain_eval.state_dict()
            for _ in range(pretrain_batches):
                batch = {k: v.to(device) for k, v in pretrain_eval.next_batch(cfg.micro_batch_tokens, split_rows).items()}
                r = step_loss(model, batch, cfg)
                totals["pt_sum"] += float(r.loss_sum)
                totals["pt_n"] += r.targets
            pretrain_eval.load_state_dict(state)  # the same batches at every evaluation
        if ev.pairs is not None:
            nll = torch.zeros(len(ev.pairs), dtype=torch.float64)
            for b in _share(ev.pair_bins, accelerator):
                batch = collate_packed([(ev.pairs.input_ids[i], ev.pairs.loss_mask[i]) for i in b] or [([0], [0])],
                                       split_rows)
                r = step_loss(model, {k: v.to(device) for k, v in batch.items()}, cfg)
                if b:
                    nll[b] = r.per_record
            nll = accelerator.reduce(nll.to(device), "sum").cpu()
            by_sum, by_token = preference_accuracy(nll.tolist(), [ev.pairs.targets(i) for i in range(len(ev.pairs))])
            pref = {"preference_accuracy": sum(by_sum) / len(by_sum),
                    "preference_accuracy_per_token": sum(by_token) / len(by_token)}
    keys = sorted(totals)
    summed = accelerator.reduce(torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=device), "sum")
    totals.update(dict(zip(keys, summed.tolist())))
    out = {"eval/loss": totals["loss_sum"] / max(1, totals["targets"]),
           "eval/token_accuracy": totals["correct"] / max(1, totals["targets"])}
    for k in keys:
        if k.startswith("src_sum/"):
            src = k.split("/", 1)[1]
            out[f"eval/loss_{src}"] = totals[k] / max(1, totals[f"src_n/{src}"])
    if totals.get("pt_n"):
        out["eval/pretrain_loss"] = totals["pt_sum"] / totals["pt_n"]
    out.update({f"eval/{k}": v for k, v in pref.items()})
    model.train()
    return out
