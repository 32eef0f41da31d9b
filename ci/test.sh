#!/usr/bin/env bash
# The whole test suite: formatting, lints, the crate-graph rules, every test (release build,
# real Postgres started by the tests themselves).
source "$(dirname "$0")/lib.sh"
setup
cd "$ROOT"
export RUSTFLAGS="${RUSTFLAGS:--D warnings}"
say "cargo fmt --check"
cargo fmt --all -- --check
say "crate graph: db depends on neither tonic nor axum"
for forbidden in tonic axum; do
  if cargo tree -p db -e normal -i "$forbidden" >/dev/null 2>&1; then
    echo "error: db depends on $forbidden" >&2; exit 1
  fi
done
say "cargo clippy"
cargo clippy --release --workspace --all-targets --quiet
say "cargo test"
cargo test --release --workspace
