#!/usr/bin/env bash
# The default stack's capacity per model (issue 24): the default dataset in .state (ci/up.sh
# --no-serve prepares it; the item weights come with `embedder behaviour`), both servers and the
# load balancer as ci/up.sh runs them — every request answered by the model under test — then
# `load-bench overload` through :8082 over the 610 users at rising rates, 10 s each: the highest
# rate answered with < 1 % degraded is the model's capacity. The models run one after the other
# in the same run, from fresh processes (cold caches; the first phase is 100/s).
#   ci/bench-models.sh [MODEL...]          (default: neighbours-v2 items-v1)
# RATES (default "100 200 300 400 600 800 1000 1500 2000 3000 4000") and SECS (default 10).
source "$(dirname "$0")/lib.sh"
source "$ROOT/ci/stack.sh"
RATES="${RATES:-100 200 300 400 600 800 1000 1500 2000 3000 4000}"
SECS="${SECS:-10}"
[ $# -gt 0 ] || set -- neighbours-v2 items-v1
cargo build --release --locked --quiet --workspace --bins
eval "export $("$BIN/lazyrec-db" up)"
[ -d "$LAZYREC_STATE_DIR/qdrant-edge" ] || { echo "error: run ci/up.sh --no-serve first" >&2; exit 1; }
if ! "$BIN/embedder" status | grep '(live)' | grep -q '\.ease-'; then
  say "behaviour vectors and item weights from the interactions"
  "$BIN/embedder" behaviour --no-progress
fi
grep -m1 "model name" /proc/cpuinfo | sed 's/.*: /cpu: /'; echo "cores: $(nproc), $(date -u +%F)"
trap 'stop_stack' EXIT
for model in "$@"; do
  stop_stack
  start_model_stack "$model"
  say "$model through :8082, 610 users, rates $RATES (${SECS} s each)"
  # shellcheck disable=SC2046
  "$BIN/load-bench" overload --url http://127.0.0.1:8082 --users 610 \
    $(for r in $RATES; do echo --phase "${r}x$SECS"; done) | grep -E '^phase'
  for port in 8080 8081; do
    curl -s "http://127.0.0.1:$port/metrics" | grep -E '^lazyrec_server_(degraded_total|store_calls_(count|sum))' | sed "s/^/:$port /"
  done
done
