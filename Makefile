# densenet: build, test, demo, lint. `make test` is what CI runs.
CARGO ?= cargo
IMAGES ?= examples/images/*.png

.PHONY: build test demo lint fmt doc bench bench-compare build-cuda build-cudnn bench-soak fuzz

build:
	$(CARGO) build --release

test:
	$(CARGO) test --all-targets
	$(CARGO) test --doc

demo: build
	./target/release/classify $(IMAGES)

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check

fmt:
	$(CARGO) fmt

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

bench:
	$(CARGO) bench --bench predict

# The engine beside ONNX Runtime (installed from PyPI into the git-ignored tools/.bench-venv),
# once per instruction set in ISA (comma-separated: avx512, avx2, portable).
BENCH_VENV ?= tools/.bench-venv
ISA ?= avx512,avx2
bench-compare:
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet onnxruntime onnx numpy safetensors
	$(CARGO) build --release --example engine_bench
	$(BENCH_VENV)/bin/python tools/bench_compare.py --isa $(ISA)

# GPU builds go to target/cuda and target/cudnn; without a CUDA toolkit, tools/build_cuda.sh makes a
# build-only one from PyPI wheels (see the README's "GPUs" section).
build-cuda:
	bash tools/build_cuda.sh cuda

build-cudnn:
	bash tools/build_cuda.sh cudnn

# Classifies a generated batch of image files for many rounds and prints resident memory per round
# (SOAK_ROUNDS, SOAK_BATCH); fails if memory grows. See the README's "Robustness" section.
bench-soak:
	$(CARGO) bench --bench soak

# Runs each cargo-fuzz target in fuzz/ for FUZZ_SECONDS seconds; needs `cargo install cargo-fuzz`.
FUZZ_SECONDS ?= 90
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash tools/fuzz.sh
