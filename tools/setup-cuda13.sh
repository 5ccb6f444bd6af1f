#!/usr/bin/env bash
# Build-only CUDA 13.0 "toolkit" from PyPI wheels for compiling candle (cuda/cudnn features) without a GPU.
# From the team's shared CUDA notes (shared/cuda/README.md); used by tools/build_cuda.sh.
# Usage: setup-cuda13.sh PREFIX   -> creates PREFIX/venv (wheels) and PREFIX/cuda13 (CUDA_HOME-style root)
set -euo pipefail
P=${1:-/tmp/cuda-build}
mkdir -p "$P"
python3 -m venv "$P/venv"
"$P/venv/bin/pip" install -q --no-deps \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14 nvidia-cudnn-cu13==9.21.1.3
SP=$("$P/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
C=$SP/nvidia/cu13; D=$SP/nvidia/cudnn/lib; R=$P/cuda13
mkdir -p "$R/lib/stubs"
ln -sfn "$C/bin" "$R/bin"; ln -sfn "$C/include" "$R/include"; ln -sfn "$C/nvvm" "$R/nvvm"
for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
  ln -sfn "$C/lib/lib$l" "$R/lib/lib$l"; ln -sfn "$C/lib/lib$l" "$R/lib/lib${l%%.so*}.so"
done
ln -sfn "$D/libcudnn.so.9" "$R/lib/libcudnn.so.9"; ln -sfn "$D/libcudnn.so.9" "$R/lib/libcudnn.so"
ln -sfn "$C/lib/libcudart_static.a" "$R/lib/libcudart_static.a"
# libcuda.so link stub (SONAME libcuda.so.1): every driver entry point cudarc knows returns CUDA_ERROR_NO_DEVICE.
CUDARC=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.10 | head -1)   # needs `cargo fetch` done first
grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u \
  | awk '{print "int " $1 "(void){return 100;}"}' > "$R/lib/stubs/libcuda_stub.c"
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$R/lib/stubs/libcuda.so" "$R/lib/stubs/libcuda_stub.c"
ln -sfn libcuda.so "$R/lib/stubs/libcuda.so.1"
# linker script so that `-lcudart` (emitted by candle-kernels) links the static cudart instead
mkdir -p "$P/cudart-static"; echo "INPUT($C/lib/libcudart_static.a)" > "$P/cudart-static/libcudart.so"
"$R/bin/nvcc" --version | tail -2
echo "CUDA_HOME=$R"
