"""``--check``: the converted model's logits against the source's, on one CoH prompt.

The rule: ``max |logit difference| <= tolerance * max(1, max |source logit|)``, both sides in
float32 (default tolerance 1e-4; conversions only move, transpose and re-dtype weights, so the
difference is float rounding in a different order of operations). Argmax agreement is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TOLERANCE = 1e-4
CHECK_PROMPT = "How do I bake bread at home?"


@dataclass(frozen=True)
class CheckResult:
    max_abs_diff: float
    max_abs_logit: float
    argmax_agreement: float  # share of positions whose top token is the same
    tolerance: float
    tokens: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.max_abs_logit)

    def describe(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"logits check {verdict}: max |diff| {self.max_abs_diff:.3g} over {self.tokens} tokens "
                f"(allowed {self.tolerance:g} x max(1, max |logit| {self.max_abs_logit:.3g})), "
                f"argmax agreement {self.argmax_agreement:.1%}")


def compare_logits(source: torch.Tensor, converted: torch.Tensor, tolerance: float = TOLERANCE) -> CheckResult:
    if source.shape != converted.shape:
        raise ValueError(f"logits shapes differ: source {tuple(source.shape)}, converted {tuple(converted.shape)}")
    source, converted = source.float(), converted.float()
    return CheckResult(
        max_abs_diff=(source - converted).abs().max().item(), max_abs_logit=source.abs().max().item(),
        argmax_agreement=(source.argmax(-1) == converted.argmax(-1)).float().mean().item(),
        tolerance=tolerance, tokens=source.shape[0],
    )


def check_ids(model_dir: str | Path, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Token ids of a CoH prompt (``User: ... A helpful answer:``) tokenized as training would,
    when ``model_dir`` has a tokenizer; else 24 ids drawn with a fixed seed."""
    from transformers import AutoTokenizer

    from coh.convert.safetensors_io import TOKENIZER_FILES
    from coh.data.feedback import Turn
    from coh.data.render import prompt_record, trained_phrases
    from coh.data.tokenize import RecordTokenizer

    ids: list[int] = []
    # transformers 5 makes an empty tokenizer for a folder without tokenizer files: look first
    if any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES):
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        if tok.eos_token_id is not None:
            record = prompt_record([Turn("user", CHECK_PROMPT)], trained_phrases(model_dir), "good")
            ids = RecordTokenizer(tok, chat_template="never")(record).input_ids
    if not ids:
        return torch.randint(vocab_size, (24,), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(ids, dtype=torch.long)


def load_float32(model_dir: str | Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@torch.no_grad()
def model_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """(T, vocab) logits of an HF causal LM for one sequence."""
    return model(input_ids=ids[None]).logits[0].float()
