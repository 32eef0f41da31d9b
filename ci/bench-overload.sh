#!/usr/bin/env bash
# The overload benchmark (issue #10) at course scale, in its own state directory (default
# /tmp/lazyrec-overload; the project's .state is not touched):
#   ci/bench-overload.sh prepare   10M synthetic course log lines (100k users, 27k movies) through
#                                  the production ingester, popularity, a 27k-point qdrant-edge
#                                  collection (the default dataset's real vectors, perturbed)
#   ci/bench-overload.sh run       one server (and the load balancer in front of it), each driven
#                                  through steady → 2× capacity → 0.5× capacity by
#                                  `load-bench overload`, printing per-second degraded share and
#                                  p99 and the Postgres sessions opened during the run
#   ci/bench-overload.sh fresh     a fresh ingest of another 10M-event log, then 500 req/s at once
#                                  (autovacuum still analysing)
#   ci/bench-overload.sh models    behaviour vectors for the 27k collection (`embed-bench
#                                  behaviour --attach`: time and peak memory of the job), then the
#                                  server with neighbours-v1 and with neighbours-v2 (the default),
#                                  one after the other: 500/s from cold caches, 500/s, 1,000/s
#   ci/bench-overload.sh items     item weights for the 27k collection (`embed-bench behaviour
#                                  --items '{}' --attach`: time and peak memory of the job), then
#                                  neighbours-v2 and items-v1, each a fresh server: 100/s for 60 s
#                                  from cold (degraded share per second), 1,000/s for 20 s, and
#                                  rates stepped 1,000 → 8,000/s (10 s each: the unshed capacity)
# Rates: STEADY (default 4000/s), OVER (default 10000/s: 2× the ~5000/s a warm server serves
# undegraded on 2 cores), AFTER (default 2000/s), SECS per phase (default 20), WARMUP seconds at
# STEADY before the measured phases (default 20; 0 shows a cold start). SERVER_ENV: extra
# environment for the server, e.g. SERVER_ENV=LAZYREC_SERVER_MODEL__STRATEGY=items-v1.
source "$(dirname "$0")/lib.sh"
BENCH_STATE="${BENCH_STATE:-/tmp/lazyrec-overload}"
export LAZYREC_STATE_DIR="$BENCH_STATE"
STEADY="${STEADY:-4000}" OVER="${OVER:-10000}" AFTER="${AFTER:-2000}" SECS="${SECS:-20}" WARMUP="${WARMUP:-20}"
WORK=/tmp/lazyrec-bench
LOG="$WORK/synth-10000000-100000-27000-42.log"

build() {
  # The whole workspace, as ci/test.sh builds it: another package set unifies features
  # differently and rebuilds half the dependency graph.
  cargo build --release --locked --quiet --workspace --bins
}

up() { eval "export $("$BIN/lazyrec-db" up)"; }

# The 27k movies the synthetic log refers to (ids as db::synth::movie_id).
synthetic_movies() { # database URL
  psql -q "$1" -c "INSERT INTO movies (movie_id, title, year, genres, source, content_hash)
    SELECT 'synthetic+movie+'||i||'+'||(1950+i%75), 'Synthetic '||i, 1950+i%75, ARRAY['Drama'], 'bench', md5(i::text)
    FROM generate_series(0, 26999) i ON CONFLICT DO NOTHING"
}

prepare() {
  build
  [ -s "$LOG" ] || { say "generating the 10M-line course log (ingest-bench)"; "$BIN/ingest-bench" --lines 10000000 --work-dir "$WORK"; }
  up
  if [ ! -f "$BENCH_STATE/prepared" ]; then
    say "movies, ingest, popularity"
    synthetic_movies "$DATABASE_URL"
    "$BIN/lazyrec-db" ingest "$LOG"
    "$BIN/lazyrec-db" popularity
    say "course-scale vectors from the default dataset's collection"
    [ -d "$ROOT/.state/qdrant-edge" ] || { echo "error: run ci/up.sh --no-serve first (it embeds the default dataset)" >&2; exit 1; }
    rm -rf "$BENCH_STATE/source-edge" && cp -a "$ROOT/.state/qdrant-edge" "$BENCH_STATE/source-edge"
    "$BIN/load-bench" vectors --from "$BENCH_STATE/source-edge" --to "$BENCH_STATE/qdrant-edge"
    psql -q "$DATABASE_URL" -c "VACUUM ANALYZE"
    touch "$BENCH_STATE/prepared"
  fi
}

# pg_stat_database.sessions is flushed lazily; load-bench reads it before and after the run.
server_up() { # extra env for the server, e.g. LAZYREC_SERVER_DATABASE_URL=...
  env "$@" "${SERVER_BIN:-$BIN/lazyrec-server}" >>"$BENCH_STATE/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:8080/recommend/1 && return 0; sleep 0.1; done
  echo "error: the server did not answer; see $BENCH_STATE/server.log" >&2; exit 1
}
lb_up() {
  "${LB_BIN:-$BIN/lazyrec-lb}" --main http://127.0.0.1:8080 --http-addr 127.0.0.1:8082 --grpc-addr 127.0.0.1:8083 \
    --admin-addr 127.0.0.1:8084 >>"$BENCH_STATE/lb.log" 2>&1 &
  LB_PID=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:8082/recommend/1 && return 0; sleep 0.1; done
  echo "error: the load balancer did not answer; see $BENCH_STATE/lb.log" >&2; exit 1
}
stop() { for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
phases() { echo --warmup "$WARMUP" --phase "${STEADY}x$SECS" --phase "${OVER}x$SECS" --phase "${AFTER}x$SECS"; }
machine() { grep -m1 "model name" /proc/cpuinfo | sed 's/.*: /cpu: /'; echo "cores: $(nproc), $(date -u +%F)"; }

sessions() { psql -At "$DATABASE_URL" -c "SELECT sum(sessions), sum(sessions_abandoned) FROM pg_stat_database"; }

# One build: the server alone, then the load balancer in front of it.
run_build() { # label
  # shellcheck disable=SC2086
  server_up ${SERVER_ENV:-}
  say "$1: the server alone: $(phases)"
  # shellcheck disable=SC2046
  "$BIN/load-bench" overload --url http://127.0.0.1:8080 $(phases) --server-pid "$SERVER_PID"
  lb_up
  say "$1: through the load balancer: $(phases)"
  # shellcheck disable=SC2046
  "$BIN/load-bench" overload --url http://127.0.0.1:8082 $(phases) --server-pid "$SERVER_PID"
  curl -s http://127.0.0.1:8082/metrics | grep -E '^lazyrec_lb_(shed|retries|fallbacks)' || true
  curl -s http://127.0.0.1:8080/metrics | grep -E '^lazyrec_server_(shed|degraded)_total' || true
  stop "$LB_PID" "$SERVER_PID"
}

# The request path of each model at course scale, in one run.
models() {
  prepare
  machine
  trap 'stop ${SERVER_PID:-}' EXIT
  if ! "$BIN/embedder" status --edge-dir "$BENCH_STATE/qdrant-edge" | grep '(live)' | grep -q '_bsvd-'; then
    say "behaviour vectors for the course-scale collection"
    /usr/bin/time -f "embed-bench behaviour --attach: %e s wall, peak RSS %M KiB" \
      "$BIN/embed-bench" behaviour --database-url "$DATABASE_URL" --attach "$BENCH_STATE/qdrant-edge"
  fi
  for model in neighbours-v1 neighbours-v2; do
    server_up LAZYREC_SERVER_MODEL__STRATEGY="$model"
    say "$model: 500/s from cold caches (60 s), 500/s (20 s), then 1,000/s (20 s) (the issue-4 protocol)"
    "$BIN/load-bench" run --rate 500 --seconds 60 --server-pid "$SERVER_PID"
    "$BIN/load-bench" run --rate 500 --seconds 20 --server-pid "$SERVER_PID"
    "$BIN/load-bench" run --rate 1000 --seconds 20 --server-pid "$SERVER_PID"
    curl -s http://127.0.0.1:8080/metrics | grep -E '^lazyrec_server_(degraded_total|cache_requests_total)' || true
    stop "$SERVER_PID"
  done
}

# The item model against neighbours-v2 at course scale, in one run.
items() {
  prepare
  machine
  trap 'stop ${SERVER_PID:-}' EXIT
  if ! "$BIN/embedder" status --edge-dir "$BENCH_STATE/qdrant-edge" | grep '(live)' | grep -q '\.ease-'; then
    say "behaviour vectors and item weights for the course-scale collection"
    /usr/bin/time -f "embed-bench behaviour --items --attach: %e s wall, peak RSS %M KiB" \
      "$BIN/embed-bench" behaviour --database-url "$DATABASE_URL" --items "${ITEMS:-{\}}" --attach "$BENCH_STATE/qdrant-edge"
  fi
  for model in ${MODELS:-neighbours-v2 items-v1}; do
    server_up LAZYREC_SERVER_MODEL__STRATEGY="$model"
    say "$model: a freshly started server at 100/s for 60 s"
    "$BIN/load-bench" overload --phase 100x60 --server-pid "$SERVER_PID" | grep -E '^(phase|last)|^ *[0-9]+ ' | awk 'NR<=62'
    say "$model: 1,000/s for 20 s"
    "$BIN/load-bench" overload --phase 1000x20 --server-pid "$SERVER_PID" | grep -E '^phase'
    say "$model: capacity (rates stepped up, 10 s each)"
    # shellcheck disable=SC2046
    "$BIN/load-bench" overload $(for r in 1000 2000 3000 4000 5000 6000 8000; do echo --phase "${r}x10"; done) \
      --server-pid "$SERVER_PID" | grep -E '^phase'
    curl -s http://127.0.0.1:8080/metrics | grep -E '^lazyrec_server_(degraded_total|store_calls_(count|sum|bucket.*le="2"))' || true
    stop "$SERVER_PID"
  done
}

# REFERENCE_SERVER / REFERENCE_LB: binaries of another build (e.g. the commit before this
# work), run first with the same phases, in the same run.
run() {
  prepare
  machine
  trap 'stop ${LB_PID:-} ${SERVER_PID:-}' EXIT
  local before
  if [ -n "${REFERENCE_SERVER:-}" ]; then
    SERVER_BIN="$REFERENCE_SERVER" LB_BIN="${REFERENCE_LB:-$BIN/lazyrec-lb}" run_build reference
  fi
  before="$(sessions)"
  run_build ours
  sleep 1.5 # statistics are flushed at most once a second
  python3 - "$before" "$(sessions)" <<'PY'
import sys
(s0, a0), (s1, a1) = (map(int, x.split("|")) for x in sys.argv[1:])
print(f"ours: Postgres sessions opened over both runs (server and load balancer start-up included, psql's own included): {s1 - s0} ({a1 - a0} abandoned)")
PY
}

# A second database in the same cluster, filled with a fresh ingest of the 10M-line log; the
# server starts the moment the ingest ends (autovacuum then has 10M fresh rows to analyse).
# With REFERENCE_SERVER, that build gets the same treatment first (its own fresh ingest).
fresh_one() { # label server-binary
  local db=lazyrec_fresh url
  url="${DATABASE_URL%/*}/$db"
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
  "$BIN/lazyrec-db" --database-url "$url" migrate
  synthetic_movies "$url"
  say "$1: ingesting 10M lines into $db"
  "$BIN/lazyrec-db" --database-url "$url" ingest "$LOG" | tail -1
  "$BIN/lazyrec-db" --database-url "$url" popularity
  SERVER_BIN="$2" server_up DATABASE_URL="$url"
  say "$1: 500/s right after the ingest"
  psql -At "$url" -c "SELECT 'autovacuum workers running: ' || count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
  "$BIN/load-bench" overload --url http://127.0.0.1:8080 --phase "500x${FRESH_SECS:-60}" --database-url "$url"
  psql -At "$url" -c "SELECT relname || ': analysed ' || coalesce(last_autoanalyze::text, 'never') FROM pg_stat_user_tables WHERE relname IN ('user_watched', 'ratings')"
  stop "$SERVER_PID"
}

fresh() {
  prepare
  machine
  trap 'stop ${SERVER_PID:-}' EXIT
  [ -z "${REFERENCE_SERVER:-}" ] || fresh_one reference "$REFERENCE_SERVER"
  fresh_one ours "$BIN/lazyrec-server"
}

case "${1:-run}" in
  prepare) prepare ;;
  run) run ;;
  fresh) fresh ;;
  models) models ;;
  items) items ;;
  *) echo "usage: $0 prepare|run|fresh|models|items" >&2; exit 2 ;;
esac
