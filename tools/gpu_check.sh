#!/usr/bin/env bash
# The GPU check, to run on a machine with an NVIDIA GPU, from the repository root, after
# `make build-cuda` (here or there). It checks the CUDA build against the CPU on the example
# images and 1024 generated ones (f32: identical top-1 and max |Δprob| ≤ 1e-4; f16/bf16: agreement
# reported), prints images/s at batch 1, 64 and 256, and checks that a missing GPU is a clear
# error. A few minutes in all.
#
# Usage: tools/gpu_check.sh [BUILD_DIR]      (default: target/cuda/release)
set -euo pipefail
dir=${1:-target/cuda/release}
for f in "$dir/examples/gpu_check" "$dir/classify"; do
  [ -x "$f" ] || { echo "gpu_check.sh: $f not found: run 'make build-cuda' first" >&2; exit 2; }
done

# The CUDA runtime libraries: a toolkit's, or those of an installed PyTorch's wheels.
if sp=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null); then
  for d in "$sp"/nvidia/cu13/lib "$sp"/nvidia/cudnn/lib "$sp"/nvidia/*/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  export LD_LIBRARY_PATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== correctness and throughput"
"$dir/examples/gpu_check" --device cuda:0 examples/images/*.png

echo "== an absent GPU is a clear error, not a panic"
set +e
out=$("$dir/classify" --device cuda:99 --weights /nonexistent.safetensors examples/images/cifar100_00_49.png 2>&1)
code=$?
set -e
echo "$out"
if [ "$code" -ne 2 ] || echo "$out" | grep -q panicked; then
  echo "FAIL: expected exit status 2 with a message, got $code" >&2
  exit 1
fi
echo "PASS"
