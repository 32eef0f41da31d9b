#!/usr/bin/env bash
# Clippy over every crate and target, warnings as errors (run before pushing; slow on a cold cache).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
export RUSTFLAGS="${RUSTFLAGS:--D warnings}"
cargo clippy --release --locked --workspace --all-targets --quiet -- -D warnings
