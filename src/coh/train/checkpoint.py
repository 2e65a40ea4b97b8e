"""Checkpoints: HF-format model folders plus the state for an exact resume, written atomically.

``checkpoint-<step>/`` holds the model (safetensors), the tokenizer (with its chat template),
``coh.json`` (the resolved training config and the phrases the model was trained with, which
``coh serve`` reads), ``trainer_state.pt`` (optimizer, scheduler), ``rng-<rank>.pt`` (each
process's RNG) and ``coh_state.json`` (step, data position, pretraining-stream position). Under
FSDP the model and optimizer are DCP shards instead (see ``coh.train.distributed``). It is written under a temporary name and
renamed into place after a ``COMPLETE`` marker, so a run killed mid-save leaves no checkpoint
that looks whole; resume takes the newest complete one. ``final/`` is written the same way.

Resuming checks that the checkpoint was trained with the settings of this run (``config_changes``):
its ``coh.json`` holds the resolved config and a fingerprint of the training records, and each
resume is appended to its ``resumed`` list with the settings that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from coh.cohjson import CohJson

COMPLETE = "COMPLETE"
# Options that may differ from the checkpoint's when a run is resumed: the run's length and what is
# logged, evaluated or saved, and how (not what) the same update is computed. Any other difference
# is refused unless resume_with_changes is set. max_steps / epochs also reshape the lr schedule.
RESUME_MAY_CHANGE = frozenset({
    "max_steps", "epochs", "output_dir", "resume", "resume_with_changes", "report_to", "log_every", "save_every",
    "keep_last", "eval_every", "eval_records", "eval_data", "pretrain_eval_data", "gradient_checkpointing",
    "loss_chunk", "lora_merge", "progress", "push_to_hub", "hub_private", "hub_token_env",
})
_INVOCATION = ("output_dir", "resume", "resume_with_changes", "progress")  # how this run was started, not what it trains
_PATH_OPTIONS = ("model", "tokenizer", "train_data", "eval_data", "pretrain_data", "pretrain_eval_data")


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders (``checkpoint-<step>`` with the marker), oldest first."""
    root = Path(output_dir)
    found = [p for p in root.glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir() and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def temporary_folder(dest: Path) -> Path:
    """Where ``dest`` is written before ``publish_folder`` moves it into place (emptied first)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_folder(tmp: Path, dest: Path) -> None:
    """Mark ``tmp`` complete and rename it to ``dest``. An older ``dest`` is moved aside first and
    removed only after the rename, so ``dest`` is at every moment either the old folder whole, or
    the new one whole, or (killed between the two renames) absent: never half written."""
    (tmp / COMPLETE).write_text("")
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def data_fingerprint(path: Path) -> dict:
    """Size and SHA-256 of a training records file: a resume can tell a rebuilt file at the same path."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"file": str(path), "bytes": path.stat().st_size, "sha256": digest}


def _same(key: str, old: object, new: object) -> bool:
    if old == new:
        return True
    # The same file or folder given once relative and once absolute (from the same working folder).
    if key in _PATH_OPTIONS and isinstance(old, str) and isinstance(new, str) and Path(old).exists():
        return Path(old).resolve() == Path(new).resolve()
    return False


def config_changes(saved: dict, now: dict, saved_data: dict | None = None, now_data: dict | None = None
                   ) -> dict[str, tuple[object, object]]:
    """Options whose value differs between a checkpoint's config (``saved``, its ``coh.json``
    ``training``) and this run's (``now``): ``{key: (checkpoint's, this run's)}``. Options the
    checkpoint does not know (it was written by an older version) are not compared. With both
    fingerprints given, changed contents of the training records count as ``train_data contents``."""
    changes = {key: (saved[key], value) for key, value in now.items()
               if key in saved and key not in _INVOCATION and not _same(key, saved[key], value)}
    if saved_data and now_data and saved_data.get("sha256") != now_data.get("sha256"):
        changes["train_data contents"] = (f"sha256 {saved_data.get('sha256', '?')[:12]}",
                                          f"sha256 {now_data['sha256'][:12]}")
    return changes


def save_model_folder(folder: Path, model, tokenizer, coh_info: CohJson) -> None:
    """A folder any HF tool loads: model, tokenizer, and our ``coh.json``."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    coh_info.write(folder)


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler, state: dict,
                    coh_info: CohJson, keep_last: int, accelerator) -> Path:
    """Write ``checkpoint-<step>`` atomically and keep only the newest ``keep_last`` complete ones.
    Called by every process: under FSDP each writes its shards (``model_sharded/``,
    ``optim_sharded/``); otherwise the main process writes the model as safetensors. Each process
    writes its own RNG state (``rng-<rank>.pt``)."""
    from coh.train.distributed import is_sharded, save_sharded

    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    sharded = is_sharded(model)
    if sharded:
        save_sharded(tmp, model, optimizer)
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / f"rng-{accelerator.process_index}.pt")
    if main:
        if sharded:
            model.config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            coh_info.write(tmp)
            torch.save({"scheduler": scheduler.state_dict()}, tmp / "trainer_state.pt")
        else:
            save_model_folder(tmp, accelerator.unwrap_model(model), tokenizer, coh_info)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "trainer_state.pt")
        (tmp / "coh_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()  # every shard and RNG file is on disk before the marker
    if main:
        publish_folder(tmp, final)
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(checkpoint: Path, model, optimizer, scheduler, process_index: int) -> dict:
    """Restore optimizer (and under FSDP the model shards), scheduler and this process's RNG from a
    checkpoint; return its ``coh_state.json``. Without FSDP the model itself was loaded from the
    checkpoint folder beforehand."""
    from coh.train.distributed import is_sharded, load_sharded

    saved = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    if is_sharded(model):
        load_sharded(checkpoint, model, optimizer)
    else:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng_file = checkpoint / f"rng-{process_index}.pt"
    if not rng_file.exists():
        raise FileNotFoundError(f"{rng_file}: missing; was this checkpoint written with a different number of "
                                "processes? Resume with the same process count")
    rng = torch.load(rng_file, map_location="cpu", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((checkpoint / "coh_state.json").read_text(encoding="utf-8"))
