#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time: `make fuzz` (FUZZ_SECONDS per target, default 90).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# use the nightly-only sanitizer flags. A crash stops the run with status 1 and leaves the input
# under fuzz/artifacts/TARGET/; minimise it with `cargo fuzz tmin TARGET FILE` and commit it under
# tests/fixtures/hostile/ with a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-90}"
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2; exit 2; }

mkdir -p fuzz/corpus/image_decode fuzz/corpus/safetensors_load
cp fuzz/seeds/image_decode/* examples/images/*.png tests/fixtures/hostile/*.jpg fuzz/corpus/image_decode/
cp fuzz/seeds/safetensors_load/* tests/fixtures/seed_small.safetensors fuzz/corpus/safetensors_load/
# PyTorch checkpoints too: `Model::load` recognises them by content.
cp tests/fixtures/interop/bc_small.pth tests/fixtures/interop/malicious.pth \
    tests/fixtures/interop/tv_imagenet_small_legacy.pth tests/fixtures/hostile/*.pth fuzz/corpus/safetensors_load/

# -rss_limit_mb: the library's own bounds (512 MiB of pixels, files mapped not read) stay well below.
for target in image_decode safetensors_load; do
    max_len=65536
    [ "$target" = safetensors_load ] && max_len=131072
    echo "== $target: ${seconds}s"
    cargo fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1
done
