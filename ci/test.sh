#!/usr/bin/env bash
# The whole test suite: formatting, the crate-graph rules, every test (release build, real
# Postgres started by the tests themselves, the real embedding model, qdrant-edge).
# Lints run separately (ci/lint.sh): clippy re-checks the whole dependency graph, which would
# double CI's build time on a fresh clone.
source "$(dirname "$0")/lib.sh"
setup
cd "$ROOT"
say "cargo fmt --check"
cargo fmt --all -- --check
say "crate graph: db depends on neither tonic nor axum"
for forbidden in tonic axum; do
  if cargo tree -p db -e normal -i "$forbidden" >/dev/null 2>&1; then
    echo "error: db depends on $forbidden" >&2; exit 1
  fi
done
say "cargo test"
cargo test --release --workspace
