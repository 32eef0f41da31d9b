#!/usr/bin/env bash
# Clippy over every crate and target, warnings as errors (run before pushing; slow on a cold cache).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
export RUSTFLAGS="${RUSTFLAGS:--D warnings}"
cargo clippy --release --locked --workspace --all-targets --quiet -- -D warnings
# Dependencies: licences, bans and sources (deny.toml). cargo-deny is installed once from
# crates.io. Its advisories check needs the RustSec database from github.com, which these
# machines cannot reach: it runs where it is reachable and says SKIPPED otherwise.
if ! command -v cargo-deny >/dev/null; then
  say "installing cargo-deny (cargo install --locked, once)"
  RUSTFLAGS= CARGO_TARGET_DIR="$HOME/.cache/cargo-install-target" cargo install --locked --quiet cargo-deny
fi
say "cargo deny check licenses bans sources"
cargo deny --all-features check licenses bans sources
if timeout 20 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny check advisories
else
  echo "SKIPPED cargo deny check advisories: the RustSec advisory database (github.com) is not reachable from this machine"
fi
