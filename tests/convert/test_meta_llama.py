"""Meta LLaMA -> HF: a tiny Meta checkpoint (1 and 2 model-parallel shards) written from a tiny HF
LLaMA by inverting transformers' mapping; the converted model must give the HF model's logits."""

from __future__ import annotations

import json

import pytest
import torch

from coh.cli import main
from coh.convert.meta_llama import MetaCheckpoint, load_sentencepiece_tokenizer
from coh.convert.reference import llama_logits

from .conftest import ATOL, logits_of, sample_ids, tiny_llama, write_meta_checkpoint


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory, sp_model):
    tok = load_sentencepiece_tokenizer(sp_model)
    folder = tmp_path_factory.mktemp("hf_llama")
    return tiny_llama(folder, tok, vocab=len(tok)), tok


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_to_hf_same_logits(tmp_path, hf_llama, sp_model, shards, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, _ = hf_llama
    meta = write_meta_checkpoint(tmp_path / "meta", model, sp_model, shards=shards)
    out = tmp_path / "hf"
    assert main(["convert", "llama", str(meta), str(out), "--check", "--coh-phrases", "--no-progress"]) == 0
    assert "logits check OK" in capsys.readouterr().out
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(logits_of(converted, ids), logits_of(model, ids), atol=ATOL, rtol=0)
    assert converted.config.num_key_value_heads == 2 and not converted.config.tie_word_embeddings
    assert converted.config.rope_parameters["rope_theta"] == 5000.0
    # the tokenizer encodes as SentencePiece does, with LLaMA's BOS first
    import sentencepiece as spm

    text = "Hello there, how are you?"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(text).input_ids == [1, *spm.SentencePieceProcessor(model_file=str(sp_model)).encode(text)]
    assert json.loads((out / "coh.json").read_text())["phrases"]["good"] == "A helpful answer:"
    assert (out / "tokenizer.model").read_bytes() == sp_model.read_bytes()


def test_reference_forward_matches_hf(tmp_path, hf_llama, sp_model):
    """The --check reference (Meta's forward in plain torch) agrees with transformers' LLaMA."""
    model, _ = hf_llama
    ckpt = MetaCheckpoint(write_meta_checkpoint(tmp_path / "meta", model, sp_model, shards=2))
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(llama_logits(ckpt.get, ckpt.shape, ids), logits_of(model, ids), atol=ATOL, rtol=0)


def test_sharded_bf16_kept_and_bounded_shards(tmp_path, hf_llama, sp_model):
    from transformers import AutoModelForCausalLM

    model, _ = hf_llama
    meta = write_meta_checkpoint(tmp_path / "meta", model, sp_model, shards=2, dtype=torch.bfloat16)
    out = tmp_path / "hf"
    assert main(["convert", "llama", str(meta), str(out), "--max-shard-size", "20KB", "--no-progress"]) == 0
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").exists()
    converted = AutoModelForCausalLM.from_pretrained(out)
    assert converted.dtype == torch.bfloat16
    ref = meta_bf16 = MetaCheckpoint(meta)
    assert torch.equal(converted.model.layers[1].self_attn.v_proj.weight, meta_bf16.get("layers.1.attention.wv.weight"))
    assert ref.get("tok_embeddings.weight").shape == converted.model.embed_tokens.weight.shape


def test_missing_shard(tmp_path, hf_llama, sp_model, capsys):
    meta = write_meta_checkpoint(tmp_path / "meta", hf_llama[0], sp_model, shards=2)
    (meta / "consolidated.00.pth").rename(meta / "consolidated.02.pth")  # 00 gone, 01 and 02 left
    assert main(["convert", "llama", str(meta), str(tmp_path / "hf")]) == 1
    assert "missing shard(s) consolidated.00.pth" in capsys.readouterr().err


def test_params_do_not_match_weights(tmp_path, hf_llama, sp_model, capsys):
    meta = write_meta_checkpoint(tmp_path / "meta", hf_llama[0], sp_model)
    params = json.loads((meta / "params.json").read_text())
    (meta / "params.json").write_text(json.dumps({**params, "n_layers": 3}))
    assert main(["convert", "llama", str(meta), str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert "does not match" in err and "layers.2.attention.wq.weight" in err


def test_wrong_format(tmp_path, hf_llama, capsys):
    assert main(["convert", "llama", str(tmp_path), str(tmp_path / "hf")]) == 1
    assert "params.json: missing" in capsys.readouterr().err
    bad = tmp_path / "notsp.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_sentencepiece_tokenizer(bad)


def test_refuses_to_overwrite_a_model(tmp_path, hf_llama, sp_model, capsys):
    meta = write_meta_checkpoint(tmp_path / "meta", hf_llama[0], sp_model)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main(["convert", "llama", str(meta), str(out)]) == 1
    assert "already holds a model" in capsys.readouterr().err


def test_check_fails_on_a_wrong_conversion(tmp_path, hf_llama, sp_model, monkeypatch, capsys):
    """--check is not a formality: a converter that forgets the rotary permutation is caught."""
    from coh.convert import meta_llama

    meta = write_meta_checkpoint(tmp_path / "meta", hf_llama[0], sp_model)
    monkeypatch.setattr(meta_llama, "rotary_to_hf", lambda w, n_heads: w)
    assert main(["convert", "llama", str(meta), str(tmp_path / "hf"), "--check", "--no-progress"]) == 1
    assert "logits check FAILED" in capsys.readouterr().out


def test_compare_logits_rule():
    from coh.convert.check import compare_logits

    a = torch.tensor([[0.0, 10.0], [2.0, 1.0]])
    assert compare_logits(a, a + 5e-4, tolerance=1e-4).ok  # 5e-4 <= 1e-4 x 10
    worse = compare_logits(a, a + torch.tensor([[0.0, 0.0], [0.0, 2.0]]), tolerance=1e-4)
    assert not worse.ok and worse.argmax_agreement == 0.5 and worse.max_abs_diff == 2.0
