# ifrelay — the two commands staff and CI need:
#   make demo   two boxes, their intermediate servers and the core on loopback
#   make test   formatting, lints and every test
#   make bench  performance on loopback (docs/performance.md); last line is the summary
SHELL := /bin/bash
CARGO ?= cargo
DEMO_DIR ?= var/demo

.PHONY: all build demo test lint fmt check-tools clean bench fuzz soak firmware-deps

all: build

# Everything this project needs is the Rust toolchain with rustfmt and
# clippy; crates come from crates.io through Cargo.lock.
check-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

# The firmware alone (`-p ifrelay`: no test kit, no fault-injection hook).
build: check-tools
	$(CARGO) build --release --locked -p ifrelay

# The demo runs the firmware built just above as real child processes.
demo: build
	$(CARGO) run --release --locked --quiet -p ifrelay-testkit --bin ifrelay-demo -- \
	  --dir $(DEMO_DIR) --firmware target/release/ifrelay

lint: check-tools firmware-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The firmware ships only the box (R-SEC-7): none of the test kit or the
# development PKI may be among its dependencies. (x25519-dalek,
# chacha20poly1305 and hkdf, once listed here as the simulators' crypto,
# are the age format's own primitives since exports encrypt to auditors:
# docs/export.md, "Crates".)
TEST_ONLY_CRATES = ifrelay-testkit ifrelay-devpki rcgen
firmware-deps: check-tools
	@found=$$($(CARGO) tree -p ifrelay -e normal --locked --prefix none --format '{p}' \
	  | awk '{print $$1}' | sort -u | grep -Fx -f <(printf '%s\n' $(TEST_ONLY_CRATES)) || true); \
	if [ -n "$$found" ]; then echo "firmware links test-only crates: $$found"; exit 1; fi; \
	echo "firmware dependencies: no test-only crate"

# `cargo test --workspace` builds the `ifrelay` binary beside the test
# executables, where the test kit finds it.
test: lint
	$(CARGO) test --workspace --locked

# BENCH_ARGS: --quick for a short smoke run, --wait-quiet SECS to wait for
# an idle machine first. Writes var/bench/ and var/bench/report.txt.
BENCH_ARGS ?=

# The crash harness of `make test` for SOAK_KILLS seeded SIGKILLs (default
# 1000, about twenty minutes); SOAK_SEED replays a run. Prints the seed
# first and `soak: kills=N flows=N lost=0 duplicated=0 serials_reissued=0
# …` last; exits 1 if anything was lost or duplicated. Not part of `test`.
soak: build
	$(CARGO) run --release --locked --quiet -p ifrelay-testkit --bin ifrelay-soak -- \
	  --kills $(or $(SOAK_KILLS),1000) $(if $(SOAK_SEED),--seed $(SOAK_SEED)) \
	  --firmware target/release/ifrelay

bench: build
	$(CARGO) run --release --locked --quiet -p ifrelay-testkit --bin ifrelay-bench -- $(BENCH_ARGS)

fmt: check-tools
	$(CARGO) fmt --all

# Every fuzz target of fuzz/ (its own workspace, never built by `test`) for
# FUZZ_SECONDS each, default 60: `make fuzz FUZZ_SECONDS=600`. Installs
# cargo-fuzz from crates.io if missing; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take the sanitizer flags cargo-fuzz passes. Runs every target,
# then fails naming those that crashed (inputs in fuzz/artifacts/).
# docs/fuzzing.md says how a crash becomes a regression test.
fuzz: check-tools
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@crashed=; for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
	  dict=; [ -f fuzz/$$t.dict ] && dict=-dict=fuzz/$$t.dict; \
	  [ $$t = screen ] && dict=-dict=fuzz/frame_decode.dict; \
	  echo "== fuzz $$t for $(or $(FUZZ_SECONDS),60) s"; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- \
	    -max_total_time=$(or $(FUZZ_SECONDS),60) -timeout=10 $$dict \
	    || crashed="$$crashed $$t"; \
	done; \
	if [ -n "$$crashed" ]; then echo "fuzz: crashed:$$crashed (see fuzz/artifacts/)"; exit 1; fi

clean:
	$(CARGO) clean
	rm -rf var
