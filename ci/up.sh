#!/usr/bin/env bash
# The main job on embedded defaults: set up what is missing, build, start the private Postgres,
# load the default dataset (idempotent), embed new or changed movies into qdrant-edge
# (incremental), compute behaviour vectors once, then run the whole local stack in the foreground:
#   main server    HTTP :8080  gRPC :50051   (its own copy of the qdrant-edge store)
#   nightly server HTTP :8081  gRPC :50052   (its own copy)
#   load balancer  HTTP :8082  gRPC :8083  admin :8084 (token in .state/run/admin-token)
# Ctrl-C (or `ci/up.sh stop` from another shell) stops the servers gracefully; Postgres keeps
# running (stop it with `ci/up.sh stop --all`).
# `ci/up.sh --no-serve` prepares everything and exits.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"

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
# Behaviour vectors (neighbours-v2, the default model, searches them): computed once here; run
# `embedder behaviour` again after new interactions (the release pipeline will).
if ! "$BIN/embedder" status | grep '(live)' | grep -q '_bsvd-'; then
  say "behaviour vectors from the interactions"
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
wait_ready 8080 8081 8082 || { echo "the stack did not come up; logs in $RUN" >&2; tail -5 "$RUN"/*.log >&2; stop_stack; exit 1; }
say "the stack is up"
cat <<MSG
  curl localhost:8082/recommend/1                       # through the load balancer (sticky 80/20)
  curl -H 'accept: application/json' localhost:8082/recommend/1
  curl -H "authorization: Bearer \$(cat $RUN/admin-token)" localhost:8084/admin/state
  logs: $RUN/{main,nightly,loadbalancer}.log
  stop: Ctrl-C here, or ci/up.sh stop (ci/up.sh stop --all also stops Postgres)
MSG
# Stay in the foreground until Ctrl-C or `ci/up.sh stop`. A process that exits is reported, not
# avenged: the load balancer fails over around it, and it can be restarted on its own.
declare -A reported=()
while :; do
  running=0
  for name in main nightly loadbalancer; do
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
