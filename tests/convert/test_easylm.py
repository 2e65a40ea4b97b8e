"""EasyLM streams <-> HF, LLaMA and GPT-J. Streams come from two writers: an independent one in
``conftest`` that follows EasyLM's ``StreamingCheckpointer`` and ``convert_hf_to_easylm.py``, and
our own ``to-easylm``; both must read back to the source model's logits."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
import torch

from coh.cli import main
from coh.convert import easylm, easylm_stream
from coh.convert.easylm import open_easylm
from coh.convert.easylm_stream import EasyLMStream, decode_array, encode_array

from .conftest import (
    ATOL,
    easylm_gptj_params,
    easylm_llama_params,
    logits_of,
    read_easylm_stream,
    sample_ids,
    tiny_gptj,
    tiny_llama,
    write_easylm_stream,
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, llama_tokenizer):
    folder = tmp_path_factory.mktemp("hf_llama")
    tiny_llama(folder, llama_tokenizer, tied=False)
    return folder


@pytest.fixture(scope="module")
def tied_llama_dir(tmp_path_factory, llama_tokenizer):
    folder = tmp_path_factory.mktemp("hf_llama_tied")
    tiny_llama(folder, llama_tokenizer, tied=True, seed=3)
    return folder


@pytest.fixture(scope="module")
def gptj_dir(tmp_path_factory, bpe_tokenizer):
    folder = tmp_path_factory.mktemp("hf_gptj")
    tiny_gptj(folder, bpe_tokenizer)
    return folder


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _config_json(path, model) -> str:
    """An EasyLM config JSON (LLaMAConfig / GPTJConfig fields) for a non-standard tiny size."""
    c = model.config
    if c.model_type == "llama":
        d = {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
             "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
             "rms_norm_eps": c.rms_norm_eps, "max_sequence_length": 256, "rope_theta": 5000.0,
             "tie_word_embeddings": c.tie_word_embeddings}
    else:
        d = {k: getattr(c, k) for k in ("vocab_size", "n_embd", "n_layer", "n_head", "rotary_dim", "n_positions")}
    path.write_text(json.dumps(d))
    return str(path)


@pytest.mark.parametrize("levels", [0, 1])
@pytest.mark.parametrize("arch", ["llama", "tied_llama", "gptj"])
def test_independent_stream_to_hf(tmp_path, arch, levels, llama_dir, tied_llama_dir, gptj_dir, capsys):
    """EasyLM's layout (no params level) and one with a params level; a tied LLaMA's lm_head, equal
    to the embedding, becomes a tied HF model again."""
    folder = {"llama": llama_dir, "tied_llama": tied_llama_dir, "gptj": gptj_dir}[arch]
    model = _load(folder)
    params = easylm_gptj_params(model) if arch == "gptj" else easylm_llama_params(model)
    params = {("params",) * levels + k: v for k, v in params.items()}
    stream = write_easylm_stream(tmp_path / "streaming_params", params)
    out = tmp_path / "hf"
    argv = ["convert", "easylm", str(stream), str(out), "--config", _config_json(tmp_path / "c.json", model),
            "--tokenizer", str(folder), "--check", "--coh-phrases", "--no-progress"]
    assert main(argv) == 0
    assert "logits check OK" in capsys.readouterr().out
    converted = _load(out)
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(logits_of(converted, ids), logits_of(model, ids), atol=ATOL, rtol=0)
    assert converted.config.tie_word_embeddings == model.config.tie_word_embeddings
    assert json.loads((out / "coh.json").read_text())["mode"] == "coh"


def test_train_state_stream_skips_optimizer_state(tmp_path, llama_dir, capsys):
    """A streaming_train_state: parameters under params/params, optimizer moments beside them."""
    model = _load(llama_dir)
    params = {("params", "params", *k): v for k, v in easylm_llama_params(model).items()}
    moments = {("opt_state", "1", "0", "mu", "params", *k[2:]): np.zeros_like(v) for k, v in params.items()}
    stream = write_easylm_stream(tmp_path / "streaming_train_state", params,
                                 {("step",): np.array(7, dtype=np.int32), **moments})
    out = tmp_path / "hf"
    assert main(["convert", "easylm", str(stream), str(out), "--config", _config_json(tmp_path / "c.json", model),
                 "--no-progress"]) == 0
    assert f"skipped {len(moments) + 1} non-parameter entries" in capsys.readouterr().out
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(logits_of(_load(out), ids), logits_of(model, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "tied_llama", "gptj"])
def test_to_easylm_matches_easylm_layout_and_round_trips(tmp_path, arch, llama_dir, tied_llama_dir, gptj_dir, capsys):
    folder = {"llama": llama_dir, "tied_llama": tied_llama_dir, "gptj": gptj_dir}[arch]
    model = _load(folder)
    out = tmp_path / "ez"
    assert main(["convert", "to-easylm", str(folder), str(out), "--check", "--no-progress"]) == 0
    assert "logits check OK" in capsys.readouterr().out
    # our stream holds exactly what EasyLM's own converter would write, read by an independent reader
    ours = read_easylm_stream(out / "streaming_params")
    expected = easylm_gptj_params(model) if arch == "gptj" else easylm_llama_params(model)
    assert set(ours) == set(expected)
    for key, (arr, dtype) in ours.items():
        assert dtype == "float32" and np.array_equal(arr, expected[key]), key
    cfg = json.loads((out / "easylm_config.json").read_text())
    assert cfg["vocab_size"] == model.config.vocab_size
    # and back to HF
    hf = tmp_path / "hf"
    assert main(["convert", "easylm", str(out / "streaming_params"), str(hf), "--config",
                 str(out / "easylm_config.json"), "--no-progress"]) == 0
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(logits_of(_load(hf), ids), logits_of(model, ids), atol=ATOL, rtol=0)


def test_reference_forwards_match_hf(tmp_path, llama_dir, gptj_dir):
    """The --check references agree with transformers on the independent streams."""
    for folder, params in ((llama_dir, easylm_llama_params), (gptj_dir, easylm_gptj_params)):
        model = _load(folder)
        stream = write_easylm_stream(tmp_path / f"{folder.name}.stream", params(model))
        source = open_easylm(stream, _config_json(tmp_path / "c.json", model))
        ids = sample_ids(model.config.vocab_size)
        torch.testing.assert_close(source.reference_logits(ids), logits_of(model, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_array_codec_with_chunks(monkeypatch, dtype):
    t = torch.randn(6, 5).to(dtype)
    assert torch.equal(decode_array(encode_array(t)), t)
    monkeypatch.setattr(easylm_stream, "MAX_CHUNK_BYTES", 16)  # flax splits arrays over its limit into flat chunks
    payload = encode_array(t)
    tree = msgpack.unpackb(payload, raw=False, ext_hook=lambda c, d: None)
    assert tree["__msgpack_chunked_array__"] and len(tree["chunks"]) > 1
    assert torch.equal(decode_array(payload), t)


def test_bfloat16_stream_read_independently(tmp_path, gptj_dir):
    model = _load(gptj_dir)
    out = tmp_path / "ez"
    assert main(["convert", "to-easylm", str(gptj_dir), str(out), "--dtype", "bfloat16", "--no-progress"]) == 0
    ours = read_easylm_stream(out / "streaming_params")
    arr, dtype = ours[("transformer", "h", "0", "attn", "q_proj", "kernel")]
    assert dtype == "bfloat16"
    want = model.transformer.h[0].attn.q_proj.weight.detach().to(torch.bfloat16).t().contiguous()
    assert np.array_equal(arr, want.view(torch.int16).numpy().view(np.uint16))


def test_wrong_format(tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.write_bytes(json.dumps({"not": "easylm"}).encode() * 3)
    assert main(["convert", "easylm", str(junk), str(tmp_path / "hf")]) == 1
    assert "not an EasyLM streaming checkpoint" in capsys.readouterr().err
    pairs = tmp_path / "pairs"
    pairs.write_bytes(msgpack.packb(["a", "b"]))
    with pytest.raises(ValueError, match="not a \\(key path, array bytes\\) pair"):
        EasyLMStream(pairs).scan()
    with pytest.raises(FileNotFoundError, match="no such file"):
        EasyLMStream(tmp_path / "absent")


def test_config_needed_and_checked(tmp_path, llama_dir, capsys):
    model = _load(llama_dir)
    stream = write_easylm_stream(tmp_path / "s", easylm_llama_params(model))
    assert main(["convert", "easylm", str(stream), str(tmp_path / "a")]) == 1
    assert "no EasyLM standard size; give --config" in capsys.readouterr().err
    assert main(["convert", "easylm", str(stream), str(tmp_path / "b"), "--config", "7b"]) == 1
    assert "hidden_size 4096 in the config, 32 in the checkpoint" in capsys.readouterr().err


def test_truncated_stream_missing_layer(tmp_path, llama_dir, capsys):
    model = _load(llama_dir)
    params = {k: v for k, v in easylm_llama_params(model).items() if k[2:3] != ("1",) or k[3] != "feed_forward"}
    stream = write_easylm_stream(tmp_path / "s", params)
    assert main(["convert", "easylm", str(stream), str(tmp_path / "hf"), "--config",
                 _config_json(tmp_path / "c.json", model)]) == 1
    err = capsys.readouterr().err
    assert "does not match its config (llama): missing ['model.layers.1.mlp.gate_proj.weight'" in err


def test_whole_tree_flax_file(tmp_path, gptj_dir):
    """EasyLM's ``flax_params::`` format: ``flax.serialization.msgpack_serialize`` of the whole tree."""
    model = _load(gptj_dir)
    tree: dict = {}
    for key, arr in easylm_gptj_params(model).items():
        node = tree
        for k in key[:-1]:  # no "params" level, as convert_hf_to_easylm.py --streaming=False writes it
            node = node.setdefault(k, {})
        payload = msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")), use_bin_type=True)
        node[key[-1]] = msgpack.ExtType(1, payload)
    path = tmp_path / "flax_params"
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    out = tmp_path / "hf"
    assert main(["convert", "easylm", str(path), str(out), "--config", _config_json(tmp_path / "c.json", model),
                 "--check", "--no-progress"]) == 0
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(logits_of(_load(out), ids), logits_of(model, ids), atol=ATOL, rtol=0)


def test_heads_that_do_not_divide(tmp_path, llama_dir, capsys):
    model = _load(llama_dir)
    stream = write_easylm_stream(tmp_path / "s", easylm_llama_params(model))
    config = json.loads(_config_json(tmp_path / "c.json", model) and (tmp_path / "c.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps({**config, "num_attention_heads": 3}))
    assert main(["convert", "easylm", str(stream), str(tmp_path / "hf"), "--config", str(tmp_path / "c.json")]) == 1
    assert "no valid LLaMA config" in capsys.readouterr().err


def test_easylm_base_model_names_as_config(tmp_path):
    """EasyLM HEAD's --llama.base_model names carry eps, context, KV heads and rope_theta; checked
    against the weights' shapes (a stream's shapes only: nothing is read)."""
    stream = EasyLMStream.__new__(EasyLMStream)
    stream.path = tmp_path / "s"
    h, i, v = 4096, 11008, 32000
    stream.shapes = {("transformer", "wte", "embedding"): (v, h),
                     ("transformer", "h", "0", "feed_forward", "w1", "kernel"): (h, i),
                     ("transformer", "h", "0", "attention", "wk", "kernel"): (h, h),
                     **{("transformer", "h", str(n), "attention_norm", "kernel"): (h,) for n in range(32)}}
    shape, config = easylm.llama_config_for(stream, "llama2_7b", None, None, None)
    assert (shape.norm_eps, config.max_position_embeddings, shape.n_kv_heads) == (1e-5, 4096, 32)
    with pytest.raises(ValueError, match="intermediate_size 14336 in the config, 11008 in the checkpoint") as e:
        easylm.llama_config_for(stream, "llama3_8b", None, None, None)
    assert "num_key_value_heads 8 in the config, 32" in str(e.value)
