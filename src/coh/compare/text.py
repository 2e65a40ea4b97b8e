"""Real plain English text that every Python installation carries, for the pretraining regulariser
and for the held-out plain-text loss that shows what it is for.

Source: ``pydoc_data.topics`` of the standard library, the text of the Python Language Reference
and Library Reference topics that ``help()`` shows (CPython's documentation, PSF License
Version 2; about 460,000 characters in Python 3.11). Its prose paragraphs (not indented, at least
``MIN_WORDS`` words, mostly letters) become one document each, lines joined; code samples and
grammar rules are left out. Paragraphs are split by a seeded hash into a held-out share and the
rest, in ``PretrainStream``'s ``.txt`` format (one document per line). It is technical English,
not web text like the paper's C4: a stand-in, used because nothing else offline is real prose.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MIN_WORDS = 20
SOURCE = "pydoc_data.topics (CPython documentation, PSF License Version 2)"


def prose_paragraphs() -> list[str]:
    """The prose paragraphs of ``pydoc_data.topics``, in topic order, each on one line."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.split("\n")
            if not lines or lines[0][:1].isspace() or set(lines[-1].strip()) <= set("*=-~^"):
                continue  # code, grammar and headings
            text = " ".join(line.strip() for line in lines)
            letters = sum(c.isalpha() or c.isspace() for c in text)
            if len(text.split()) >= MIN_WORDS and letters >= 0.9 * len(text):
                out.append(text)
    return list(dict.fromkeys(out))  # some topics repeat paragraphs: keep each once


def write_plain_text(out_dir: Path, held_out_fraction: float = 0.2, seed: int = 0) -> dict:
    """``out_dir/train.txt`` and ``out_dir/heldout.txt`` (disjoint paragraphs); returns counts."""
    paragraphs = prose_paragraphs()
    held, train = [], []
    for p in paragraphs:
        digest = hashlib.sha256(f"{seed}\x1d{p}".encode()).digest()
        (held if int.from_bytes(digest[:8], "big") < held_out_fraction * 2**64 else train).append(p)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", train), ("heldout", held)):
        (out_dir / f"{name}.txt").write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    return {"source": SOURCE, "paragraphs": len(paragraphs), "train": len(train), "heldout": len(held),
            "characters": sum(map(len, paragraphs))}


def read_documents(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
