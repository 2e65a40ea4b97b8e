#!/usr/bin/env bash
# The GPU path of issue 18 as one command: at most 8 minutes on one H100/H200, JSON under $OUT.
#
#   bench/gpu.sh            # on the GPU machine (OUT defaults to ./gpu-out)
#   bench/gpu.sh --smoke    # the same script end to end on a CPU with tiny sizes (tests/bench/test_gpu_smoke.py)
#
# Parts, each time-boxed (a part that fails or runs out of time loses only its own JSON):
#   a  train throughput, bench/train_throughput.py --preset gpu-1b, bf16: coh (sdpa rows; flex attention one
#      packed sequence, FCM off and on) against TRL packed (sdpa; flex): tokens/s, peak memory, MFU  -> a_train.json
#   b  FSDP2 on one device (torchrun, nproc 1) and a bf16 resume check       -> b_fsdp.json      (bench/gpu_checks.py fsdp)
#   c  the chunked loss against Liger's fused linear cross-entropy: parity, time, memory  -> c_parity.json
#      (bench/gpu_checks.py loss), and the 1B training run with --loss-kernel liger  -> c_train.json
#   d  --compile (torch.compile of each decoder layer): the 1B training run, its speed-up over a's coh  -> d_compile.json
#   e  `coh serve` generation throughput with 1 and 32 concurrent clients   -> e_serve.json     (bench/serve_throughput.py)
# then gpu.json (every part, its status and the environment) and gpu.log (everything printed): 8 files,
# the most the device tool brings back. A summary table is printed last.
#
# What it expects in the image ('cuda', /work/.library/device/KINDS.md): python3 (3.12) with torch >= 2.5 built
# for CUDA, triton, accelerate, peft, safetensors, tokenizers, huggingface-hub, pyarrow,
# pandas, xxhash, numpy, pyyaml, tqdm, matplotlib, tensorboard, httpx, anyio, h11, click, psutil, msgpack,
# sentencepiece, protobuf; and the torchrun module. What it lacks comes as wheels in .whl/ (bench/gpu_wheels.sh:
# transformers 5.24 and peft 0.21 (the image's transformers 5.17 fails on coh's 2-D logits_to_keep), trl,
# datasets, dill, multiprocess, liger-kernel, fastapi, starlette, pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions, opentelemetry-api, importlib-metadata, uvicorn), installed with
# pip --no-index into $WORK/site. Nothing is downloaded.
#
# The device tool's call, after bench/gpu_wheels.sh in the checkout that the tool sends (the session's own
# repository root: .whl/ must be there, ~20 MB; the code ~6 MB; the limit 64 MiB):
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
OUT="${OUT:-$REPO/gpu-out}"
WORK="${COH_GPU_WORK:-$(mktemp -d /tmp/coh-gpu.XXXXXX)}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$WORK/status"
exec > >(tee -a "$OUT/gpu.log") 2>&1
START=$(date +%s)
echo "bench/gpu.sh $([[ $SMOKE == 1 ]] && echo --smoke) | $(date -u '+%Y-%m-%d %H:%M UTC') | $(hostname) | OUT=$OUT WORK=$WORK"

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ $SMOKE == 0 ]]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
      && export PYTHONPATH="$REPO/src:$WORK/site${PYTHONPATH#"$REPO/src"}" || echo "warning: installing .whl/ failed"
  else
    echo "warning: no .whl/ (run bench/gpu_wheels.sh and carry .whl): using what the image has"
  fi
fi

# Sizes. Full: the issue's gpu-1b preset (LLaMA 2048 x 16, vocab 32k, sequence 2048), the builtin hh-rlhf sample.
if [[ $SMOKE == 1 ]]; then
  TRAIN=(--rows 8 --hidden 32 --layers 1 --heads 2 --vocab 400 --max-length 512 --micro-batch-tokens 1024 --skip-steps 1)
  FSDP=(--rows 8 --hidden 32 --layers 1 --heads 2 --vocab 400 --max-length 512 --micro-batch-tokens 1024)
  LOSS=(--hidden 128 --layers 1 --vocab 1000 --tokens 2048)
  SERVE=(--hidden 32 --layers 1 --clients 1,4 --requests 1 --max-tokens 8)
  BUDGET=(env=120 a=240 b=240 c=120 d=300 e=150)
else
  TRAIN=(--preset gpu-1b --rows 300 --skip-steps 2)
  FSDP=(--rows 60 --hidden 512 --layers 4 --heads 8 --vocab 8000 --max-length 1024 --micro-batch-tokens 4096)
  LOSS=(--tokens 16384)
  SERVE=(--clients 1,32 --requests 2 --max-tokens 128)
  BUDGET=(env=20 a=170 b=45 c=65 d=110 e=50)  # seconds, 460 in all: under 8 minutes with the install and summary
fi
budget() { for kv in "${BUDGET[@]}"; do [[ ${kv%%=*} == "$1" ]] && echo "${kv#*=}"; done; }

# part NAME COMMAND...: runs it under its time box, records exit status and seconds in $WORK/status/NAME.json.
part() {
  local name=$1 limit t0 rc
  shift
  limit=$(budget "$name")
  echo; echo "=== part $name (at most ${limit} s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  printf '{"exit_status": %d, "seconds": %d, "limit_s": %d, "timed_out": %s}\n' "$rc" "$(( $(date +%s) - t0 ))" \
    "$limit" "$([[ $rc == 124 || $rc == 137 ]] && echo true || echo false)" > "$WORK/status/$name.json"
  echo "=== part $name: exit status $rc after $(( $(date +%s) - t0 )) s"
}

part env "$PY" - "$WORK/status/env-info.json" <<'PYEOF'
import importlib.metadata as md, json, os, platform, sys
import torch
names = ["torch", "triton", "transformers", "accelerate", "peft", "trl", "datasets", "liger-kernel", "pyarrow",
         "fastapi", "uvicorn", "pydantic", "safetensors", "tokenizers", "huggingface-hub", "regex", "httpx"]
versions = {}
for n in names:
    try:
        versions[n] = md.version(n)
    except md.PackageNotFoundError:
        versions[n] = None
info = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.node(),
        "cuda": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "versions": versions}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, memory_gib=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}",
                torch_cuda=torch.version.cuda)
missing = [n for n, v in versions.items() if v is None]
print(json.dumps(info, indent=1))
if missing:
    print("missing:", ", ".join(missing))
json.dump(info, open(sys.argv[1], "w"))
import coh, datasets, fastapi, trl, uvicorn  # noqa: E401,F401  (the imports every part needs)
PYEOF

part a "$PY" bench/train_throughput.py "${TRAIN[@]}" --work-dir "$WORK/train" --json "$OUT/a_train.json" \
  --runs coh,trl-packed,coh-flex,coh-flex-fcm,trl-packed-flex
part b "$PY" bench/gpu_checks.py fsdp "${FSDP[@]}" --work-dir "$WORK/fsdp" --json "$OUT/b_fsdp.json"
part c bash -c "\"$PY\" bench/gpu_checks.py loss ${LOSS[*]} --json \"$OUT/c_parity.json\"; p=\$?; \
\"$PY\" bench/train_throughput.py ${TRAIN[*]} --work-dir \"$WORK/train\" --json \"$OUT/c_train.json\" --runs coh-liger \
&& exit \$p"
part d "$PY" bench/train_throughput.py "${TRAIN[@]}" --work-dir "$WORK/train" --json "$OUT/d_compile.json" --runs coh-compile
SERVE_MODEL=()
[[ -f "$WORK/train/model/config.json" ]] && SERVE_MODEL=(--model "$WORK/train/model")
part e "$PY" bench/serve_throughput.py "${SERVE[@]}" "${SERVE_MODEL[@]}" --json "$OUT/e_serve.json"

"$PY" bench/gpu_summary.py --out "$OUT" --status "$WORK/status" --smoke "$SMOKE" --seconds "$(( $(date +%s) - START ))"
rc=$?
[[ -z "${COH_GPU_WORK:-}" ]] && rm -rf "$WORK"
exit $rc
