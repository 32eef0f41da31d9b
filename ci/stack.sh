# The local stack's processes, shared by ci/up.sh and ci/soak.sh (sourced after lib.sh):
#   main server    HTTP :8080  gRPC :50051   (its own copy of the qdrant-edge store)
#   nightly server HTTP :8081  gRPC :50052   (its own copy)
#   release slots  HTTP :8085/:8086 gRPC :50055/:50056 (ci/deploy.sh: nightlies and rollbacks)
#   release metrics :9187 (lazyrec-release exporter, when a release script or monitoring runs it)
#   monitoring (start_monitoring): Prometheus :9090, Alertmanager :9093, Postgres exporter :9189,
#   alert webhook receiver :9095 (appends to $RUN/alerts.jsonl); data under $LAZYREC_STATE_DIR
#   load balancer  HTTP :8082  gRPC :8083  admin :8084 (token in $RUN/admin-token)
#   console        HTTP :8088 (lazyrec-console, read-only; sign in with the admin token)
# shellcheck shell=bash
RUN="$LAZYREC_STATE_DIR/run"

# Whether a process runs (a zombie — exited, not yet reaped by its parent shell — does not).
alive() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

# Stops the named processes (default: all, the simulator first) gracefully, waiting up to 30 s
# each.
stop_stack() {
  [ $# -gt 0 ] || set -- simulator console exporter ingester loadbalancer nightly slot-8085 slot-8086 main kafka \
    prometheus alertmanager pg-exporter alert-webhook
  local stopped=0 name pid
  for name in "$@"; do
    if [ -f "$RUN/$name.pid" ] && alive "$(cat "$RUN/$name.pid")"; then
      kill -TERM "$(cat "$RUN/$name.pid")" 2>/dev/null || true
      stopped=1
    fi
  done
  for name in "$@"; do
    [ -f "$RUN/$name.pid" ] || continue
    pid="$(cat "$RUN/$name.pid")"
    for _ in $(seq 1 600); do alive "$pid" || break; sleep 0.05; done
    rm -f "$RUN/$name.pid"
  done
  [ "$stopped" = 1 ] && say "stopped: $*"
  return 0
}

# Fresh per-server copies of the store and an admin token.
prepare_stack() {
  mkdir -p "$RUN"
  for variant in main nightly; do
    rm -rf "$RUN/$variant-edge"
    cp -a "$LAZYREC_STATE_DIR/qdrant-edge" "$RUN/$variant-edge"
  done
  # Created private (umask 077: never readable by others, not even for a moment). The header
  # file lets curl send the token without putting it on a command line (`ps` shows those).
  ( umask 077
    [ -s "$RUN/admin-token" ] || python3 -c 'import secrets; print(secrets.token_hex(24))' > "$RUN/admin-token"
    printf 'authorization: Bearer %s\n' "$(cat "$RUN/admin-token")" > "$RUN/admin-header" )
}

start_server() { # variant http-port grpc-port
  LAZYREC_SERVER_STORE__EDGE_DIR="$RUN/$1-edge" \
    "$BIN/lazyrec-server" --variant "$1" --http-addr "127.0.0.1:$2" --grpc-addr "127.0.0.1:$3" \
    >>"$RUN/$1.log" 2>&1 &
  echo $! > "$RUN/$1.pid"
}

# Fresh store copies, both servers answering with MODEL (none: the configured default) and the
# load balancer; returns when all three answer.
start_model_stack() { # [model]
  prepare_stack
  (
    [ -z "${1:-}" ] || export LAZYREC_SERVER_MODEL__STRATEGY="$1"
    start_server main 8080 50051
    start_server nightly 8081 50052
  )
  start_lb
  wait_ready 8080 8081 8082
}

# The load balancer; `start_lb main-only`: no nightly (a release routes it) and the configured
# routing written as the fleet's new version (--reset-routing: what earlier runs' admin changes
# left in Postgres would win). Returns once the process has bound its ports (its ready file).
start_lb() {
  local nightly=(--nightly http://127.0.0.1:8081) reset=()
  if [ "${1:-}" = main-only ]; then
    nightly=()
    reset=(--reset-routing)
  fi
  local ready="$RUN/loadbalancer.ready.$$.$RANDOM"
  rm -f "$ready"
  LAZYREC_LB_ADMIN_TOKEN="$(cat "$RUN/admin-token")" \
    "$BIN/lazyrec-lb" --main http://127.0.0.1:8080 "${nightly[@]}" "${reset[@]}" \
    --http-addr 0.0.0.0:8082 --grpc-addr 127.0.0.1:8083 --admin-addr 127.0.0.1:8084 \
    --ready-file "$ready" >>"$RUN/loadbalancer.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    [ -s "$ready" ] && break
    alive "$pid" || { echo "error: the load balancer exited (see $RUN/loadbalancer.log)" >&2; return 1; }
    sleep 0.05
  done
  rm -f "$ready"
  echo "$pid" > "$RUN/loadbalancer.pid"
}

# A zero-downtime restart (or upgrade: $BIN's binary) of the load balancer: the new process binds
# the same ports (SO_REUSEPORT) and follows the fleet's routing in Postgres; once it serves, the
# old one stops gracefully (its listener closes, keep-alive clients are told to reconnect, its
# journal ships). Connections queued on the old listener move to the new one when
# net.ipv4.tcp_migrate_req = 1 (setup sets it).
replace_lb() {
  local old=""
  [ -f "$RUN/loadbalancer.pid" ] && old="$(cat "$RUN/loadbalancer.pid")"
  start_lb
  if [ -n "$old" ] && alive "$old"; then
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 1 600); do alive "$old" || break; sleep 0.05; done
  fi
}

# The ingester following the simulator's output (a file, or --kafka-topic …).
# The operators' console on :8088, read-only, behind the admin token.
start_console() {
  LAZYREC_CONSOLE_TOKEN_FILE="$RUN/admin-token" "$BIN/lazyrec-console" --listen 127.0.0.1:8088 \
    >>"$RUN/console.log" 2>&1 &
  echo $! > "$RUN/console.pid"
}

start_ingester() {
  "$BIN/lazyrec-db" ingest --follow --rating-scale 10 --batch-lines 5000 --no-progress "$@" >>"$RUN/ingester.log" 2>&1 &
  echo $! > "$RUN/ingester.pid"
}

start_simulator() { # rate output
  "$BIN/lazyrec-sim" run --futures "$LAZYREC_STATE_DIR/futures.tsv" --rate "$1" --duration 24h \
    --output "$2" --json "$RUN/simulation.json" --no-progress --metrics-listen 127.0.0.1:9191 \
    >"$RUN/simulation.txt" 2>>"$RUN/simulator.log" &
  echo $! > "$RUN/simulator.pid"
}

# A local Kafka-protocol broker (tansu, in memory) on :9092 with the topic TOPIC (default
# movielog1) of $KAFKA_PARTITIONS partitions (default 3; the ingester reads them all).
start_kafka() { # [topic]
  local tansu
  tansu="$(command -v tansu || echo "$HOME/.cargo/bin/tansu")"
  [ -x "$tansu" ] || { echo "error: tansu is not installed: run ci/install-kafka.sh" >&2; return 1; }
  "$tansu" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >>"$RUN/kafka.log" 2>&1 &
  echo $! > "$RUN/kafka.pid"
  for _ in $(seq 1 50); do
    "$tansu" topic create "${1:-movielog1}" --partitions "${KAFKA_PARTITIONS:-3}" --broker tcp://127.0.0.1:9092 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "error: the broker did not come up (see $RUN/kafka.log)" >&2
  return 1
}

# Prometheus (monitoring/prometheus.yml: rules in monitoring/alerts.yml), Alertmanager
# (monitoring/alertmanager.yml → the local webhook receiver), the Postgres exporter and, unless
# a release script already runs it, the release/online exporter. Stopped by stop_stack.
start_monitoring() {
  local config="$RUN/monitoring"
  mkdir -p "$config" "$LAZYREC_STATE_DIR/prometheus" "$LAZYREC_STATE_DIR/alertmanager"
  cp "$ROOT/monitoring/prometheus.yml" "$ROOT/monitoring/alerts.yml" "$ROOT/monitoring/alertmanager.yml" "$config/"
  python3 "$ROOT/ci/webhook-receiver.py" 9095 "$RUN/alerts.jsonl" >>"$RUN/alert-webhook.log" 2>&1 &
  echo $! > "$RUN/alert-webhook.pid"
  DATA_SOURCE_NAME="${DATABASE_URL}?sslmode=disable" prometheus-postgres-exporter \
    --web.listen-address=127.0.0.1:9189 >>"$RUN/pg-exporter.log" 2>&1 &
  echo $! > "$RUN/pg-exporter.pid"
  if ! { [ -f "$RUN/exporter.pid" ] && alive "$(cat "$RUN/exporter.pid")"; }; then
    "$BIN/lazyrec-release" exporter --listen 127.0.0.1:9187 >>"$RUN/exporter.log" 2>&1 &
    echo $! > "$RUN/exporter.pid"
  fi
  prometheus-alertmanager --config.file="$config/alertmanager.yml" \
    --storage.path="$LAZYREC_STATE_DIR/alertmanager" --web.listen-address=127.0.0.1:9093 \
    --cluster.listen-address= >>"$RUN/alertmanager.log" 2>&1 &
  echo $! > "$RUN/alertmanager.pid"
  prometheus --config.file="$config/prometheus.yml" --storage.tsdb.path="$LAZYREC_STATE_DIR/prometheus" \
    --web.listen-address=127.0.0.1:9090 --web.enable-lifecycle >>"$RUN/prometheus.log" 2>&1 &
  echo $! > "$RUN/prometheus.pid"
  wait_urls http://127.0.0.1:9090/-/ready http://127.0.0.1:9093/-/ready
}

# Waits until every given URL answers 200 (60 s).
wait_urls() {
  python3 - "$@" <<'PY'
import sys, time, urllib.request
urls = sys.argv[1:]
deadline = time.time() + 60
while True:
    try:
        if all(urllib.request.urlopen(u, timeout=2).status == 200 for u in urls):
            break
    except Exception:
        pass
    if time.time() > deadline:
        raise SystemExit(f"not ready within 60 s: {urls}")
    time.sleep(0.2)
PY
}

# Waits until every given local port answers /ready with 200 (60 s).
wait_ready() {
  local urls=() port
  for port in "$@"; do urls+=("http://127.0.0.1:$port/ready"); done
  wait_urls "${urls[@]}"
}

# The admin API, typed (lazyrec-lb admin): one field of the state, whether a URL is routed.
lb_state() { # [field]
  LAZYREC_LB_ADMIN_TOKEN_FILE="$RUN/admin-token" "$BIN/lazyrec-lb" admin state ${1:+--field "$1"}
}
lb_routes() { # url
  LAZYREC_LB_ADMIN_TOKEN_FILE="$RUN/admin-token" "$BIN/lazyrec-lb" admin routes "$1" 2>/dev/null
}

# The admin API (changes).
admin() { # method path [json]
  curl -sf -X "$1" -H @"$RUN/admin-header" -H 'content-type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:8084$2"
}
