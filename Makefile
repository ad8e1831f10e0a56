# tunstack developer entry points. `make help` lists them.

CARGO ?= cargo
TOPO ?= pair
SETUP := netns-scripts/setup-netns.sh

# Tools the netns tests and the demo call; installed by `make deps` when root.
DEPS_PKGS := iproute2 tcpdump nftables tshark iputils-ping netcat-openbsd python3 procps curl ethtool

.PHONY: help build test unit-test netns-test demo lab lab-down deps fmt lint bench bench-smoke fuzz \
	fuzz-smoke fuzz-seeds

help:
	@echo "targets: build test unit-test netns-test demo lab [TOPO=pair|line|'star N'] lab-down"
	@echo "         deps fmt lint bench bench-smoke fuzz [FUZZ_SECONDS=300] fuzz-smoke fuzz-seeds"

build:
	$(CARGO) build --release

test: deps unit-test netns-test bench-smoke

unit-test:
	$(CARGO) test --release

# The netns tests drive target/release/tunstack, so build it first.
netns-test: build
	bash tests/netns/run-all.sh

demo: deps build
	bash netns-scripts/demo.sh

lab:
	bash $(SETUP) up $(TOPO)

lab-down:
	bash $(SETUP) down

# Installs only what is missing, without questions: tshark's "may non-root
# users capture?" debconf prompt is answered "no" beforehand.
deps:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "deps: not root, skipping package installation (needed: $(DEPS_PKGS))"; \
	elif ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then \
		echo "deps: no dpkg/apt-get here, skipping (needed: $(DEPS_PKGS))"; \
	else \
		missing=""; \
		for p in $(DEPS_PKGS); do \
			dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
		done; \
		if [ -z "$$missing" ]; then \
			echo "deps: all present"; \
		else \
			echo "deps: installing$$missing"; \
			echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -qq && apt-get install -y -q --no-install-recommends $$missing; \
		fi; \
	fi

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	@if command -v shellcheck >/dev/null 2>&1; then \
		shellcheck -x .ci/run netns-scripts/*.sh tests/netns/*.sh; \
	else \
		echo "lint: shellcheck not installed, shell scripts not checked"; \
	fi

# Side by side in namespaces: tunstack, a smoltcp reference server and kernel
# TCP (bench/run.sh; BENCH_ROUNDS=3 by default); writes docs/benchmarks.md.
BENCH_CRATE := bench/smoltcp-ref/Cargo.toml

bench: build
	bash bench/deps.sh
	$(CARGO) build --release --manifest-path $(BENCH_CRATE)
	bash bench/run.sh
	$$(command -v /usr/bin/python3 || command -v python3) bench/report.py write bench/results/latest.jsonl

# One short round of a few workloads (< 1 min); fails only if the harness breaks.
bench-smoke: build
	bash bench/deps.sh
	$(CARGO) build --release --manifest-path $(BENCH_CRATE)
	bash bench/run.sh --smoke

# cargo-fuzz targets (fuzz/fuzz_targets, harnesses in fuzz/src/lib.rs), each run for
# FUZZ_SECONDS; needs a nightly toolchain, prints SKIP and succeeds without one. fuzz-smoke is
# the short run CI does: .ci/run runs `make fuzz-smoke` after `make test`. The stable-Rust
# random-input test over the same harnesses is tests/random_input.rs, part of unit-test.
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 30

fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)

fuzz-smoke:
	bash fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

# Regenerates the committed seed corpora (fuzz/seeds) from simulator captures.
fuzz-seeds:
	rm -rf fuzz/seeds
	$(CARGO) run --release --example fuzz_seeds -- fuzz/seeds
