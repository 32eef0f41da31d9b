#!/usr/bin/env bash
# The main job on embedded defaults: set up what is missing, build, start the private Postgres,
# load the default dataset (idempotent), make the catalog's vector collection live in qdrant-edge
# (built only when the catalog changed; only changed texts are embedded), compute behaviour vectors once, then run the whole local stack in the foreground:
#   main server    HTTP :8080  gRPC :50051   (its own copy of the qdrant-edge store)
#   nightly server HTTP :8081  gRPC :50052   (its own copy)
#   load balancer  HTTP :8082  gRPC :8083  admin :8084 (token in .state/run/admin-token)
#   console        HTTP :8088 (read-only; sign in with that token)
# Ctrl-C (or `ci/up.sh stop` from another shell) stops the servers gracefully; Postgres keeps
# running (stop it with `ci/up.sh stop --all`).
# `ci/up.sh --no-serve` prepares everything and exits.
# `ci/up.sh --standby` also runs a hot standby of Postgres (streaming, synchronous; see
# `lazyrec-db up --standby`): writers use the primary, the servers read from the standby, and
# `lazyrec-db promote` fails over (ci/soak.sh … pg-failover).
# `ci/up.sh --simulate RATE [--kafka]` runs the stack with the simulator attached: its own state
# directory (.state/simulate: the default dataset with each user's latest 20 % held out as the
# simulated users' future), `lazyrec-sim` sending RATE requests/s through :8082 and writing the
# course log to $RUN/simulated.log (or, with --kafka, to the topic movielog1 of a local tansu
# broker: ci/install-kafka.sh), and the ingester following it, so new watches reach the servers
# while it runs. Ctrl-C stops everything; the simulator's report is in $RUN/simulation.{txt,json}.
# `ci/up.sh --monitoring` (with or without --simulate) also starts Prometheus (:9090), Alertmanager
# (:9093) routing to a local webhook receiver ($RUN/alerts.jsonl), the Postgres exporter and the
# release/online exporter, configured from monitoring/; Grafana dashboards are in
# monitoring/dashboards.
SIMULATE=""
KAFKA=0
MONITORING=0
STANDBY=()
SERVE=1
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --no-serve) SERVE=0 ;;
    --kafka) KAFKA=1 ;;
    --monitoring) MONITORING=1 ;;
    --standby) STANDBY=(--standby) ;;
    --simulate)
      i=$((i + 1))
      SIMULATE="${args[$i]:-}"
      [[ "$SIMULATE" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "error: --simulate needs a rate in requests per second" >&2; exit 2; }
      ;;
    stop) ;;
    --all) ;;
    *) echo "error: unknown argument ${args[$i]} (see the top of ci/up.sh)" >&2; exit 2 ;;
  esac
done
if [ -n "$SIMULATE" ]; then
  # The simulation needs a database without the users' futures: a state directory of its own.
  here="$(cd "$(dirname "$0")/.." && pwd)"
  export LAZYREC_ASSETS_DIR="${LAZYREC_ASSETS_DIR:-${LAZYREC_STATE_DIR:-$here/.state}/assets}"
  export LAZYREC_STATE_DIR="${LAZYREC_SIM_STATE_DIR:-$here/.state/simulate}"
fi
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"

if [ "${1:-}" = stop ]; then
  stop_stack
  if [ "${2:-}" = --all ] && [ -x "$BIN/lazyrec-db" ]; then "$BIN/lazyrec-db" down; fi
  exit 0
fi

setup
say "building (release)"
# Every binary of the workspace (the evaluator and the bench tools too), resolved as the test
# suite resolves it: one set of compiled crates, no stale binary of a narrower build.
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml" --workspace --bins
say "starting the private Postgres cluster (state in $LAZYREC_STATE_DIR)"
eval "export $("$BIN/lazyrec-db" up "${STANDBY[@]}")"
if [ -n "$SIMULATE" ]; then
  say "loading the default dataset, each user's latest 20 % held out as their future (state in $LAZYREC_STATE_DIR)"
  "$BIN/lazyrec-db" load-default --hold-out 0.2 --futures "$LAZYREC_STATE_DIR/futures.tsv"
else
  say "loading the default dataset"
  "$BIN/lazyrec-db" load-default
fi
say "embedding the catalog (a new collection only when it changed; the first run embeds every movie)"
"$BIN/embedder" embed
# Behaviour vectors and item weights (items-v1, the default model, searches the item weights):
# computed once here; run `embedder behaviour` again after new interactions (the release
# pipeline will).
if ! "$BIN/embedder" status | grep '(live)' | grep -q '\.ease-'; then
  say "behaviour vectors and item weights from the interactions"
  "$BIN/embedder" behaviour --no-progress
fi
say "summary"
"$BIN/lazyrec-db" status
"$BIN/embedder" status
echo "DATABASE_URL=$DATABASE_URL"
[ "$SERVE" = 1 ] || exit 0

stop_stack
prepare_stack
trap 'stop_stack; exit 0' INT TERM
start_server main 8080 50051
start_server nightly 8081 50052
start_lb
start_console
wait_ready 8080 8081 8082 || { echo "the stack did not come up; logs in $RUN" >&2; tail -5 "$RUN"/*.log >&2; stop_stack; exit 1; }
say "the stack is up"
if [ -n "$SIMULATE" ]; then
  if [ "$KAFKA" = 1 ]; then
    start_kafka || { stop_stack; exit 1; }
    start_ingester --kafka-topic movielog1 --kafka-brokers 127.0.0.1:9092
    start_simulator "$SIMULATE" kafka:127.0.0.1:9092/movielog1
  else
    : >> "$RUN/simulated.log"
    start_ingester "$RUN/simulated.log"
    start_simulator "$SIMULATE" "file:$RUN/simulated.log"
  fi
  say "simulating $SIMULATE requests/s through :8082 (log: $RUN/simulator.log; ingester: $RUN/ingester.log)"
fi
if [ "$MONITORING" = 1 ]; then
  start_monitoring || { echo "monitoring did not come up; logs in $RUN" >&2; stop_stack; exit 1; }
  say "monitoring: Prometheus http://127.0.0.1:9090 (alerts: /alerts), Alertmanager http://127.0.0.1:9093, notifications in $RUN/alerts.jsonl"
fi
cat <<MSG
  curl localhost:8082/recommend/1                       # through the load balancer (sticky 80/20)
  curl -H 'accept: application/json' localhost:8082/recommend/1
  curl -H @$RUN/admin-header localhost:8084/admin/state   # the token from a file, not the command line
  console: http://127.0.0.1:8088/  (sign in with the token in $RUN/admin-token)
  logs: $RUN/{main,nightly,loadbalancer}.log
  stop: Ctrl-C here, or ci/up.sh stop (ci/up.sh stop --all also stops Postgres)
MSG
# Stay in the foreground until Ctrl-C or `ci/up.sh stop`. A process that exits is reported, not
# avenged: the load balancer fails over around it, and it can be restarted on its own.
declare -A reported=()
while :; do
  running=0
  for name in main nightly loadbalancer console ingester simulator prometheus alertmanager; do
    [ -f "$RUN/$name.pid" ] || continue
    running=1
    if ! alive "$(cat "$RUN/$name.pid")" && [ -z "${reported[$name]:-}" ]; then
      say "$name exited (see $RUN/$name.log); the rest keeps serving"
      reported[$name]=1
    elif alive "$(cat "$RUN/$name.pid")"; then
      unset "reported[$name]"
    fi
  done
  [ "$running" = 1 ] || break
  sleep 1
done
