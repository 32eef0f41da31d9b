#!/usr/bin/env bash
# The main job on embedded defaults: set up what is missing, build, start the private Postgres,
# load the default dataset (idempotent), print a summary.
source "$(dirname "$0")/lib.sh"
setup
say "building (release)"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p db --bin lazyrec-db
say "starting the private Postgres cluster (state in $LAZYREC_STATE_DIR)"
eval "export $("$BIN/lazyrec-db" up)"
say "loading the default dataset"
"$BIN/lazyrec-db" load-default
say "summary"
"$BIN/lazyrec-db" status
echo "DATABASE_URL=$DATABASE_URL"
echo "stop Postgres with: $BIN/lazyrec-db down"
