# densenet: build, test, demo, lint. `make test` is what CI runs.
CARGO ?= cargo
IMAGES ?= examples/images/*.png

.PHONY: build test demo lint fmt doc

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
