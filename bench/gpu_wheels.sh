#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels that bench/gpu.sh needs and the GPU machine's
# image lacks, into .whl/ at the repository root (gitignored; it travels to the GPU machine with
# the code when the device tool's call names it in `carry`). The image ('cuda', see
# /work/.library/device/KINDS.md) runs Python 3.12 on x86-64 with torch 2.11, triton 3.6,
# transformers 5.17 (too old for coh, see below), accelerate 1.15, peft, pyarrow, pandas, xxhash, huggingface-hub, httpx, anyio,
# click, h11, psutil, msgpack, sentencepiece, matplotlib, tensorboard, pyyaml, tokenizers,
# safetensors; it has no trl, datasets (nor its dill and multiprocess), liger-kernel, fastapi,
# pydantic or uvicorn. One version of each, no dependencies resolved (--no-deps): every
# requirement of these wheels that the image lacks is listed here.
#
#   bench/gpu_wheels.sh [DIR]      # default .whl ; prints the sizes (about 20 MB in all; the limit is 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
mkdir -p "$DIR"
WHEELS=(
  # The image's transformers 5.17 cannot run coh train: its LLaMA forward indexes hidden states with a
  # 1-D logits_to_keep only, and coh passes a 2-D boolean mask (found by running bench/train_throughput.py
  # here under transformers 5.17: IndexError in modeling_llama). So the version coh is developed with comes
  # along (it accepts the image's huggingface-hub 1.33, tokenizers 0.23.2, safetensors 0.8.0), with the
  # peft it is tested with.
  transformers==5.24.0 peft==0.21.2
  liger-kernel==0.8.5          # loss_kernel=liger (Triton kernels; needs torch and triton, both in the image)
  trl==1.16.0                  # the peer in bench/train_throughput.py
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19   # coh data / coh train, and TRL
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 opentelemetry-api==1.45.2 importlib-metadata==8.7.0
  uvicorn==0.54.0              # coh serve
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DIR" "${WHEELS[@]}"
ls -l "$DIR"/*.whl | awk '{printf "%9.2f MB  %s\n", $5 / 1e6, $9}'
du -cb "$DIR"/*.whl | tail -1 | awk '{printf "%9.2f MB in all (limit: 64 MiB with the code)\n", $1 / 1e6}'
