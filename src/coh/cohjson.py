"""``coh.json``: what a model folder says about how it was trained and how to prompt it.

``coh train`` writes it into every checkpoint and ``final/``; ``coh convert`` keeps it (or writes
one with the original code's phrases for converted CoH weights); ``coh serve``, ``coh eval`` and
:func:`coh.models.load_for_inference` read it. A folder without one is a plain model, prompted with
the default phrases. Fields (``version`` 1)::

    {"version": 1,
     "phrases": {"user": "User:", "good": "A helpful answer:", "bad": "An unhelpful answer:"},
     "mode": "coh" | "conditional-sft" | "sft" | "dpo",
     "prompt_format": "coh" | "chat-template",   # how training saw its context
     "training": {...},                          # the resolved TrainConfig in force
     "data": {"path": ..., "sha256": ...},       # fingerprint of the training records
     "resumed": [...],                           # each resume and what changed at it
     "converted_from": {"format": ..., "path": ...}}

Files written before ``version`` existed read as version 1 with the same fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coh.data.phrases import PhraseSet

FILE = "coh.json"
VERSION = 1
MODES = ("coh", "conditional-sft", "sft", "dpo")  # dpo: coh compare's TRL baseline
PROMPT_FORMATS = ("coh", "chat-template")


@dataclass
class CohJson:
    """The contents of ``coh.json`` (see the module docstring)."""

    phrases: PhraseSet = field(default_factory=PhraseSet)
    mode: str = "coh"
    prompt_format: str = "coh"
    training: dict = field(default_factory=dict)
    data: dict | None = None
    resumed: list = field(default_factory=list)
    converted_from: dict | None = None
    version: int = VERSION

    @property
    def default_feedback(self) -> str:
        """The phrase a reply is conditioned on by default: ``none`` for ``sft`` and ``dpo``
        models (they were trained with no phrase), else ``good``."""
        return "none" if self.mode in ("sft", "dpo") else "good"

    @classmethod
    def for_original_weights(cls, source_format: str, source: str | Path) -> CohJson:
        """For weights trained by the original CoH code: its default phrases, so ``coh serve``
        prompts them the way they were trained."""
        return cls(converted_from={"format": source_format, "path": str(source)})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version,
                               "phrases": {"user": self.phrases.user, "good": self.phrases.good,
                                           "bad": self.phrases.bad},
                               "mode": self.mode, "prompt_format": self.prompt_format, "training": self.training}
        for key in ("data", "converted_from"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.resumed:
            out["resumed"] = self.resumed
        return out

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, obj: object, where: str) -> CohJson:
        """Validate and build; ``ValueError`` names ``where`` and the field."""
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        version = obj.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
            raise ValueError(f"{where}: version {version!r} is not one this coh reads (up to {VERSION}); "
                             "upgrade coh")
        phrases = obj.get("phrases", {})
        if not isinstance(phrases, dict) or not all(isinstance(phrases.get(k, ""), str) for k in ("user", "good", "bad")):
            raise ValueError(f"{where}: field 'phrases': expected an object of strings user, good, bad")
        mode = obj.get("mode", "coh")
        if mode not in MODES:
            raise ValueError(f"{where}: field 'mode': expected one of {list(MODES)}, got {mode!r}")
        prompt_format = obj.get("prompt_format", "coh")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"{where}: field 'prompt_format': expected one of {list(PROMPT_FORMATS)}, "
                             f"got {prompt_format!r}")
        for key, kind in (("training", dict), ("data", (dict, type(None))), ("resumed", list),
                          ("converted_from", (dict, type(None)))):
            if key in obj and not isinstance(obj[key], kind):
                raise ValueError(f"{where}: field '{key}': expected {'a list' if kind is list else 'an object'}")
        return cls(phrases=replace(PhraseSet(), **{k: v for k, v in phrases.items() if k in ("user", "good", "bad")}),
                   mode=mode, prompt_format=prompt_format, training=obj.get("training", {}), data=obj.get("data"),
                   resumed=obj.get("resumed", []), converted_from=obj.get("converted_from"), version=version)

    @classmethod
    def read(cls, folder: str | Path) -> CohJson | None:
        """The ``coh.json`` of a local folder, or None when it has none."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: cannot read it ({e})") from None
        return cls.from_json(obj, str(path))

    @classmethod
    def find(cls, model: str) -> tuple[CohJson | None, str | None]:
        """The ``coh.json`` of a local folder or of a hub repository, and where it was found
        (``(None, None)`` for a plain model)."""
        if Path(model).is_dir():
            info = cls.read(model)
            return info, (str(Path(model) / FILE) if info is not None else None)
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, FILE))
        except Exception:  # no such file in the repository, or no hub: a plain model
            return None, None
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")), str(path)), str(path)


def copy_coh_json(source: str | Path, target: str | Path) -> bool:
    """Copy ``source/coh.json`` to ``target`` byte for byte (a conversion keeps it); False when
    ``source`` has none."""
    src = Path(source) / FILE
    if not src.is_file():
        return False
    (Path(target) / FILE).write_bytes(src.read_bytes())
    return True


def trained_phrases(folder: str | Path) -> PhraseSet:
    """The phrases a model folder was trained with (its ``coh.json``), or the defaults."""
    info = CohJson.read(folder) if Path(folder).is_dir() else None
    return info.phrases if info is not None else PhraseSet()
