#!/usr/bin/env bash
# The main job on embedded defaults: set up what is missing, build, start the private Postgres,
# load the default dataset (idempotent), embed new or changed movies into qdrant-edge
# (incremental), then run the whole local stack in the foreground:
#   main server    HTTP :8080  gRPC :50051   (its own copy of the qdrant-edge store)
#   nightly server HTTP :8081  gRPC :50052   (its own copy)
#   load balancer  HTTP :8082  gRPC :8083  admin :8084 (token in .state/run/admin-token)
# Ctrl-C (or `ci/up.sh stop` from another shell) stops the servers gracefully; Postgres keeps
# running (stop it with `ci/up.sh stop --all`).
# `ci/up.sh --no-serve` prepares everything and exits.
source "$(dirname "$0")/lib.sh"
RUN="$LAZYREC_STATE_DIR/run"

stop_stack() {
  local stopped=0
  for name in loadbalancer nightly main; do
    local pidfile="$RUN/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
      stopped=1
    fi
  done
  for name in loadbalancer nightly main; do
    local pidfile="$RUN/$name.pid"
    if [ -f "$pidfile" ]; then
      local pid; pid="$(cat "$pidfile")"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$pidfile"
    fi
  done
  [ "$stopped" = 1 ] && say "stack stopped"
  return 0
}

if [ "${1:-}" = stop ]; then
  stop_stack
  if [ "${2:-}" = --all ] && [ -x "$BIN/lazyrec-db" ]; then "$BIN/lazyrec-db" down; fi
  exit 0
fi
SERVE=1
[ "${1:-}" = --no-serve ] && SERVE=0

setup
say "building (release)"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p db -p embedder -p server -p loadbalancer \
  --bin lazyrec-db --bin embedder --bin lazyrec-server --bin lazyrec-lb
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
[ "$SERVE" = 1 ] || exit 0

stop_stack
mkdir -p "$RUN"
# One qdrant-edge directory per process: each server gets its own copy of the store.
for variant in main nightly; do
  rm -rf "$RUN/$variant-edge"
  cp -a "$LAZYREC_STATE_DIR/qdrant-edge" "$RUN/$variant-edge"
done
[ -s "$RUN/admin-token" ] || python3 -c 'import secrets; print(secrets.token_hex(24))' > "$RUN/admin-token"
chmod 600 "$RUN/admin-token"

trap 'stop_stack; exit 0' INT TERM
LAZYREC_SERVER_STORE__EDGE_DIR="$RUN/main-edge" \
  "$BIN/lazyrec-server" --variant main --http-addr 127.0.0.1:8080 --grpc-addr 127.0.0.1:50051 \
  >"$RUN/main.log" 2>&1 &
echo $! > "$RUN/main.pid"
LAZYREC_SERVER_STORE__EDGE_DIR="$RUN/nightly-edge" \
  "$BIN/lazyrec-server" --variant nightly --http-addr 127.0.0.1:8081 --grpc-addr 127.0.0.1:50052 \
  >"$RUN/nightly.log" 2>&1 &
echo $! > "$RUN/nightly.pid"
LAZYREC_LB_ADMIN_TOKEN="$(cat "$RUN/admin-token")" \
  "$BIN/lazyrec-lb" --main http://127.0.0.1:8080 --nightly http://127.0.0.1:8081 \
  --http-addr 0.0.0.0:8082 --grpc-addr 127.0.0.1:8083 --admin-addr 127.0.0.1:8084 \
  >"$RUN/loadbalancer.log" 2>&1 &
echo $! > "$RUN/loadbalancer.pid"

# Wait until the load balancer answers through a ready server.
python3 - <<'PY' || { echo "the stack did not come up; logs in $RUN" >&2; tail -5 "$RUN"/*.log >&2; stop_stack; exit 1; }
import time, urllib.request
deadline = time.time() + 60
while True:
    try:
        ok = all(urllib.request.urlopen(f"http://127.0.0.1:{p}/ready", timeout=2).status == 200 for p in (8080, 8081, 8082))
        if ok:
            break
    except Exception:
        pass
    if time.time() > deadline:
        raise SystemExit(1)
    time.sleep(0.3)
PY
say "the stack is up"
cat <<MSG
  curl localhost:8082/recommend/1                       # through the load balancer (sticky 80/20)
  curl -H 'accept: application/json' localhost:8082/recommend/1
  curl -H "authorization: Bearer \$(cat $RUN/admin-token)" localhost:8084/admin/state
  logs: $RUN/{main,nightly,loadbalancer}.log
  stop: Ctrl-C here, or ci/up.sh stop (ci/up.sh stop --all also stops Postgres)
MSG
# Stay in the foreground until a process exits or Ctrl-C.
wait -n || true
say "a process of the stack exited; stopping the rest (logs in $RUN)"
stop_stack
