# multitokens: `make test` runs everything CI runs; `make demo` runs the demo stack.
SHELL := /bin/bash
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)
export ENVOY_BIN ?= $(TOOLS)/bin/envoy

WASM_TARGET := wasm32-wasip1
WASM_DIR := target/$(WASM_TARGET)/wasm-release
WASM_STOCK := $(WASM_DIR)/multitokens_filter.wasm
WASM_REDIS := $(WASM_DIR)/multitokens_filter_redis.wasm

.PHONY: all help tools build wasm module install lint test fuzz demo demo-django bench bench-instructions oci openapi clean

all: build wasm module

## help: this list
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed -E 's/^## //'

## tools: install the wasm target, redis-server and Envoy 1.40 (into .tools/) when missing
tools:
	@scripts/install-tools.sh

## build: the companion and the demo app (release)
build:
	cargo build --release --bins

## wasm: both filter builds: multitokens_filter.wasm (stock Envoy, Istio) and
##       multitokens_filter_redis.wasm (Redis callouts: Higress-patched Envoy); rebuilt only when a source changed
wasm: $(WASM_STOCK) $(WASM_REDIS)
	@ls -l $(WASM_STOCK) $(WASM_REDIS)

WASM_SOURCES := Cargo.toml Cargo.lock $(shell find crates/core crates/filter crates/filter-wasm -name '*.rs' -o -name Cargo.toml)

$(WASM_REDIS): $(WASM_SOURCES)
	cargo rustc -p multitokens-filter-wasm --lib --profile wasm-release --target $(WASM_TARGET) --features redis-callout --crate-type cdylib
	cp $(WASM_DIR)/multitokens_filter_wasm.wasm $(WASM_REDIS)

# (after the Redis-callout build: both link to the same multitokens_filter_wasm.wasm before being copied)
$(WASM_STOCK): $(WASM_SOURCES) | $(WASM_REDIS)
	cargo rustc -p multitokens-filter-wasm --lib --profile wasm-release --target $(WASM_TARGET) --crate-type cdylib
	cp $(WASM_DIR)/multitokens_filter_wasm.wasm $(WASM_STOCK)

## module: the native Envoy dynamic module target/native/libmultitokens_filter.so (Envoy 1.40 only:
##         `dynamic_module_config: {name: multitokens_filter}`, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=target/native)
NATIVE_DIR := target/native
NATIVE_MODULE := $(NATIVE_DIR)/libmultitokens_filter.so
module: $(NATIVE_MODULE)
	@ls -l $(NATIVE_MODULE)

$(NATIVE_MODULE): $(shell find crates/core crates/filter crates/filter-native -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock
	cargo build -p multitokens-filter-native --lib --profile module
	mkdir -p $(NATIVE_DIR)
	@# a new file renamed into place: an Envoy running the old module keeps its mapping intact
	cp target/module/libmultitokens_filter_native.so $(NATIVE_MODULE).tmp
	mv -f $(NATIVE_MODULE).tmp $(NATIVE_MODULE)

## install: the companion CLI `multitokens` into $(PREFIX)/bin (default ~/.local/bin); Envoy stays in .tools/bin
PREFIX ?= $(HOME)/.local
install: build
	install -d $(PREFIX)/bin
	install -m 0755 target/release/multitokens $(PREFIX)/bin/multitokens
	@echo "installed $(PREFIX)/bin/multitokens; Envoy 1.40 is $(TOOLS)/bin/envoy (make tools)"

## lint: rustfmt check, then clippy (unwrap/expect/panic denied outside tests) for the native and the wasm builds
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p multitokens-filter-wasm --target $(WASM_TARGET) -- -D warnings
	cargo clippy -p multitokens-filter-wasm --target $(WASM_TARGET) --features redis-callout -- -D warnings

## test: everything CI runs (installs its tools first); ends with one summary line over all targets
## (the real-Envoy suite and the demo examples run twice: against the wasm build, then the native module)
test: tools lint wasm module
	set -o pipefail; cargo test --workspace --all-targets -- --test-threads=4 2>&1 | tee target/test-output.log
	set -o pipefail; MULTITOKENS_FILTER_BUILD=native cargo test --test envoy_e2e --test doc_examples -- --test-threads=4 2>&1 | tee -a target/test-output.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (p == 0) }' target/test-output.log

## openapi: rewrite docs/openapi.json from the code (a test fails while they differ)
openapi:
	cargo run --quiet --bin multitokens -- openapi > docs/openapi.json

## fuzz: the property test of both built filters with many cases (make test runs 40 per build)
fuzz: tools wasm
	MULTITOKENS_FUZZ_CASES=$${MULTITOKENS_FUZZ_CASES:-3000} cargo test --release --test wasm_fuzz -- --test-threads=2

## demo: Redis, the companion, a demo app and Envoy with the filter, in the foreground
##       (FILTER=native: the native dynamic module instead of the wasm filter)
FILTER ?= wasm
demo: tools wasm module build
	FILTER=$(FILTER) scripts/demo.sh

## demo-django: the same with the Django REST framework example (examples/django, gunicorn) as the app
demo-django: tools wasm module build
	FILTER=$(FILTER) DEMO_APP=django scripts/demo.sh

## bench: the benchmark suite (see bench/README.md)
bench: tools wasm module build
	scripts/bench.sh

## bench-instructions: the instructions one cache hit costs the filter's decision (valgrind's callgrind; exact, unlike timings)
bench-instructions:
	scripts/hit_instructions.sh

## oci: the OCI images Istio and Higress pull, and the companion's image (needs docker or podman)
oci: wasm
	docker build -f envoy/istio/Dockerfile -t multitokens-filter:latest $(WASM_DIR)
	docker build -f envoy/higress/Dockerfile -t multitokens-filter-redis:latest $(WASM_DIR)
	docker build -f envoy/kubernetes/Dockerfile -t multitokens:latest .

clean:
	cargo clean
