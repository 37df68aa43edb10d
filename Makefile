# ifrelay — the two commands staff and CI need:
#   make demo   two boxes, their intermediate servers and the core on loopback
#   make test   formatting, lints and every test
CARGO ?= cargo
DEMO_DIR ?= var/demo

.PHONY: all build demo test lint fmt check-tools clean

all: build

# Everything this project needs is the Rust toolchain with rustfmt and
# clippy; crates come from crates.io through Cargo.lock.
check-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

build: check-tools
	$(CARGO) build --release --locked

demo: check-tools
	$(CARGO) run --release --locked --quiet --bin ifrelay -- demo --dir $(DEMO_DIR)

lint: check-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test: lint
	$(CARGO) test --workspace --locked

fmt: check-tools
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf var
