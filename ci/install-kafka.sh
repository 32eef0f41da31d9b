#!/usr/bin/env bash
# Installs tansu, a Kafka-protocol broker written in Rust, from crates.io into ~/.cargo/bin
# (once: a ~10-minute build on 2 cores), with the in-memory storage engine (`dynostore`).
# The suite's Kafka test runs when tansu is installed and prints SKIPPED otherwise; ci/up.sh
# --simulate N --kafka starts it for the local stack.
source "$(dirname "$0")/lib.sh"
TANSU_VERSION=0.6.0
installed() {
  command -v tansu >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/tansu" ] || return 1
  # The memory storage engine needs the dynostore feature (cargo records features here).
  grep -q "\"tansu $TANSU_VERSION[^\"]*\".*dynostore" "$HOME/.cargo/.crates2.json" 2>/dev/null
}
if installed; then
  say "tansu $TANSU_VERSION (with dynostore) is installed"
  exit 0
fi
say "installing tansu $TANSU_VERSION from crates.io (a long build, once)"
# Its own target directory: the workspace's build cache keeps its flags.
RUSTFLAGS= cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
  --target-dir "$HOME/.cache/tansu-build"
