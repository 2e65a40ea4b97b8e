"""Sharded (DCP) training checkpoint -> consolidated HF safetensors, in bounded memory."""

from __future__ import annotations

import gc
import json
import warnings
import weakref

import pytest
import torch

from coh.cli import main
from coh.convert import sharded
from coh.convert.safetensors_io import ShardWriter, parse_size
from coh.convert.sharded import export_sharded_checkpoint, plan_groups

from .conftest import ATOL, logits_of, sample_ids, tiny_gptj, tiny_llama


def write_dcp_checkpoint(ckpt, model, tokenizer):
    """What FSDP training writes: CKPT/model_sharded/ (keys = HF state-dict names) + config + tokenizer + coh.json."""
    import torch.distributed.checkpoint as dcp

    ckpt.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({k: v.clone() for k, v in model.state_dict().items()}, checkpoint_id=str(ckpt / "model_sharded"),
                 no_dist=True)
    model.config.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    (ckpt / "coh.json").write_text(json.dumps({"phrases": {"good": "A helpful answer:"}, "mode": "coh"}))
    return ckpt


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory, llama_tokenizer):
    root = tmp_path_factory.mktemp("sharded_llama")
    model = tiny_llama(root / "model", llama_tokenizer, tied=True)
    return write_dcp_checkpoint(root / "ckpt", model, llama_tokenizer), model


def test_export_same_logits_tied_not_written(tmp_path, tied_llama, capsys):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt, model = tied_llama
    out = export_sharded_checkpoint(ckpt, tmp_path / "hf", max_shard_size="20KB", progress=False)
    assert "not written: lm_head.weight (tied to model.embed_tokens.weight)" in capsys.readouterr().out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(files) > 2 and set(index["weight_map"].values()) == {f.name for f in files}
    assert "lm_head.weight" not in index["weight_map"]
    for f in files:  # no shard over the cap, unless it is one tensor larger than the cap
        with safe_open(str(f), "pt") as st:
            sizes = [st.get_tensor(n).numel() * 4 for n in st.keys()]  # noqa: SIM118
        assert sum(sizes) <= parse_size("20KB") or len(sizes) == 1
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(logits_of(converted, ids), logits_of(model, ids), atol=ATOL, rtol=0)
    assert json.loads((out / "coh.json").read_text())["mode"] == "coh"
    assert AutoTokenizer.from_pretrained(out)("hi").input_ids == AutoTokenizer.from_pretrained(ckpt)("hi").input_ids


def test_at_most_one_group_resident(tmp_path, tied_llama, monkeypatch):
    """Instrumented dcp.load and shard writer: when a group is loaded, no tensor of an earlier group
    is alive and the writer holds nothing; each group stays within the shard cap (or is one
    larger tensor)."""
    import torch.distributed.checkpoint as dcp

    from coh.convert import safetensors_io

    writers: list[ShardWriter] = []

    class RecordedWriter(ShardWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            writers.append(self)

    ckpt, _ = tied_llama
    real_load = dcp.load
    earlier: list[weakref.ref] = []
    calls: list[tuple[int, int, int, int]] = []  # (tensors, bytes, earlier tensors alive, bytes in the writer)

    def load(state_dict, **kwargs):
        gc.collect()
        alive = sum(r() is not None for r in earlier)
        calls.append((len(state_dict), sum(t.numel() * t.element_size() for t in state_dict.values()), alive,
                      sum(w.buffer_bytes for w in writers)))
        real_load(state_dict, **kwargs)
        earlier.extend(weakref.ref(t) for t in state_dict.values())

    monkeypatch.setattr(dcp, "load", load)
    monkeypatch.setattr(safetensors_io, "ShardWriter", RecordedWriter)
    cap = parse_size("12KB")
    export_sharded_checkpoint(ckpt, tmp_path / "hf", max_shard_size=cap, progress=False)
    assert len(calls) > 3 and len(writers) == 1
    assert all(alive == 0 and held == 0 for _, _, alive, held in calls), calls
    assert all(size <= cap or n == 1 for n, size, _, _ in calls), calls
    assert writers[0].peak_buffer_bytes <= max(cap, max(size for _, size, _, _ in calls))


def test_gptj_and_dtype(tmp_path, bpe_tokenizer):
    from transformers import AutoModelForCausalLM

    model = tiny_gptj(tmp_path / "model", bpe_tokenizer)
    ckpt = write_dcp_checkpoint(tmp_path / "ckpt", model, bpe_tokenizer)
    assert main(["convert", "sharded", str(ckpt), str(tmp_path / "hf"), "--check", "--no-progress"]) == 0
    out = export_sharded_checkpoint(ckpt, tmp_path / "bf16", dtype="bfloat16", progress=False)
    converted = AutoModelForCausalLM.from_pretrained(out)
    assert converted.dtype == torch.bfloat16
    assert torch.equal(converted.lm_head.bias, model.lm_head.bias.to(torch.bfloat16))


def test_missing_shard_file(tmp_path, tied_llama, capsys):
    import shutil

    ckpt, _ = tied_llama
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    for f in (broken / "model_sharded").glob("*.distcp"):
        f.unlink()
    assert main(["convert", "sharded", str(broken), str(tmp_path / "hf")]) == 1
    assert "missing shard file(s) __0_0.distcp" in capsys.readouterr().err
    assert main(["convert", "sharded", str(tmp_path / "nowhere"), str(tmp_path / "hf2")]) == 1
    assert "config.json: missing" in capsys.readouterr().err


def test_config_mismatch(tmp_path, tied_llama, capsys):
    import shutil

    ckpt, _ = tied_llama
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3, "intermediate_size": 96}))
    assert main(["convert", "sharded", str(broken), str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert "model_sharded does not match its config (llama)" in err and "model.layers.2.self_attn.q_proj.weight" in err
    assert "model.layers.0.mlp.gate_proj.weight: (80, 32) stored, (96, 32) in the config" in err


def test_plan_groups_and_writer_cut_alike(tmp_path):
    sizes = [("a", 5), ("b", 5), ("c", 12), ("d", 3), ("e", 3), ("f", 4)]
    assert plan_groups(sizes, 10) == [["a", "b"], ["c"], ["d", "e", "f"]]
    writer = ShardWriter(tmp_path, 10 * 4)  # float32: 4 bytes per element
    for name, n in sizes:
        writer.add(name, torch.zeros(n))
    assert [names for _, names in writer.files] == [["a", "b"], ["c"]]  # the last group is still buffered
    writer.close()
    assert writer.peak_buffer_bytes == 12 * 4  # one tensor larger than the cap, alone


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("20KB") == 20_000 and parse_size("2GiB") == 2 * 2**30
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="expected a size"):
        parse_size("five gigs")


def test_sharded_module_name():
    assert sharded.SHARDED_DIR == "model_sharded"  # the trainer writes here


def test_export_in_place(tmp_path, tied_llama):
    """The trainer may export beside model_sharded/: the checkpoint folder becomes an HF folder."""
    import shutil

    from transformers import AutoModelForCausalLM

    ckpt, model = tied_llama
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt, folder)
    assert export_sharded_checkpoint(folder, folder, progress=False) == folder
    ids = sample_ids(model.config.vocab_size)
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(folder), ids), logits_of(model, ids),
                               atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="already holds safetensors"):
        export_sharded_checkpoint(folder, folder, progress=False)
