"""Training the compared systems, each through the tool a user of that method would pick.

- ``coh``, ``conditional-sft``, ``sft``: ``coh train`` in that mode (``coh.train.trainer.train``).
- ``dpo``: TRL's ``DPOTrainer`` (peft LoRA when the recipe uses LoRA; TRL then scores the
  reference with the adapter disabled), with the same optimizer, schedule, steps and about the
  same tokens per step as the ``coh train`` runs.
- the scorer, unless the recipe names one: a reward model trained by TRL's ``RewardTrainer`` on
  the scorer rows, from the same base model.

The TRL runs use the prompt text ``coh train``'s ``sft`` mode trains on (``User: ...``, no
feedback phrase), so DPO, SFT and the base model are evaluated after the same plain prompt.
Every run ends with a plain HF folder (LoRA merged) that ``coh eval`` and ``coh serve`` load.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from coh.compare.config import CompareConfig, MethodSpec


# -- shared data ------------------------------------------------------------------------------------
def prompt_text(context, phrases, eos_token: str, feedback: str | None = None) -> str:
    """The inference prompt as text, exactly as records render it (an EOS token after each
    earlier assistant turn): what ``coh.eval.generations.prompt_ids`` tokenizes."""
    from coh.data.render import prompt_segments

    return "".join(s.text + (eos_token if s.eos else "") for s in prompt_segments(context, phrases, feedback))


def preference_rows(examples: Sequence, phrases, eos_token: str) -> list[dict]:
    """TRL's standard preference format: ``prompt`` (the plain prompt), ``chosen`` / ``rejected``
    (the replies after one space, as in records; TRL appends the EOS)."""
    return [{"prompt": prompt_text(ex.context, phrases, eos_token), "chosen": " " + ex.candidates[0].text.lstrip(),
             "rejected": " " + ex.candidates[-1].text.lstrip()} for ex in examples]


def conversation_rows(examples: Sequence) -> list[dict]:
    """TRL's conversational implicit-prompt format, for the reward model: it is trained on the
    conversation through the chat template, as ``coh.eval.scorers.RewardModelScorer`` scores it."""
    def messages(ex, reply):
        return [{"role": t.role, "content": t.text} for t in ex.context] + [{"role": "assistant", "content": reply}]

    return [{"chosen": messages(ex, ex.candidates[0].text), "rejected": messages(ex, ex.candidates[-1].text)}
            for ex in examples]


# -- coh train ---------------------------------------------------------------------------------------
def train_coh_mode(cfg: CompareConfig, method: MethodSpec, seed: int, data_dir: Path, out: Path, base: str,
                   plain_text: Path) -> dict:
    """``coh train`` in the method's mode; returns what it spent (steps, tokens, seconds)."""
    from coh.train.metrics import read_metrics
    from coh.train.trainer import train

    tc = cfg.train_config(method, seed, str(data_dir), str(out), base, str(plain_text))
    t0 = time.perf_counter()
    train(tc)
    rows = read_metrics(out / "metrics.jsonl")
    return {"steps": tc.max_steps, "tokens": int(sum(r.get("perf/tokens", 0) for r in rows)),
            "seconds": round(time.perf_counter() - t0, 1), "model": str(final_model(out, cfg))}


def final_model(out: Path, cfg: CompareConfig) -> Path:
    """The plain HF folder a run ends with (LoRA merged into the base)."""
    return out / ("final-merged" if cfg.lora_r else "final")


# -- TRL ---------------------------------------------------------------------------------------------
def _lora(cfg: CompareConfig, task_type: str, modules_to_save: list[str] | None = None):
    if not cfg.lora_r:
        return None
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, task_type=task_type,
                      target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                      modules_to_save=modules_to_save)


def _common_args(cfg: CompareConfig, out: Path, seed: int, steps: int, lr: float, batch: int, progress: bool) -> dict:
    """``transformers.TrainingArguments`` matching ``coh train``'s optimizer and schedule: AdamW with
    betas (0.9, 0.95), no weight decay, clip 1.0, warmup then cosine down to ``min_lr_ratio``."""
    import torch

    return dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                learning_rate=lr, lr_scheduler_type="cosine_with_min_lr",
                lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio}, warmup_steps=min(cfg.warmup_steps, steps),
                adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, seed=seed, data_seed=seed,
                logging_steps=max(1, steps // 50), save_strategy="steps", save_steps=max(1, steps // 4),
                save_total_limit=1, report_to="none", disable_tqdm=not progress, remove_unused_columns=False,
                bf16=cfg.dtype == "bfloat16", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                gradient_checkpointing=False)  # TRL turns it on by default; coh train does not use it either


def _pairs_per_step(cfg: CompareConfig, rows: list[dict], tokenizer, conversational: bool) -> tuple[int, float]:
    """Pairs per optimizer step that make about ``tokens_per_step`` tokens (both sequences of a
    pair counted, as packed ``coh train`` steps count them), and the mean tokens of a pair."""
    if conversational:
        lengths = [len(tokenizer.apply_chat_template(r[k], tokenize=True, return_dict=True)["input_ids"])
                   for r in rows for k in ("chosen", "rejected")]
    else:
        texts = [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")]
        lengths = [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]  # + the EOS TRL appends
    pair = 2 * sum(lengths) / max(1, len(lengths))
    return max(1, round(cfg.tokens_per_step / pair)), pair


class _MetricsLog:
    """A ``transformers`` callback that writes TRL's logs to ``metrics.jsonl`` through ``coh train``'s
    ``RunLog`` (keys ``train/<name>``), so every run's loss curves read the same way."""

    def __new__(cls, out: Path):
        from transformers import TrainerCallback

        from coh.train.metrics import RunLog

        class Callback(TrainerCallback):
            def __init__(self):
                self.log = RunLog(out, [], resume=(out / "metrics.jsonl").exists())

            def on_train_begin(self, args, state, control, **kwargs):
                self.log.truncate_after(state.global_step)  # resumed: drop what came after the checkpoint

            def on_log(self, args, state, control, logs=None, **kwargs):
                values = {f"train/{k}": float(v) for k, v in (logs or {}).items()
                          if isinstance(v, (int, float)) and not k.startswith("train_")}
                if values:
                    self.log.log(state.global_step, values)

            def on_train_end(self, args, state, control, **kwargs):
                self.log.close()

        return Callback()


def _checkpoint(out: Path) -> bool:
    return any(out.glob("checkpoint-*"))


def _quiet(trainer):
    """Without progress bars, transformers prints every log dict: metrics.jsonl has them."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def train_dpo(cfg: CompareConfig, method: MethodSpec, seed: int, examples: Sequence, out: Path, base: str,
              progress: bool) -> dict:
    """TRL ``DPOTrainer`` on the policy pairs; returns what it spent. Resumes from its own checkpoints."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    from coh.cohjson import CohJson
    from coh.data.phrases import DEFAULT_PHRASES, phrases_for
    from coh.models import load_tokenizer
    from coh.train.checkpoint import save_model_folder

    tokenizer = load_tokenizer(base)
    phrases = phrases_for(cfg.kind, DEFAULT_PHRASES)
    rows = preference_rows(examples, phrases, tokenizer.eos_token)
    batch, pair_tokens = _pairs_per_step(cfg, rows, tokenizer, conversational=False)
    options = {"beta": 0.1, **method.dpo}
    args = DPOConfig(**_common_args(cfg, out, seed, cfg.steps, cfg.lr, batch, progress), max_length=None,
                     model_init_kwargs={"dtype": "float32"}, **options)
    trainer = _quiet(DPOTrainer(model=base, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                processing_class=tokenizer, peft_config=_lora(cfg, "CAUSAL_LM"),
                                callbacks=[_MetricsLog(out)]))
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=_checkpoint(out) or None)
    seconds = time.perf_counter() - t0
    model = trainer.model.merge_and_unload() if cfg.lora_r else trainer.model
    info = CohJson(phrases=phrases, mode="dpo", training={"dpo": {**options, "pairs_per_step": batch}, "seed": seed})
    save_model_folder(final_model(out, cfg), model, tokenizer, info)
    tokens = int(trainer.state.log_history[-2].get("num_tokens", 0)) if len(trainer.state.log_history) > 1 else 0
    return {"steps": cfg.steps, "pairs_per_step": batch, "mean_pair_tokens": round(pair_tokens, 1),
            "tokens": tokens or round(cfg.steps * batch * pair_tokens), "seconds": round(seconds, 1),
            "model": str(final_model(out, cfg))}


def train_reward_model(cfg: CompareConfig, examples: Sequence, out: Path, base: str, seed: int,
                       progress: bool) -> dict:
    """TRL ``RewardTrainer`` on the scorer rows' pairs; the merged model goes to ``out/model``."""
    import datasets
    from trl import RewardConfig, RewardTrainer

    from coh.models import load_tokenizer

    tokenizer = load_tokenizer(base)
    rows = conversation_rows(examples)
    batch, pair_tokens = _pairs_per_step(cfg, rows, tokenizer, conversational=True)
    batch = max(1, round(batch * cfg.scorer.tokens_per_step / cfg.tokens_per_step))
    args = RewardConfig(**_common_args(cfg, out, seed, cfg.scorer.steps, cfg.scorer.lr or cfg.lr, batch, progress),
                        max_length=None, model_init_kwargs={"dtype": "float32"})
    trainer = _quiet(RewardTrainer(model=base, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                   processing_class=tokenizer, peft_config=_lora(cfg, "SEQ_CLS", ["score"]),
                                   callbacks=[_MetricsLog(out)]))
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=_checkpoint(out) or None)
    model = trainer.model.merge_and_unload() if cfg.lora_r else trainer.model
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return {"steps": cfg.scorer.steps, "pairs_per_step": batch, "train_pairs": len(rows),
            "epochs": round(cfg.scorer.steps * batch / max(1, len(rows)), 2), "mean_pair_tokens": round(pair_tokens, 1),
            "seconds": round(time.perf_counter() - t0, 1), "model": str(out / "model"),
            "lr": cfg.scorer.lr or cfg.lr}
