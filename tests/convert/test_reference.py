"""Our converters on files written by the other side's own code (tests/fixtures/reference/, made by
``make_reference_fixtures.py`` from EasyLM fe5b2c3, lhao499/chain-of-hindsight 9f55cea,
llama-cookbook 0e00335 and meta-llama/llama 689c7f2; see the README there). The logits we compare
with were computed by their code too: EasyLM's and the original's Flax models, Meta's ``model.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from coh.cli import main

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
EASYLM, META, GPTJ = REF / "easylm", REF / "meta", REF / "coh" / "gptj"
TOL = 1e-4  # the bar: max |logit difference| <= 1e-4


def _logits(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "logits.npz") as z:
        return {k: z[k] for k in z.files}


def _hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def _read_stream(path: Path) -> list[tuple[tuple[str, ...], tuple[list[int], str, bytes]]]:
    """The file as EasyLM's ``load_checkpoint`` sees it: (key, (shape, dtype, raw bytes)) in file
    order, decoded with msgpack alone (flax's ndarray extension is type 1)."""
    def ext(code, data):
        assert code == 1, code
        shape, dtype, raw = msgpack.unpackb(data, raw=False)
        return list(shape), dtype, raw

    with path.open("rb") as f:
        return [(tuple(k), msgpack.unpackb(v, ext_hook=ext, raw=False)) for k, v in msgpack.Unpacker(f, raw=False)]


# -- EasyLM's own files -> HF ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "hf", "tied"), [
    ("llama_gqa_fp32.stream", "hf_llama_gqa", False), ("llama_gqa_bf16.stream", "hf_llama_gqa", False),
    ("llama_gqa.msgpack", "hf_llama_gqa", False),
    ("llama_tied_fp32.stream", "hf_llama_tied", True), ("llama_tied_bf16.stream", "hf_llama_tied", True),
])
def test_easylm_converter_output_to_hf(tmp_path, name, hf, tied, capsys):
    logits = _logits(EASYLM)
    out = tmp_path / "hf"
    assert main(["convert", "easylm", str(EASYLM / name), str(out), "--config", str(EASYLM / hf), "--check",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "logits check OK" in printed and "128 distinct token ids" in printed
    assert "no params level" in printed or name.endswith(".msgpack")
    ours = _hf_logits(out, logits["prompt_ids"])
    # against EasyLM's own Flax forward on the same file
    assert _max_diff(ours, logits[name]) <= TOL
    if "fp32" in name or name.endswith(".msgpack"):  # and, unrounded, against the HF model EasyLM converted
        assert _max_diff(ours, logits[hf]) <= TOL
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and config["num_key_value_heads"] == 2
    assert config["pad_token_id"] == 0  # from the --config's pad_token_id, not dropped
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as st:
        assert ("lm_head.weight" in st.keys()) is not tied  # noqa: SIM118
        assert st.get_tensor("model.norm.weight").dtype == (torch.bfloat16 if "bf16" in name else torch.float32)


@pytest.mark.parametrize("name", ["streaming_params", "streaming_train_state", "converted_fp32.stream"])
def test_original_gptj_files_to_hf(tmp_path, name, capsys):
    """The original CoH code's save_all (bf16 params; fp32 train state) and convert_checkpoint.py output."""
    logits = _logits(GPTJ)
    out = tmp_path / "hf"
    assert main(["convert", "easylm", str(GPTJ / name), str(out), "--config", str(GPTJ / "gptj_config.json"),
                 "--check", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "logits check OK" in printed
    if name == "streaming_train_state":
        assert "params/params" in printed
        entries = _read_stream(GPTJ / name)
        others = sum(1 for k, _ in entries if k[:2] != ("params", "params"))
        assert others > 0 and f"skipped {others} non-parameter entries" in printed
    ours = _hf_logits(out, logits["prompt_ids"])
    assert _max_diff(ours, logits[name]) <= TOL  # the original's Flax GPT-J on the same file
    if name != "streaming_params":
        assert _max_diff(ours, logits["hf_gptj"]) <= TOL


# -- HF -> EasyLM: what EasyLM's converter writes, byte for byte ---------------------------------------------
@pytest.mark.parametrize(("hf", "dtype", "theirs"), [
    (EASYLM / "hf_llama_gqa", "float32", EASYLM / "llama_gqa_fp32.stream"),
    (EASYLM / "hf_llama_gqa", "bfloat16", EASYLM / "llama_gqa_bf16.stream"),
    (EASYLM / "hf_llama_tied", "float32", EASYLM / "llama_tied_fp32.stream"),
    (EASYLM / "hf_llama_tied", "bfloat16", EASYLM / "llama_tied_bf16.stream"),
    (GPTJ / "hf_gptj", "float32", GPTJ / "converted_fp32.stream"),
    (GPTJ / "hf_gptj", "bfloat16", GPTJ / "streaming_params"),
], ids=["gqa-fp32", "gqa-bf16", "tied-fp32", "tied-bf16", "gptj-fp32", "gptj-bf16"])
def test_to_easylm_identical_to_their_converter(tmp_path, hf, dtype, theirs, capsys):
    out = tmp_path / "ez"
    argv = ["convert", "to-easylm", str(hf), str(out), "--dtype", dtype, "--no-progress"]
    assert main(argv + (["--check", "--tolerance", "3e-2"] if dtype == "bfloat16" else ["--check"])) == 0
    assert "logits check OK" in capsys.readouterr().out
    ours, ref = _read_stream(out / "streaming_params"), _read_stream(theirs)
    assert [k for k, _ in ours] == [k for k, _ in ref]  # same keys (no params level, lm_head), same order
    for (key, a), (_, b) in zip(ours, ref):
        assert a == b, key  # shape, dtype name and every byte of the tensor
    assert (out / "streaming_params").read_bytes() == theirs.read_bytes()


def test_to_easylm_commands_per_target(tmp_path, capsys):
    assert main(["convert", "to-easylm", str(EASYLM / "hf_llama_gqa"), str(tmp_path / "a"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "python -m EasyLM.models.llama.llama_serve --load_checkpoint='params::" in printed
    assert "--llama.num_key_value_heads=2" in printed and "--load_llama_config" not in printed.split("original")[0]
    assert "cannot run this model: 2 KV heads for 4 attention heads" in printed
    assert main(["convert", "to-easylm", str(GPTJ / "hf_gptj"), str(tmp_path / "b"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "python -m coh.coh_serve_gptj --load_gptj_config='json::" in printed
    assert "EasyLM dropped GPT-J" in printed
    config = json.loads((tmp_path / "b" / "easylm_config.json").read_text())
    assert config["n_embd"] == 32 and config["rotary_dim"] == 4


@pytest.mark.parametrize(("hf", "target", "problem"), [
    (EASYLM / "hf_llama_gqa", "coh", "grouped-query attention"),
    (GPTJ / "hf_gptj", "easylm", "EasyLM dropped GPT-J"),
])
def test_to_easylm_refuses_what_the_target_cannot_run(tmp_path, hf, target, problem, capsys):
    out = tmp_path / "ez"
    assert main(["convert", "to-easylm", str(hf), str(out), "--target", target, "--no-progress"]) == 1
    assert problem in capsys.readouterr().err
    assert not (out / "streaming_params").exists()


def test_to_easylm_refuses_rope_theta_everywhere(tmp_path, capsys):
    """EasyLM HEAD's attention ignores rope_theta, the original's config has none."""
    folder = tmp_path / "theta"
    shutil.copytree(EASYLM / "hf_llama_gqa", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": 5000.0}))
    for target in ("easylm", "coh"):
        assert main(["convert", "to-easylm", str(folder), str(tmp_path / target), "--target", target]) == 1
        assert "rope_theta 5000" in capsys.readouterr().err


def test_to_easylm_check_rejects_a_params_level(tmp_path, monkeypatch, capsys):
    """The old writer's params/ level passed our own reader; --check reads as EasyLM's loader does."""
    from coh.convert import easylm

    real = easylm.write_stream
    monkeypatch.setattr(easylm, "write_stream", lambda path, tensors: real(path, ((("params", *k), t) for k, t in tensors)))
    assert main(["convert", "to-easylm", str(EASYLM / "hf_llama_gqa"), str(tmp_path / "ez"), "--check",
                 "--no-progress"]) == 1
    assert "needs a stream with no params level" in capsys.readouterr().err


def test_check_catches_one_wrong_embedding_row(tmp_path, monkeypatch, capsys):
    """Two swapped embedding rows: the vocabulary prompt holds every id, so --check fails."""
    from coh.convert import easylm

    real = easylm.easylm_to_torch

    def swapped(path, tensor, arch):
        name, t = real(path, tensor, arch)
        if name == "tok_embeddings.weight":
            t = t.clone()
            t[[100, 101]] = t[[101, 100]]
        return name, t

    monkeypatch.setattr(easylm, "easylm_to_torch", swapped)
    assert main(["convert", "easylm", str(EASYLM / "llama_gqa_fp32.stream"), str(tmp_path / "hf"), "--config",
                 str(EASYLM / "hf_llama_gqa"), "--check", "--no-progress"]) == 1
    assert "logits check FAILED" in capsys.readouterr().out


# -- Meta: Meta's converter's consolidated.*.pth and Meta's model.py logits -------------------------------------
@pytest.mark.parametrize("folder", ["consolidated_mp1", "consolidated_mp2"])
def test_meta_files_to_hf(tmp_path, folder, capsys):
    logits = _logits(META)
    out = tmp_path / "hf"
    assert main(["convert", "llama", str(META / folder), str(out), "--check", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "logits check OK" in printed and "rope.freqs" in printed  # Meta's converter writes it; counted
    ours = _hf_logits(out, logits["prompt_ids"])
    assert _max_diff(ours, logits[folder]) <= TOL  # Meta's Transformer, model parallel 1 or 2
    config = json.loads((out / "config.json").read_text())
    # params.json has no norm_eps: Meta's ModelArgs default (1e-5), not 1e-6
    assert "norm_eps" not in json.loads((META / folder / "params.json").read_text())
    assert config["rms_norm_eps"] == 1e-5 and config["num_key_value_heads"] == 2
    assert config["rope_parameters"]["rope_theta"] == 10000.0


def test_meta_pad_token_kept(tmp_path):
    """A tokenizer with a pad token gives the config its pad_token_id."""
    from coh.convert.meta_llama import load_sentencepiece_tokenizer

    tok = load_sentencepiece_tokenizer(META / "tokenizer.model")
    tok.pad_token = tok.unk_token
    tok.save_pretrained(tmp_path / "tok")
    out = tmp_path / "hf"
    assert main(["convert", "llama", str(META / "consolidated_mp1"), str(out), "--tokenizer", str(tmp_path / "tok"),
                 "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tok.unk_token_id


def test_meta_folder_without_tokenizer_says_so(tmp_path, capsys):
    folder = tmp_path / "meta"
    shutil.copytree(META / "consolidated_mp1", folder)
    (folder / "tokenizer.model").unlink()
    assert main(["convert", "llama", str(folder), str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert "tokenizer.model: missing" in err and "Give --tokenizer" in err and "Traceback" not in err
    assert main(["convert", "llama", str(folder), str(tmp_path / "hf"), "--tokenizer", str(tmp_path / "none")]) == 1
    assert "--tokenizer" in capsys.readouterr().err
