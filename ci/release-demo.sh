#!/usr/bin/env bash
# A release on the local stack with simulated users, end to end without GitLab: main runs
# neighbours-v1, a nightly server neighbours-v2; `lazyrec-release start` gates it and routes 20 %
# of users to it; the simulator drives traffic through :8082 while the ingester follows its log;
# `lazyrec-release evaluate --release ID --act` looks every LOOK seconds until it promotes or
# aborts. State in .state/simulate (the held-out load of `ci/up.sh --simulate`).
#   ci/release-demo.sh [RATE] [LOOK_SECONDS]        (default 150 req/s, a look every 20 s)
# MAIN_MODEL / NIGHTLY_MODEL (default neighbours-v1 / neighbours-v2) choose the two strategies;
# WARM_USERS (default: the controller's) how many recent users' requests warm the nightly
# before it is routed (0: none — a cold nightly against the latency guardrail).
RATE="${1:-150}"
LOOK="${2:-20}"
MAIN_MODEL="${MAIN_MODEL:-neighbours-v1}"
NIGHTLY_MODEL="${NIGHTLY_MODEL:-neighbours-v2}"
source "$(dirname "$0")/lib.sh"
export LAZYREC_SIM_STATE_DIR="${LAZYREC_SIM_STATE_DIR:-$ROOT/.state/simulate}"
"$ROOT/ci/up.sh" --simulate "$RATE" --no-serve >/dev/null
export LAZYREC_STATE_DIR="$LAZYREC_SIM_STATE_DIR"
source "$ROOT/ci/stack.sh"
# The whole workspace, as ci/test.sh builds it (a per-package build unifies features differently
# and rebuilds qdrant-edge).
cargo build --release --locked --quiet --workspace --bins
eval "export $("$BIN/lazyrec-db" up)"
trap 'stop_stack' EXIT
stop_stack
prepare_stack
LAZYREC_SERVER_MODEL__STRATEGY="$MAIN_MODEL" start_server main 8080 50051
LAZYREC_SERVER_MODEL__STRATEGY="$NIGHTLY_MODEL" start_server nightly 8081 50052
# The load balancer starts with main only; the release routes the nightly share (an earlier run's
# admin changes, kept in Postgres, would override that: --reset-routing).
start_lb main-only
wait_ready 8080 8081 8082
: >> "$RUN/simulated.log"
start_ingester "$RUN/simulated.log"
export LAZYREC_LB_ADMIN_TOKEN="$(cat "$RUN/admin-token")"
TAG="release-recommender-nightly-demo$(date +%s)"
say "start $TAG: $NIGHTLY_MODEL against main's $MAIN_MODEL"
out="$("$BIN/lazyrec-release" start --tag "$TAG" --strategy "$NIGHTLY_MODEL" --reference "$MAIN_MODEL" \
  --nightly http://127.0.0.1:8081 ${WARM_USERS:+--warm-users "$WARM_USERS"})" || { echo "$out"; exit 1; }
echo "$out"
ID="$(echo "$out" | sed -n 's/^release \([0-9]*\): .*/\1/p')"
start_simulator "$RATE" "file:$RUN/simulated.log"
for look in $(seq 1 30); do
  sleep "$LOOK"
  say "look $look"
  set +e
  "$BIN/lazyrec-release" evaluate --release "$ID" --act --window-s 30 --min-duration-s 60 --min-responses 500
  code=$?
  set -e
  [ "$code" = 3 ] || break
done
"$BIN/lazyrec-release" list | head -3
psql "$DATABASE_URL" -Atc "SELECT id, step, left(details::text, 160) FROM release_events WHERE release_id = $ID ORDER BY id"
