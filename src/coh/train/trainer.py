"""The ``coh train`` loop, top to bottom: check, load, pack, step, log, evaluate, save.

A loop of our own on ``accelerate`` (devices, DDP/FSDP, mixed precision, no-sync accumulation)
with torch's AdamW and transformers' cosine schedule, rather than transformers' ``Trainer``,
for three reasons: the data position must resume in O(1) (``Trainer`` replays the dataloader to
skip consumed batches); an optimizer step may combine two streams normalised separately
(feedback tokens, and lambda x pretraining tokens); and the loss is normalised by the target
tokens of the whole step, which the packing plan knows before the step starts.

Every random choice is derived from (seed, step): the micro-batch order from the epoch plan, the
FCM masks from a generator seeded per micro-batch. A resumed run therefore repeats exactly what
an uninterrupted run does.

The pieces, in the order the loop uses them: ``preflight`` (options, paths, the checkpoint to
resume from), ``setup`` (tokenizer, model, LoRA, optimizer, pretraining streams), ``data``
(records, tokens, the packing plan per epoch), ``step`` (one optimizer step's forwards and
backwards), ``accounting`` (what is logged), ``evaluation``, ``checkpoint``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from coh.card import RunFacts, run_facts, write_training_card
from coh.cohjson import CohJson
from coh.data.tokenize import RecordTokenizer
from coh.train.accounting import LogWindow
from coh.train.checkpoint import (
    load_trainer_state,
    publish_folder,
    save_checkpoint,
    save_model_folder,
    temporary_folder,
)
from coh.train.config import TrainConfig
from coh.train.data import TOKEN_CACHE, TrainingEpochs
from coh.train.distributed import clip_grad_norm, is_sharded, shard_model
from coh.train.evaluation import evaluate, load_eval_set
from coh.train.loss import check_loss_kernel
from coh.train.packing import collate_packed, dense_attention
from coh.train.preflight import TrainingError, preflight
from coh.train.setup import (
    add_lora,
    apply_optimizer_settings,
    check_position_resets,
    compile_decoder_layers,
    load_model,
    load_tokenizer,
    make_optimizer,
    pretrain_streams,
    run_coh_json,
)
from coh.train.step import accumulate_gradients, pretrain_slots

# The loop calls load_model, accumulate_gradients and save_model_folder by their names in this
# module: the hardening tests replace them here to prove what happens before any compute.


class NonFiniteError(TrainingError):
    """A loss, gradient norm or weight that is NaN or infinite: training stops before it is saved."""


def train(cfg: TrainConfig) -> dict:
    """Train as configured; returns the final evaluation. Stops with ``NonFiniteError`` at the
    first NaN or infinite loss or gradient norm (before the update) or weight (before saving)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

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
                            "use --attention sdpa on a CPU")
    try:
        check_loss_kernel(cfg.loss_kernel, accelerator.device)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    out_dir = Path(cfg.output_dir)
    tokenizer = load_tokenizer(cfg)
    rtok = RecordTokenizer(tokenizer)
    epochs = TrainingEpochs(train_path, cfg.mode, rtok, cfg.micro_batch_tokens, cfg.max_length, cfg.overlong,
                            cfg.seed, cfg.resample_each_epoch, out_dir / TOKEN_CACHE, cfg.tokenizer or cfg.model)
    records, data, plan = epochs.get(0)
    eval_set = load_eval_set(cfg, eval_path, rtok) if eval_path is not None else None

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
    split_sequences = dense_attention(model)  # see coh.train.packing: sequences as long as the longest record
    if cfg.lora_r:
        model = add_lora(model, cfg, resume_from)
    if cfg.compile:  # before FSDP wraps the layers, as torchtitan orders it
        compile_decoder_layers(model)
    if fsdp:
        model = shard_model(model, accelerator.device, accelerator.num_processes, cfg.dtype == "bfloat16")
    pretrain, pretrain_eval = pretrain_streams(cfg, tokenizer, (accelerator.process_index, accelerator.num_processes))
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
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
    coh_info = run_coh_json(cfg, run, records, rtok)
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
    window = LogWindow()
    bar = ProgressBar(total_steps, initial=start_step, enabled=main, shown=cfg.progress)
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
            batches = [collate_packed([(data.input_ids[i], data.loss_mask[i]) for i in b] or [([0], [0])],
                                      split_sequences) for b in mine]
            pt_batches = []
            if pretrain is not None:
                n_pt = 1 if cfg.pretrain_mode == "step" else pretrain_slots(step, cfg)
                pt_batches = [pretrain.next_batch(cfg.micro_batch_tokens, split_sequences) for _ in range(n_pt)]
            fb_targets = sum(data.targets(i) for b in bins for i in b)  # the whole step, every process
            pt_targets = int(accelerator.reduce(torch.tensor(sum(int(b["target_mask"].sum()) for b in pt_batches),
                                                             device=accelerator.device), "sum")) if pretrain else 0
            work = [(b, "feedback", bin_) for b, bin_ in zip(batches, mine)] + [(b, "pretrain", None) for b in pt_batches]
            losses = []
            for result, stream, bin_, batch in accumulate_gradients(model, work, cfg, step, fb_targets, pt_targets,
                                                                    accelerator):
                window.add(result, stream, bin_, data, batch)
                losses.append(float(result.loss_sum.detach()))
            grad_norm = clip_grad_norm(model, accelerator, cfg.max_grad_norm)
            done = step + 1
            _stop_if_not_finite(done, losses, grad_norm, cfg, accelerator, last_checkpoint)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if done % cfg.log_every == 0 or done == total_steps:
                values = window.values(accelerator)
                values.update({"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                               "train/epoch": done / steps_per_epoch, "perf/peak_memory_gb": peak_memory_gb()})
                if peak_flops:  # GPUs only: per device, mean record length as the attention span
                    values["perf/mfu"] = mfu(values["perf/tokens_per_s"] / world, flops_token, peak_flops)
                log.log(done, values)
                bar.update(done, values)
                window.reset()
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
    except BaseException:  # a stopped run keeps its metrics and TensorBoard events up to the stop
        bar.close()
        log.close()
        raise
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        facts = run_facts(train_path, run.fingerprint, records, final_metrics, out_dir)
        save_final(out_dir, accelerator, model, tokenizer, coh_info, last_checkpoint, cfg, facts)
        log.close()
        png = plot_loss_curves(out_dir / "metrics.jsonl", out_dir / "loss_curves.png")
        print(f"model saved to {out_dir / 'final'}" + (f"; loss curves in {png}" if png else ""))
        if cfg.push_to_hub:
            from coh.hub import push_folder

            push_folder(out_dir / "final", cfg.push_to_hub, private=cfg.hub_private, token_env=cfg.hub_token_env)
    return final_metrics


def save_final(out_dir: Path, accelerator, model, tokenizer, coh_info: CohJson, last_checkpoint: Path | None,
               cfg: TrainConfig, facts: RunFacts | None = None) -> None:
    """``final/`` (and with LoRA ``final-merged/``), each written under a temporary name and renamed
    after a ``COMPLETE`` marker like the checkpoints: an earlier run's final/ stays whole until the
    new one is. Under FSDP it is exported from the last checkpoint's shards, never gathered in memory.
    Each gets a model card (``coh.card``) from ``facts``."""
    facts = facts or RunFacts()
    tmp = temporary_folder(out_dir / "final")
    if is_sharded(model):
        from coh.convert.sharded import export_sharded_checkpoint

        export_sharded_checkpoint(last_checkpoint, tmp)
    else:
        save_model_folder(tmp, accelerator.unwrap_model(model), tokenizer, coh_info)
    write_training_card(tmp, out_dir / "final", coh_info, facts, adapter=bool(cfg.lora_r))
    publish_folder(tmp, out_dir / "final")
    if cfg.lora_r and cfg.lora_merge:  # a plain HF model as well, for tools that do not read adapters
        tmp = temporary_folder(out_dir / "final-merged")
        save_model_folder(tmp, accelerator.unwrap_model(model).merge_and_unload(), tokenizer, coh_info)
        write_training_card(tmp, out_dir / "final-merged", coh_info, facts, adapter=False)
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
             "check the data, then run again with --resume-with-changes to continue from it."
             if last_checkpoint is not None else
             f"No checkpoint was written before it (save_every={cfg.save_every}); lower lr (now {cfg.lr:g}) or "
             "max_grad_norm, or check the data, and start again.")
    return f"Nothing of this step was saved. {where}"
