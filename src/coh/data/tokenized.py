"""The ``tokenized/`` folder of a build: its columns (``TOKEN_COLUMNS``, ``token_features``,
``tokens_batch``) and ``coh_tokenize.json``, what its token ids were made with
(``tokenize_config``, ``read_tokenize_config``, ``tokenize_config_mismatch``), so that a reader
can tell whether the ids are those its tokenizer would give. Tokenizing itself is
``coh.data.tokenize``'s (which exports these names too).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coh.data.tokenize import RecordTokenizer, TokenizedRecord


TOKEN_COLUMNS = ("id", "source", "feedback", "input_ids", "loss_mask", "length", "loss_tokens")


def token_features():
    """The ``datasets.Features`` of a tokenized split (see ``tokens_batch``)."""
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "source": datasets.Value("string"), "feedback": datasets.Value("string"),
        "input_ids": datasets.List(datasets.Value("int32")), "loss_mask": datasets.List(datasets.Value("int8")),
        "length": datasets.Value("int32"), "loss_tokens": datasets.Value("int32"),
    })


def tokens_batch(ids: Sequence[str], sources: Sequence[str], feedbacks: Sequence[str],
                 tokenized: Sequence[TokenizedRecord]):
    """An Arrow record batch, one row per record: ``id``, ``source``, ``feedback``, ``input_ids``
    (int32), ``loss_mask`` (int8, 1 = target), ``length`` and ``loss_tokens`` (int32)."""
    import pyarrow as pa

    # Arrow arrays built directly: datasets' per-row feature encoding is several times slower.
    return pa.RecordBatch.from_pydict({
        "id": pa.array(ids, pa.string()),
        "source": pa.array(sources, pa.string()),
        "feedback": pa.array(feedbacks, pa.string()),
        "input_ids": pa.array([t.input_ids for t in tokenized], pa.list_(pa.int32())),
        "loss_mask": pa.array([t.loss_mask for t in tokenized], pa.list_(pa.int8())),
        "length": pa.array([len(t.input_ids) for t in tokenized], pa.int32()),
        "loss_tokens": pa.array([sum(t.loss_mask) for t in tokenized], pa.int32()),
    })


# -- what a tokenized build was made with: tokenized/coh_tokenize.json -------------------------------
TOKENIZE_CONFIG = "coh_tokenize.json"  # in tokenized/, beside the splits
TOKENIZE_FORMAT = 1  # of the tokenized folder and its ids; raised when coh would tokenize a record differently


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in a tokenizer that decides the ids a record gets: the Rust
    tokenizer's whole state (vocabulary, merges, added and special tokens, normaliser,
    pre-tokenizer, post-processor; not its padding and truncation settings, which a call may
    change in place), the special tokens and their ids. Not the chat template, which
    ``tokenize_config`` records on its own, as it matters only where it is used. The same tokenizer
    loaded from another folder (a checkpoint's copy) gives the same fingerprint."""
    from coh.data.tokenize import tokenizer_adds_bos  # coh.data.tokenize imports this module

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
    else:  # a slow (Python) tokenizer: its vocabulary
        state = sorted(tokenizer.get_vocab().items())
    specials = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
                "unk": tokenizer.unk_token_id, "all": sorted(tokenizer.all_special_tokens),
                "adds_bos": tokenizer_adds_bos(tokenizer)}
    text = json.dumps([state, specials], sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def tokenize_config(record_tokenizer: RecordTokenizer, name: str, chat_template: str) -> dict:
    """What a tokenized build was made with, for ``tokenized/coh_tokenize.json``: ``format``, the
    tokenizer (``name_or_path`` as given, ``fingerprint``, class, vocabulary size, BOS/EOS ids,
    whether BOS is added), ``chat_template`` (the setting asked for), ``chat_template_used`` (what
    it came to: ``never`` for a tokenizer without a template) and its hash, and ``max_length``
    (``null``: the build never truncates; every record is whole, its length in ``length``)."""
    tok = record_tokenizer.tokenizer
    template = getattr(tok, "chat_template", None) if record_tokenizer.chat_template != "never" else None
    return {
        "format": TOKENIZE_FORMAT,
        "tokenizer": {"name_or_path": str(name), "fingerprint": tokenizer_fingerprint(tok), "class": type(tok).__name__,
                      "vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                      "adds_bos": record_tokenizer.bos_id is not None},
        "chat_template": chat_template,
        "chat_template_used": record_tokenizer.chat_template,
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None,
        "max_length": None,
    }


def read_tokenize_config(tokenized_dir: str | Path) -> dict:
    """``coh_tokenize.json`` of a build's ``tokenized/`` folder; ``ValueError`` naming the file if
    it is missing or not a JSON object (a build from before it was written: tokenize again)."""
    path = Path(tokenized_dir) / TOKENIZE_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (a tokenized folder from an older coh: tokenize again)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def tokenize_config_mismatch(saved: dict, current: dict, max_length: int | None = None) -> list[str]:
    """Why token ids saved under ``saved`` (``read_tokenize_config``) are not those that
    ``current`` (``tokenize_config`` of the tokenizer at hand) would give: one line per
    difference, empty when they match. The tokenizer's path may differ (a checkpoint's copy);
    its fingerprint may not. ``max_length``: the caller's limit; a build that truncated to
    another one does not match (one that kept records whole matches any: the caller drops or
    cuts by ``length``)."""
    out = []

    def differs(what: str, a: object, b: object) -> None:
        if a != b:
            out.append(f"{what}: saved {a!r}, now {b!r}")

    tok_saved, tok_now = saved.get("tokenizer") or {}, current.get("tokenizer") or {}
    differs("format", saved.get("format"), current.get("format"))
    differs("tokenizer fingerprint", tok_saved.get("fingerprint"), tok_now.get("fingerprint"))
    differs("chat template used", saved.get("chat_template_used"), current.get("chat_template_used"))
    differs("chat template", saved.get("chat_template_sha256"), current.get("chat_template_sha256"))
    if saved.get("max_length") is not None:
        differs("max_length", saved.get("max_length"), max_length)
    return out
