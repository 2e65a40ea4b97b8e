"""Tiny models built from config (nothing downloaded)."""

from __future__ import annotations

import torch


def tiny_llama(vocab_size: int, attn: str = "sdpa", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


def tiny_gptj(vocab_size: int, attn: str = "sdpa", seed: int = 0):
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(seed)
    config = GPTJConfig(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=2048,
                        bos_token_id=0, eos_token_id=0)
    config._attn_implementation = attn
    return GPTJForCausalLM(config).eval()
