"""lm-evaluation-harness through ``coh eval harness``: a local multiple-choice task scored against a
hand-computed reference, and the parity of the in-process and the HTTP (``coh serve``) paths."""

from __future__ import annotations

import pytest
import torch

from coh.cli import main
from coh.eval.config import HarnessConfig
from coh.eval.harness import completions_url, lm_eval_model, run_harness
from tests.eval.conftest import MC_ROWS, MC_TASK, needs_serve


def reference_logliks(model_dir) -> list[list[float]]:
    """log p(" " + choice | "Question: ...\\nAnswer:") per row and choice, the way lm-eval splits
    context and continuation: encode both together, the continuation is what follows the context."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for row in MC_ROWS:
        context = f"Question: {row['question']}\nAnswer:"
        ctx = tok(context).input_ids
        scores = []
        for choice in row["choices"]:
            whole = tok(context + " " + choice).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole))))
        out.append(scores)
    return out


def sample_logliks(raw: dict) -> list[list[float]]:
    samples = sorted(raw["samples"][MC_TASK], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_in_process_harness_matches_a_hand_computed_reference(tiny_llama_dir, mc_task_dir, tmp_path):
    cfg = HarnessConfig(model=str(tiny_llama_dir), tasks=(MC_TASK,), include_path=str(mc_task_dir), device="cpu",
                        log_samples=True)
    result, raw = run_harness(cfg, tmp_path)
    reference = reference_logliks(tiny_llama_dir)
    assert sample_logliks(raw) == [pytest.approx(r, abs=1e-3) for r in reference]
    accuracy = sum(max(range(3), key=s.__getitem__) == row["label"] for s, row in zip(reference, MC_ROWS)) / 6
    assert result.metrics[f"{MC_TASK}/acc"] == pytest.approx(accuracy)
    assert set(result.metrics) == {f"{MC_TASK}/acc"} and result.counts == {f"{MC_TASK}/examples": 6}
    assert result.settings["model_args"]["add_bos_token"] is True  # the LLaMA-style tokenizer adds BOS itself
    assert (tmp_path / "lm_eval_results.json").exists() and (tmp_path / "lm_eval_samples.json").exists()


def test_http_model_args_and_errors(tiny_llama_dir, tiny_bpe_dir, mc_task_dir, monkeypatch):
    assert completions_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1/completions"
    assert completions_url("http://h/v1/completions") == "http://h/v1/completions"
    monkeypatch.setenv("MY_KEY", "secret")
    kind, args = lm_eval_model(HarnessConfig(base_url="http://127.0.0.1:8000/v1", served_model="m",
                                             tokenizer=str(tiny_bpe_dir), api_key_env="MY_KEY"))
    assert kind == "local-completions"
    assert args["base_url"] == "http://127.0.0.1:8000/v1/completions" and args["model"] == "m"
    assert args["tokenizer_backend"] == "huggingface" and args["tokenized_requests"] is True
    assert args["add_bos_token"] is False and args["auth_token"] == "secret"  # byte-level BPE adds no BOS
    with pytest.raises(ValueError, match="NO_SUCH_KEY: the variable is not set"):
        lm_eval_model(HarnessConfig(base_url="http://h/v1", served_model="m", api_key_env="NO_SUCH_KEY"))
    with pytest.raises(ValueError, match="exactly one of"):
        HarnessConfig(model="x", base_url="http://h/v1")
    with pytest.raises(FileNotFoundError, match="no such folder of task YAMLs"):
        run_harness(HarnessConfig(model=str(tiny_llama_dir), tasks=(MC_TASK,), include_path="/no/such/dir"))


# -- parity with `coh serve` ---------------------------------------------------------------------------
@needs_serve
def test_http_and_in_process_paths_give_the_same_scores(tiny_llama_dir, mc_task_dir, serve):
    common = {"tasks": (MC_TASK,), "include_path": str(mc_task_dir), "log_samples": True}
    local, local_raw = run_harness(HarnessConfig(model=str(tiny_llama_dir), device="cpu", **common))
    remote, remote_raw = run_harness(HarnessConfig(base_url=serve(tiny_llama_dir), tokenizer=str(tiny_llama_dir),
                                                   **common))
    assert remote.settings["model_args"]["add_bos_token"] is True
    assert sample_logliks(remote_raw) == [pytest.approx(r, abs=1e-4) for r in sample_logliks(local_raw)]
    assert remote.metrics == pytest.approx(local.metrics)


def test_no_progress_silences_lm_eval_bars_too(tiny_llama_dir, mc_task_dir, tmp_path, capsys):
    argv = ["eval", "harness", "--model", str(tiny_llama_dir), "--tasks", MC_TASK, "--include-path",
            str(mc_task_dir), "--device", "cpu", "--limit", "2"]
    assert main([*argv, "-o", str(tmp_path / "bars")]) == 0
    assert "Running loglikelihood requests" in capsys.readouterr().err  # lm-eval's own bar
    assert main([*argv, "--no-progress", "-o", str(tmp_path / "quiet")]) == 0
    err = capsys.readouterr().err
    assert "Running loglikelihood requests" not in err and "%|" not in err, err
    import tqdm

    with tqdm.tqdm(range(1)) as bar:
        assert not bar.disable  # bars are back after the run
