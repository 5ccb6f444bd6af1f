#!/usr/bin/env bash
# Builds `classify` and `densenet` with a GPU feature (cuda or cudnn).
#
# With a CUDA toolkit installed (nvcc on PATH or in $CUDA_HOME/bin) this is a plain
# `cargo build --release --features FEATURE`. Without one, a build-only CUDA 13.0 toolkit is made
# from PyPI wheels (tools/setup-cuda13.sh, ~2 GB, cached under target/cuda-toolkit) and the build
# targets Hopper (sm_90a, H100/H200) unless CUDA_COMPUTE_CAP says otherwise. Either way the
# result goes to target/FEATURE/release/, leaving the CPU build in target/release/ untouched.
set -euo pipefail
feature=${1:?usage: build_cuda.sh cuda|cudnn}
case "$feature" in cuda|cudnn) ;; *) echo "build_cuda.sh: unknown feature '$feature' (cuda or cudnn)" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target_dir="$root/target/$feature"

if command -v nvcc >/dev/null 2>&1 || [ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then
  echo "build_cuda.sh: using the installed CUDA toolkit ($(command -v nvcc || echo "$CUDA_HOME/bin/nvcc"))"
else
  prefix="$root/target/cuda-toolkit"
  if [ ! -x "$prefix/cuda13/bin/nvcc" ]; then
    echo "build_cuda.sh: no CUDA toolkit found; making a build-only CUDA 13.0 toolkit from PyPI wheels in $prefix"
    cargo fetch --locked
    bash tools/setup-cuda13.sh "$prefix"
  fi
  export CUDA_HOME="$prefix/cuda13"
  export PATH="$CUDA_HOME/bin:$PATH"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
  # Link against the stub driver library: the real libcuda.so.1 comes with the GPU's driver.
  export LIBRARY_PATH="$CUDA_HOME/lib/stubs:$CUDA_HOME/lib:${LIBRARY_PATH:-}"
  echo "build_cuda.sh: CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
fi

cargo build --release --locked --features "$feature" --target-dir "$target_dir" --bins --example gpu_check
echo "build_cuda.sh: built $target_dir/release/classify, $target_dir/release/densenet and $target_dir/release/examples/gpu_check"
