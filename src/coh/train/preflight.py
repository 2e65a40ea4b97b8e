"""Before anything is loaded: every option, path, output folder and the checkpoint to resume
from, checked, so that a mistake costs seconds rather than a model load (or a day's run)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from coh import models
from coh.cohjson import CohJson
from coh.train.checkpoint import RESUME_MAY_CHANGE, complete_checkpoints, config_changes, data_fingerprint
from coh.train.config import TrainConfig
from coh.train.data import records_file


class TrainingError(ValueError):
    """A problem that stops training with a message: bad paths, options, model or data found
    before training starts, or (``NonFiniteError``) non-finite numbers during it."""


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
        raise TrainingError("give --model NAME_OR_PATH and --train-data RECORDS (a `coh data build` folder or .jsonl)")
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
                                              "give --eval-data RECORDS, or a `coh data build` folder with eval.jsonl"))
    for option in ("pretrain_data", "pretrain_eval_data"):
        source = getattr(cfg, option)
        if source and source != "c4" and not source.startswith("hub:") and not Path(source).exists() and (
                source.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES) or models.looks_like_path(source)):
            raise TrainingError(f"{option} {source}: no such file or folder")
    try:
        check_trackers(cfg.report_to)
        if cfg.push_to_hub:  # a missing token is found now, not after the run
            from coh.hub import check_push_ready

            check_push_ready(cfg.push_to_hub, cfg.hub_token_env)
    except (ImportError, ValueError) as e:
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
            raise TrainingError(f"cannot read the checkpoint's settings ({e}); --no-resume starts afresh, or use "
                                "another output_dir") from None
        plan.changes = config_changes(saved.training, cfg.to_dict(), saved.data, plan.fingerprint)
        refused = {k: v for k, v in plan.changes.items() if k not in RESUME_MAY_CHANGE}
        if refused and not cfg.resume_with_changes:
            listed = "\n".join(f"  {k}: {old!r} (checkpoint) -> {new!r} (now)" for k, (old, new) in refused.items())
            raise TrainingError(
                f"output_dir {out} holds {plan.resume_from.name} of a run with other settings:\n{listed}\n"
                "Continuing it would silently mix the two. Use another output_dir for a new run, put the "
                "checkpoint's settings back, or give --resume-with-changes (resume_with_changes=true) to continue "
                "from it with the new settings (coh.json records the change).")
        step = json.loads((plan.resume_from / "coh_state.json").read_text(encoding="utf-8"))["step"]
        plan.resumed = [*saved.resumed, {
            "step": step, "checkpoint": plan.resume_from.name,
            "changes": {k: {"checkpoint": old, "now": new} for k, (old, new) in plan.changes.items()}}]
    return plan
