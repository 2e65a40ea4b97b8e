"""Up-front checks of what the user named, so a mistake reads as what it is (not as the error some
library raises three calls later, such as "install sentencepiece" for an empty folder)."""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_folder(path: str, role: str) -> None:
    """Raise ValueError when ``path`` exists but cannot be a Hugging Face model folder: a file, or a
    folder without ``config.json`` or without tokenizer files. A path that does not exist may be a
    hub id and is left to ``from_pretrained``."""
    p = Path(path)
    if not p.exists():
        return
    if not p.is_dir():
        raise ValueError(f"{role} '{path}': a file, not a model folder (a folder with config.json, the weights and "
                         "the tokenizer, such as coh train's OUTPUT/final)")
    if not (p / "config.json").is_file():
        raise ValueError(f"{role} '{path}': no config.json in that folder, so not a Hugging Face model folder"
                         + (" (coh train writes the model to OUTPUT/final)" if (p / "final").is_dir() else ""))
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{role} '{path}': the folder has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
                         "save the tokenizer beside the model")
