"""``bench/gpu.sh --smoke``: the GPU script end to end on a CPU with tiny sizes, so that the one
GPU run it is made for cannot fail on a typo. Every part runs what a CPU can (train throughput of
coh and TRL packed, FSDP2 with the resume check, compile, coh serve); what needs CUDA (flex
attention, Liger) must say ``skipped: no CUDA`` in the JSON rather than vanish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FILES = ["a_train.json", "b_fsdp.json", "c_parity.json", "c_train.json", "d_compile.json", "e_serve.json",
         "gpu.json", "gpu.log"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs bench/gpu.sh itself, not the CPU smoke run")
    out = tmp_path_factory.mktemp("gpu-out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "COH_GPU_WORK": str(tmp_path_factory.mktemp("gpu-work"))}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--smoke"], capture_output=True, text=True,
                          env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "targets: MFU" in proc.stdout  # the summary table came last
    return out


def read(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def test_every_part_ran_and_at_most_eight_files_come_back(smoke):
    assert sorted(p.name for p in smoke.iterdir()) == sorted(FILES)  # the device tool brings back 8 files
    summary = read(smoke, "gpu.json")
    assert summary["smoke"] is True and summary["failed"] is False
    assert {k: v["exit_status"] for k, v in summary["parts"].items()} == dict.fromkeys(["env", "a", "b", "c", "d", "e"], 0)
    assert summary["environment"]["cuda"] is False


def test_train_throughput_measures_coh_and_trl_packed_and_skips_the_cuda_runs(smoke):
    train = read(smoke, "a_train.json")
    assert set(train["results"]) == {"coh", "trl-packed"}
    for r in train["results"].values():
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["peak_mb"] > 0 and r["skipped_steps"] == 1
    assert train["problems"] == {n: {"skipped": "no CUDA"} for n in ("coh-flex", "coh-flex-fcm", "trl-packed-flex")}
    assert train["ratios"]["coh/trl-packed speed"] > 0
    assert read(smoke, "gpu.json")["targets"]["best_coh_vs_trl_packed"] == train["ratios"]["coh/trl-packed speed"]


def test_fsdp_resume_is_exact(smoke):
    fsdp = read(smoke, "b_fsdp.json")
    assert fsdp["passed"] is True and fsdp["dtype"] == "bfloat16"
    assert sorted(fsdp["losses_straight"]) == ["1", "2", "3", "4"]
    assert fsdp["losses_straight"] == fsdp["losses_resumed"] and fsdp["max_weight_difference"] == 0.0


def test_liger_parts_say_why_they_did_not_run(smoke):
    assert read(smoke, "c_parity.json") == {"skipped": "no CUDA"}
    liger = read(smoke, "c_train.json")
    assert liger["results"] == {} and liger["problems"] == {"coh-liger": {"skipped": "no CUDA"}}


def test_compile_trained_and_serve_answered(smoke):
    compiled = read(smoke, "d_compile.json")["results"]["coh-compile"]
    coh = read(smoke, "a_train.json")["results"]["coh"]
    assert compiled["tokens"] == coh["tokens"]  # the same records, the same steps skipped
    assert compiled["final_loss"] == pytest.approx(coh["final_loss"], rel=1e-3)
    serve = read(smoke, "e_serve.json")
    assert [r["clients"] for r in serve["results"]] == [1, 4]
    assert all(0 < r["completion_tokens"] <= r["requests"] * 8 for r in serve["results"])  # --max-tokens 8
