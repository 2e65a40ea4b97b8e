"""Tiny tokenizers trained offline, for tests, benchmarks and the demo (no hub needed).

``kind="bpe"``: byte-level BPE like GPT-2 / Qwen (no BOS added by the tokenizer).
``kind="llama"``: a SentencePiece-style BPE with Metaspace pre-tokenization that adds BOS, like
LLaMA. Both get a ChatML chat template and are saved and reloaded from a folder, the way
transformers 5 loads tokenizers reliably.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 2000, kind: str = "bpe", save_dir: str | Path | None = None):
    """Train a small tokenizer on ``texts`` and return it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "<pad>"]
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=False, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>", unk_token=None
        )
    elif kind == "llama":
        tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=specials + byte_tokens)
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<pad>"
        )
    else:
        raise ValueError(f"kind must be 'bpe' or 'llama', got {kind!r}")
    wrapped.chat_template = CHATML_TEMPLATE
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(save_dir) if save_dir is not None else Path(tmp)
        wrapped.save_pretrained(target)
        return AutoTokenizer.from_pretrained(target)


def make_tiny_model(save_dir: str | Path, tokenizer, arch: str = "llama", hidden: int = 64, layers: int = 2,
                    heads: int = 4, seed: int = 0):
    """A small randomly initialised causal LM built from config (LLaMA or GPT-J), saved with its
    tokenizer as an ordinary HF folder that ``coh train`` loads by path."""
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                             max_position_embeddings=4096, tie_word_embeddings=True, **special)
        model = LlamaForCausalLM(config)
    elif arch == "gptj":
        config = GPTJConfig(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads,
                            rotary_dim=hidden // heads // 2 * 2, n_positions=4096, **special)
        model = GPTJForCausalLM(config)
    else:
        raise ValueError(f"arch must be 'llama' or 'gptj', got {arch!r}")
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return model


def main(argv: list[str] | None = None) -> int:
    """``python -m coh.tiny OUT``: a tiny LLaMA and its tokenizer, trained offline on the bundled
    hh-rlhf sample, for CPU runs of ``coh train`` (configs/train/tiny-cpu.yaml)."""
    import argparse
    import gzip
    import json

    p = argparse.ArgumentParser(prog="python -m coh.tiny", description=main.__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for the model and tokenizer")
    p.add_argument("--arch", choices=["llama", "gptj"], default="llama")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2000)
    args = p.parse_args(argv)
    sample = Path(__file__).parent / "data" / "builtin" / "hh-rlhf-harmless-sample.jsonl.gz"
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["chosen"] for line in f]
    tokenizer = train_tiny_tokenizer(texts, args.vocab, "llama")
    model = make_tiny_model(args.out, tokenizer, args.arch, hidden=args.hidden, layers=args.layers)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter {args.arch} saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
