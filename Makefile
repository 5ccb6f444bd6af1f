# densenet: build, test, demo, lint. CI (.ci/run) runs lint, doc, test, the benchmarks' smoke modes,
# check-features, the WebAssembly and browser tests (test-wasm, web-test, bench-web's smoke mode),
# test-python and test-arm.
CARGO ?= cargo
IMAGES ?= examples/images/*.png

.PHONY: build test demo lint fmt doc bench bench-compare bench-serve bench-compare-smoke bench-serve-smoke build-cuda build-cudnn bench-soak fuzz prerequisites build-lean check-features test-python bench-python test-ray bench-ray test-arm check-wasm test-wasm web web-test bench-web

# The default build compiles libjpeg-turbo from source (src/preprocess/jpeg.rs, the `turbojpeg`
# feature): say so plainly rather than let its build script fail deep in cargo's output.
prerequisites:
	@command -v cmake >/dev/null || { echo "CMake is needed to build libjpeg-turbo: install it (Debian/Ubuntu: apt-get install cmake nasm; macOS: brew install cmake nasm)" >&2; exit 2; }

build: prerequisites
	$(CARGO) build --release

test: prerequisites
	$(CARGO) test --all-targets
	$(CARGO) test --doc

demo: build
	./target/release/classify $(IMAGES)

lint: prerequisites
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check

fmt:
	$(CARGO) fmt

# The library alone, as a dependency with `default-features = false` gets it (no C compiler, no
# CMake, no HTTP or async runtime), built and unit-tested in one step: a separate `cargo build`
# would compile every dependency again in the dev profile (9 minutes of CI).
build-lean:
	$(CARGO) test --lib --no-default-features

# 64-bit Arm, built here and run under qemu's user-mode emulator (README, "On Arm"): the lean
# library cross-built for aarch64 (.cargo/config.toml names the linker and the runner), then the
# fast path's kernel tests and the fast-path and parity tests, each instruction set the emulated
# CPU offers (portable, neon) against the plain network. Needs `rustup target add
# aarch64-unknown-linux-gnu` and Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user.
ARM_TARGET ?= aarch64-unknown-linux-gnu
test-arm:
	@command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null || { echo "test-arm needs the cross linker and qemu: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; rustup target add $(ARM_TARGET)" >&2; exit 2; }
	$(CARGO) test --target $(ARM_TARGET) --no-default-features --lib -- fast::
	$(CARGO) test --target $(ARM_TARGET) --no-default-features --test fast_path --test parity

# WebAssembly outside the browser (README, "In the browser"): the fast path's kernel tests and the
# fast-path and parity tests built for WASI with 128-bit SIMD, run by Node (V8, Chromium's
# engine; .cargo/config.toml names tools/wasi_run.mjs as the runner), each instruction set the
# module has (portable, simd128) against the plain network; and the JPEG decoder the browser's
# module has (the `image` crate's) against Pillow's pixels. Needs `rustup target add
# wasm32-wasip1` and Node 20 or newer.
test-wasm:
	@command -v node >/dev/null || { echo "test-wasm needs Node: apt-get install nodejs; rustup target add wasm32-wasip1" >&2; exit 2; }
	$(CARGO) test --target wasm32-wasip1 --no-default-features --lib -- fast::
	$(CARGO) test --target wasm32-wasip1 --no-default-features --test fast_path --test parity
	$(CARGO) test --target wasm32-wasip1 --no-default-features --test pillow -- jpegs_decode_close

# The lean library type-checked for the browser's WebAssembly (wasm32-unknown-unknown; README, "In
# the browser"). Needs `rustup target add wasm32-unknown-unknown`.
check-wasm:
	$(CARGO) check --target wasm32-unknown-unknown --no-default-features

# The browser's module (README, "In the browser"): web/ built for WebAssembly twice, with 128-bit
# SIMD (web/www/pkg/) and with relaxed SIMD as well (web/www/pkg-relaxed/: fused multiply-adds,
# chosen by densenet.js where the browser has them), each through wasm-bindgen's ES-module glue.
# Needs `rustup target add wasm32-unknown-unknown` and wasm-bindgen-cli of the version web/Cargo.toml
# pins (`cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)`).
WASM_BINDGEN_VERSION := $(shell sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' web/Cargo.toml)
WASM_OUT := web/target/wasm32-unknown-unknown/release/densenet_web.wasm
web:
	@wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $(WASM_BINDGEN_VERSION)" || { echo "make web needs wasm-bindgen-cli $(WASM_BINDGEN_VERSION): cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); and rustup target add wasm32-unknown-unknown" >&2; exit 2; }
	cd web && $(CARGO) build --release
	wasm-bindgen --target web --no-typescript --out-dir web/www/pkg $(WASM_OUT)
	cd web && CARGO_TARGET_DIR=target/relaxed RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" $(CARGO) build --release
	wasm-bindgen --target web --no-typescript --out-dir web/www/pkg-relaxed $(subst web/target/,web/target/relaxed/,$(WASM_OUT))

# The lean library, then every target with each feature on its own (and with none), so that no
# feature leans on another by accident (`cargo install cargo-hack --locked` once).
FEATURE_EXCLUDES ?= cuda,cudnn,metal,mkl,accelerate
check-features: build-lean prerequisites
	@$(CARGO) hack --version >/dev/null 2>&1 || { echo "cargo-hack is needed: cargo install cargo-hack --locked" >&2; exit 2; }
	$(CARGO) hack check --each-feature --exclude-features $(FEATURE_EXCLUDES) --all-targets

doc: prerequisites
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

bench:
	$(CARGO) bench --bench predict

# The engine beside ONNX Runtime (installed from PyPI into the git-ignored tools/.bench-venv),
# once per instruction set in ISA (comma-separated: avx512, avx2, portable); BASELINE=path runs
# another build's engine_bench beside it (vs_baseline lines).
BENCH_VENV ?= tools/.bench-venv
ISA ?= avx512,avx2
bench-compare:
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet onnxruntime openvino onnx numpy safetensors
	$(CARGO) build --release --example engine_bench
	$(BENCH_VENV)/bin/python tools/bench_compare.py --isa $(ISA) $(if $(BASELINE),--baseline $(BASELINE))

# `densenet serve` under load (oha, from crates.io) beside FastAPI + uvicorn + ONNX Runtime
# (installed from PyPI into the git-ignored tools/.serve-venv); SERVE_SECONDS per concurrency level.
SERVE_VENV ?= tools/.serve-venv
SERVE_SECONDS ?= 20
bench-serve:
	command -v oha >/dev/null || $(CARGO) install oha --locked
	test -x $(SERVE_VENV)/bin/python || python3 -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet fastapi uvicorn onnxruntime onnx numpy safetensors pillow "tritonclient[grpc,http]"
	$(CARGO) build --release --bin densenet --example engine_bench
	$(SERVE_VENV)/bin/python tools/bench_serve.py --seconds $(SERVE_SECONDS)
	$(SERVE_VENV)/bin/python tools/bench_serve.py --grpc --clients 64 --seconds $(SERVE_SECONDS)

# Both benchmarks in seconds (`--smoke`: the same steps, tiny rounds), on the optimised test-profile
# build that `make test` leaves, so that they cost CI little; .ci/run runs them.
bench-compare-smoke:
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet onnxruntime onnx numpy safetensors
	$(CARGO) build --profile test --example engine_bench
	$(BENCH_VENV)/bin/python tools/bench_compare.py --smoke --engine target/debug/examples/engine_bench

bench-serve-smoke:
	test -x $(SERVE_VENV)/bin/python || python3 -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet fastapi uvicorn onnxruntime onnx numpy safetensors pillow "tritonclient[grpc,http]"
	$(CARGO) build --profile test --bin densenet --example engine_bench
	$(SERVE_VENV)/bin/python tools/bench_serve.py --smoke --densenet target/debug/densenet \
		--engine target/debug/examples/engine_bench
	$(SERVE_VENV)/bin/python tools/bench_serve.py --smoke --slowloris 60 --clients 2 \
		--densenet target/debug/densenet --engine target/debug/examples/engine_bench
	$(SERVE_VENV)/bin/python tools/bench_serve.py --smoke --reloads 2 --clients 4 \
		--densenet target/debug/densenet --engine target/debug/examples/engine_bench
	$(SERVE_VENV)/bin/python tools/bench_serve.py --smoke --grpc --clients 4 \
		--densenet target/debug/densenet --engine target/debug/examples/engine_bench

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

# The Python package (python/, README "From Python"): linted, built by maturin through pip (a
# release build in python/target, as `pip install ./python` makes it) into the git-ignored venv
# python/.venv, and tested with pytest against the `classify` binary (the test-profile build that
# `make test` leaves; CLASSIFY_PROFILE=release takes the release one) and the PyTorch fixtures.
PY_VENV ?= python/.venv
PY_ENV = PATH="$(abspath $(PY_VENV))/bin:$$PATH" PYO3_PYTHON="$(abspath $(PY_VENV))/bin/python"
CLASSIFY_PROFILE ?= test
CLASSIFY_BIN = target/$(if $(filter release,$(CLASSIFY_PROFILE)),release,debug)/classify
test-python: prerequisites
	test -x $(PY_VENV)/bin/python || python3 -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install --quiet maturin pytest numpy safetensors
	cd python && $(CARGO) fmt --check
	cd python && $(PY_ENV) $(CARGO) clippy --all-targets -- -D warnings
	$(PY_ENV) $(PY_VENV)/bin/pip install --quiet --no-build-isolation --no-deps --force-reinstall ./python
	$(CARGO) build --profile $(CLASSIFY_PROFILE) --bin classify
	DENSENET_CLASSIFY="$(abspath $(CLASSIFY_BIN))" $(PY_VENV)/bin/pytest -q python/tests

# `Model.predict` from Python against torch (tools/densenet_ref.py's module in eval()), ONNX
# Runtime, OpenVINO and the engine in-process (engine_bench), in the git-ignored venv
# tools/.python-bench-venv (torch from PyPI: several GB with its CUDA packages, unused here).
PY_BENCH_VENV ?= tools/.python-bench-venv
bench-python:
	test -x $(PY_BENCH_VENV)/bin/python || python3 -m venv $(PY_BENCH_VENV)
	$(PY_BENCH_VENV)/bin/pip install --quiet torch numpy onnx onnxruntime openvino safetensors maturin
	PATH="$(abspath $(PY_BENCH_VENV))/bin:$$PATH" $(PY_BENCH_VENV)/bin/pip install --quiet --no-build-isolation --no-deps --force-reinstall ./python
	$(CARGO) build --release --example engine_bench
	$(PY_BENCH_VENV)/bin/python tools/bench_python.py

# The Ray examples (examples/ray_batch.py, examples/ray_serve.py) on a local Ray cluster that the
# tests start, in the git-ignored venv tools/.ray-venv (Ray from PyPI); not in CI (Ray is large,
# its cluster slow to start on two cores).
RAY_VENV ?= tools/.ray-venv
test-ray:
	test -x $(RAY_VENV)/bin/python || python3 -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/pip install --quiet "ray[data,serve]" pytest maturin numpy
	PATH="$(abspath $(RAY_VENV))/bin:$$PATH" $(RAY_VENV)/bin/pip install --quiet --no-build-isolation --no-deps --force-reinstall ./python
	$(CARGO) build --release --bin classify
	DENSENET_CLASSIFY="$(abspath target/release/classify)" $(RAY_VENV)/bin/pytest -q python/ray_tests

# Ray Data with the package against the same pipeline with a torch predictor (tools/bench_ray.py),
# in tools/.ray-venv with torch and Pillow added.
bench-ray: test-ray
	$(RAY_VENV)/bin/pip install --quiet torch pillow safetensors
	$(RAY_VENV)/bin/python tools/bench_ray.py

# The page in headless Chromium (Debian: apt-get install chromium chromium-driver) against the
# native classify (README, "In the browser"): top-5, probabilities and CAM pictures of the example
# images, a PyTorch checkpoint, error messages, a responsive page. The binaries come from the
# optimised test-profile build that `make test` leaves (target/debug).
web-test: web
	$(CARGO) build --profile test --bin classify --example engine_bench
	python3 tools/web_harness.py test --classify target/debug/classify --engine-bench target/debug/examples/engine_bench

# The engine's wasm beside onnxruntime-web (npm, installed into the git-ignored web/node_modules
# by the harness) in headless Chromium; the ONNX graphs are built by tools/bench_compare.py in
# $(BENCH_VENV). WEB_BENCH passes options: `make bench-web WEB_BENCH=--smoke` (one small case, for
# CI), `WEB_BENCH="--rounds 3 --cases cifar"`.
WEB_BENCH ?=
bench-web: web
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -c "import onnx, numpy, safetensors" 2>/dev/null || $(BENCH_VENV)/bin/pip install --quiet onnx numpy safetensors
	$(CARGO) build --profile test --example engine_bench
	python3 tools/web_harness.py bench --engine-bench target/debug/examples/engine_bench $(WEB_BENCH)
