"""``--check``: the converted model's logits against the source's, on two prompts: one CoH prompt
(tokenized as training does) and one that holds every token id of a seeded sample of the
vocabulary (the first and last ids included), so a wrong or shifted embedding row cannot pass.

The source side is always computed apart from the converter (``reference``: a plain-torch forward
over the source's own layout), never by reading back what the converter wrote with its own reader.

The rule: ``max |logit difference| <= tolerance * max(1, max |source logit|)``, both sides in
float32 (default tolerance 1e-4; conversions only move, transpose and re-dtype weights, so the
difference is float rounding in a different order of operations). Argmax agreement is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from coh.convert.config import TOLERANCE

CHECK_PROMPT = "How do I bake bread at home?"
VOCAB_SAMPLE = 512  # token ids in the vocabulary prompt (all of them for a smaller vocabulary)


@dataclass(frozen=True)
class CheckResult:
    max_abs_diff: float
    max_abs_logit: float
    argmax_agreement: float  # share of positions whose top token is the same
    tolerance: float
    tokens: int
    vocab_ids: int = 0  # distinct token ids the prompts covered

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.max_abs_logit)

    def describe(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"logits check {verdict}: max |diff| {self.max_abs_diff:.3g} over {self.tokens} tokens "
                f"(allowed {self.tolerance:g} x max(1, max |logit| {self.max_abs_logit:.3g})), "
                f"argmax agreement {self.argmax_agreement:.1%}"
                + (f", {self.vocab_ids} distinct token ids" if self.vocab_ids else ""))


def compare_logits(source: torch.Tensor, converted: torch.Tensor, tolerance: float = TOLERANCE) -> CheckResult:
    if source.shape != converted.shape:
        raise ValueError(f"logits shapes differ: source {tuple(source.shape)}, converted {tuple(converted.shape)}")
    source, converted = source.float(), converted.float()
    return CheckResult(
        max_abs_diff=(source - converted).abs().max().item(), max_abs_logit=source.abs().max().item(),
        argmax_agreement=(source.argmax(-1) == converted.argmax(-1)).float().mean().item(),
        tolerance=tolerance, tokens=source.shape[0],
    )


def combine(results: list[CheckResult], vocab_ids: int) -> CheckResult:
    """One verdict over several prompts: the worst difference, the argmax agreement over all tokens."""
    tokens = sum(r.tokens for r in results)
    return CheckResult(max(r.max_abs_diff for r in results), max(r.max_abs_logit for r in results),
                       sum(r.argmax_agreement * r.tokens for r in results) / tokens, results[0].tolerance, tokens,
                       vocab_ids)


def vocab_sample_ids(vocab_size: int, max_positions: int | None = None, n: int = VOCAB_SAMPLE,
                     seed: int = 0) -> torch.Tensor:
    """Distinct token ids in a seeded order: the whole vocabulary when it has at most ``n`` ids,
    else ``n`` of them drawn with a fixed seed, always with id 0 and the last id."""
    n = min(n, vocab_size, max_positions or n)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(vocab_size, generator=g)
    if n < vocab_size:
        ids = torch.cat([torch.tensor([0, vocab_size - 1]), ids[(ids != 0) & (ids != vocab_size - 1)][: n - 2]])
    return ids[:n][torch.randperm(n, generator=g)]


def check_prompts(model_dir: str | Path, vocab_size: int, max_positions: int | None = None) -> list[torch.Tensor]:
    """The prompts of ``--check``: the CoH prompt (``check_ids``) and the vocabulary sample."""
    return [check_ids(model_dir, vocab_size), vocab_sample_ids(vocab_size, max_positions)]


def check_ids(model_dir: str | Path, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Token ids of a CoH prompt (``User: ... A helpful answer:``) tokenized as training would,
    when ``model_dir`` has a tokenizer; else 24 ids drawn with a fixed seed."""
    from coh.cohjson import trained_phrases
    from coh.data.feedback import Turn
    from coh.data.render import prompt_record
    from coh.data.tokenize import RecordTokenizer
    from coh.models import has_tokenizer_files, load_tokenizer

    ids: list[int] = []
    # transformers 5 makes an empty tokenizer for a folder without tokenizer files: look first
    if has_tokenizer_files(model_dir):
        tok = load_tokenizer(str(model_dir))
        if tok.eos_token_id is not None:
            record = prompt_record([Turn("user", CHECK_PROMPT)], trained_phrases(model_dir), "good")
            ids = RecordTokenizer(tok, chat_template="never")(record).input_ids
    if not ids:
        return torch.randint(vocab_size, (24,), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(ids, dtype=torch.long)


def load_float32(model_dir: str | Path):
    from coh.models import load_model

    return load_model(str(model_dir), dtype="float32", device="cpu")


@torch.no_grad()
def model_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """(T, vocab) logits of an HF causal LM for one sequence."""
    return model(input_ids=ids[None]).logits[0].float()
