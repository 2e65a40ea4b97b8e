"""Checkpoints: HF-format model folders plus the state for an exact resume, written atomically.

``checkpoint-<step>/`` holds the model (safetensors), the tokenizer (with its chat template),
``coh.json`` (the resolved training config and the phrases the model was trained with, which
``coh serve`` reads), ``trainer_state.pt`` (optimizer, scheduler, RNG) and ``coh_state.json``
(step, data position, pretraining-stream position). It is written under a temporary name and
renamed into place after a ``COMPLETE`` marker, so a run killed mid-save leaves no checkpoint
that looks whole; resume takes the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

COMPLETE = "COMPLETE"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(output_dir)
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def save_model_folder(folder: Path, model, tokenizer, coh_info: dict) -> None:
    """A folder any HF tool loads: model, tokenizer, and our ``coh.json``."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "coh.json").write_text(json.dumps(coh_info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler, state: dict,
                    coh_info: dict, keep_last: int) -> Path:
    """Write ``checkpoint-<step>`` atomically and keep only the newest ``keep_last`` complete ones."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model_folder(tmp, model, tokenizer, coh_info)
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               tmp / "trainer_state.pt")
    (tmp / "coh_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    (tmp / COMPLETE).write_text("")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNG from a checkpoint; return its ``coh_state.json``."""
    saved = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return json.loads((checkpoint / "coh_state.json").read_text(encoding="utf-8"))
