#!/usr/bin/env bash
# The main job on embedded defaults: set up what is missing, build, start the private Postgres,
# load the default dataset (idempotent), embed new or changed movies into qdrant-edge
# (incremental), print a summary and how to serve.
source "$(dirname "$0")/lib.sh"
setup
say "building (release)"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p db -p embedder -p server \
  --bin lazyrec-db --bin embedder --bin lazyrec-server
say "starting the private Postgres cluster (state in $LAZYREC_STATE_DIR)"
eval "export $("$BIN/lazyrec-db" up)"
say "loading the default dataset"
"$BIN/lazyrec-db" load-default
say "embedding new or changed movies (incremental; the first run embeds the whole catalog)"
"$BIN/embedder" embed
say "summary"
"$BIN/lazyrec-db" status
"$BIN/embedder" status
echo "DATABASE_URL=$DATABASE_URL"
echo "serve recommendations with: $BIN/lazyrec-server   (HTTP :8080, gRPC :50051; curl localhost:8080/recommend/1)"
echo "stop Postgres with: $BIN/lazyrec-db down"
